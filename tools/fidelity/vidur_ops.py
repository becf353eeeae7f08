"""The cost model's per-layer operator times against Vidur's public DGX-H100 operator profiles.

Vidur (Agrawal et al., MLSys 2024) publishes per-operator CUDA timings of vLLM-style kernels on
H100 SXM for Llama-2-7B and Llama-2-70B at tensor parallelism 1, 2, 4 and 8 (its
``data/profiling/compute/h100/<model>/mlp.csv``) and NCCL all-reduces on a DGX-H100
(``data/profiling/network/h100_dgx/all_reduce.csv``). Those are measurements of real kernels at
every tensor-parallel degree, which this project's own GPU runs (one H200, two at most) cannot
make. This tool groups them the way the cost model charges an iteration, per transformer layer:

* ``gemm``: ``attn_pre_proj`` (QKV) + ``attn_post_proj`` (O) + ``mlp_up_proj`` + ``mlp_down_proj``;
* ``elementwise``: two RMSNorms, RoPE, SiLU-and-multiply and two residual adds (Vidur times one);
* ``all_reduce``: two all-reduces of the layer's hidden states (``tokens x hidden x 2`` bytes) over
  the tensor-parallel group, NVSwitch within one DGX (none at TP1);

and sets them beside the cost model's ``qkv_proj + o_proj + mlp_gate_up + mlp_down``,
``elementwise`` and ``all_reduce`` operators divided by the model's layer count, for any engine
profile. Attention, embedding, LM head and fixed per-layer costs are not in Vidur's MLP file and are
left out on both sides.

    python -m tools.fidelity.vidur_ops --profiles ../shared/reference/profiling \\
        --out calibration/h100-vidur/ops.csv          # writes the measured and predicted columns
    python -m tools.fidelity.vidur_ops --measured calibration/h100-vidur/ops.csv   # re-predict only

``--measured`` re-reads the measured columns from a CSV this tool wrote (the raw profiles are not
in the repository), so the comparison reruns from a fresh clone.

    python -m tools.fidelity.vidur_ops --measured calibration/h100-vidur/ops.csv \
        --fit-profile calibration/h100-vidur/vllm_dgx_h100.yaml

fits an engine profile (``based_on: vllm``) whose H100 projections, elementwise kernels and
8-GPU all-reduces take what Vidur measured for prompts (>= 1024 tokens): the three absolute factors
``gemm_compute``, ``elementwise_memory`` (both over every model and TP) and ``collective`` (TP8).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

MODELS = {"llama-2-7b": "vidur_h100_Llama-2-7b-hf_mlp.csv", "llama-2-70b": "vidur_h100_Llama-2-70b-hf_mlp.csv"}
"""fleetwise catalogue name -> Vidur's H100 MLP profile file (as copied to shared/reference/profiling)."""
ALL_REDUCE = "vidur_h100_dgx_all_reduce.csv"
"""Vidur's NCCL all-reduce timings on a DGX-H100 (2, 4 and 8 GPUs of one node)."""
TREE_MODELS = {"llama-2-7b": "Llama-2-7b-hf", "llama-2-70b": "Llama-2-70b-hf", "llama-3-8b": "Meta-Llama-3-8B"}
"""fleetwise catalogue name -> Vidur's model directory (``compute/<gpu>/meta-llama/<dir>/mlp.csv``)."""
TREE_GPUS = {"a100": "a100-80gb-sxm", "h100": "h100-sxm"}
"""Vidur's GPU directory -> fleetwise catalogue GPU (``network/<gpu>_dgx/all_reduce.csv`` for its DGX)."""
TOKENS = (16, 64, 256, 512, 1024, 1504, 2048, 4096)
"""Tokens per iteration compared: decode-sized batches to long prompts."""
TPS = (1, 2, 4, 8)
"""Tensor-parallel degrees Vidur profiled."""
CLASSES = ("gemm", "elementwise", "all_reduce")
"""The operator classes compared, per layer."""
GEMM_OPS = ("qkv_proj", "o_proj", "mlp_gate_up", "mlp_down")
"""The cost model's operators that make up a dense layer's projections."""
HIDDEN = {"llama-2-7b": 4096, "llama-2-70b": 8192, "llama-3-8b": 4096}
"""Hidden sizes: an all-reduce moves tokens x hidden x 2 bytes."""


def measured(profiles: Path, tree_gpu: str | None = None) -> pl.DataFrame:
    """Vidur's medians grouped per layer: one row per (gpu, model, tp, tokens), milliseconds. From
    ``shared/reference/profiling`` (H100 files), or with ``tree_gpu`` (``a100``, ``h100``) from a
    copy of Vidur's own ``data/profiling`` tree."""
    if tree_gpu is None:
        gpu, files, ar_path = "h100-sxm", {m: profiles / f for m, f in MODELS.items()}, profiles / ALL_REDUCE
    else:
        gpu, ar_path = TREE_GPUS[tree_gpu], profiles / "network" / f"{tree_gpu}_dgx" / "all_reduce.csv"
        files = {m: profiles / "compute" / tree_gpu / "meta-llama" / d / "mlp.csv" for m, d in TREE_MODELS.items()}
        files = {m: f for m, f in files.items() if f.exists()}
    ar = pl.read_csv(ar_path).filter(pl.col("devices_per_node") == pl.col("num_workers"))
    rows = []
    for model, path in files.items():
        mlp = pl.read_csv(path)
        for tp in TPS:
            for tokens in TOKENS:
                hit = mlp.filter((pl.col("num_tensor_parallel_workers") == tp) & (pl.col("num_tokens") == tokens))
                if hit.height == 0:
                    continue
                r = hit.row(0, named=True)
                med = lambda op: r[f"time_stats.{op}.median"]  # noqa: E731
                gemm = med("attn_pre_proj") + med("attn_post_proj") + med("mlp_up_proj") + med("mlp_down_proj")
                elem = med("input_layernorm") + med("post_attention_layernorm") + med("attn_rope") + med("mlp_act") + 2 * med("add")
                reduce = 0.0
                if tp > 1:
                    size = tokens * HIDDEN[model] * 2
                    group = ar.filter(pl.col("num_workers") == tp).group_by("size").agg(pl.col("time_stats.all_reduce.median").median()).sort("size")
                    # Vidur times sizes on a grid (2 KiB + k x 8 KiB, then coarser): interpolate between neighbours.
                    reduce = 2 * float(np.interp(size, group["size"].to_numpy(), group["time_stats.all_reduce.median"].to_numpy()))
                rows.append({"gpu": gpu, "model": model, "tp": tp, "tokens": tokens, "gemm_ms": gemm, "elementwise_ms": elem, "all_reduce_ms": reduce})
    return pl.DataFrame(rows)


KERNEL_GROUPS = {"gemm": ("qkv_proj", "o_proj", "mlp_gate_up", "mlp_down"), "elementwise": ("add_rms", "add_rms", "rope", "silu_mul", "kv_write")}
"""How ``layer_kernels.py``'s kernels make up a layer: two fused add+RMSNorms, and the KV-cache write
(which the cost model's elementwise operator charges too; Vidur times it with attention)."""


def measured_kernels(path: Path) -> pl.DataFrame:
    """This project's own kernel timings (``tools/fidelity/layer_kernels.py``, one GPU: no
    all-reduce) grouped per layer like :func:`measured`, for the dense models the cost model knows."""
    k = pl.read_csv(path).filter(pl.col("model").is_in(list(HIDDEN)) & pl.col("tokens").is_in(TOKENS))
    gpu = "h100-sxm" if "H100" in k["gpu"][0] else "h200" if "H200" in k["gpu"][0] else k["gpu"][0]
    rows = []
    for (model, tp, tokens), g in k.group_by(["model", "tp", "tokens"], maintain_order=True):
        t = dict(zip(g["op"], g["seconds"]))
        ms = {c: 1e3 * sum(t[o] for o in ops) for c, ops in KERNEL_GROUPS.items()}
        rows.append({"gpu": gpu, "model": model, "tp": tp, "tokens": tokens, "gemm_ms": ms["gemm"], "elementwise_ms": ms["elementwise"], "all_reduce_ms": 0.0})
    return pl.DataFrame(rows)


def predicted(model: str, tp: int, tokens: int, engine: str, gpu: str = "h100-sxm") -> dict[str, float]:
    """The cost model's per-layer milliseconds of each class for a ``tokens``-token prefill on ``gpu``."""
    from fleetwise.catalog import lookup
    from fleetwise.estimate import estimate_iteration

    layers = lookup("model", model, {}, "model").num_layers
    ops = {o["op"]: o["seconds"] for o in estimate_iteration(model, gpu, tp=tp, prefill=tokens, engine=engine)["ops"]}
    per = lambda s: 1e3 * s / layers  # noqa: E731
    return {"gemm": per(sum(ops[o] for o in GEMM_OPS)), "elementwise": per(ops["elementwise"]), "all_reduce": per(ops.get("all_reduce", 0.0))}


def compare(meas: pl.DataFrame, engines: tuple[str, ...] = ("vllm",)) -> pl.DataFrame:
    """``meas`` with each engine's predicted per-layer milliseconds (``<class>_ms_<engine>``) beside it."""
    out = meas
    for engine in engines:
        preds = [predicted(r["model"], r["tp"], r["tokens"], engine, r.get("gpu", "h100-sxm")) for r in meas.iter_rows(named=True)]
        out = out.with_columns([pl.Series(f"{c}_ms_{engine}", [p[c] for p in preds]) for c in CLASSES])
        # One GPU's kernel timings (``--kernels``) have no all-reduce to set beside the prediction.
        single = (pl.col("tp") > 1) & (pl.col("all_reduce_ms") == 0)
        out = out.with_columns(pl.when(single).then(0.0).otherwise(pl.col(f"all_reduce_ms_{engine}")).alias(f"all_reduce_ms_{engine}"))
    return out


def summary(table: pl.DataFrame, engine: str = "vllm") -> pl.DataFrame:
    """Per (model, tp): the predicted / measured ratio of each class and of their sum, over prompts of
    at least 1024 tokens (compute-bound projections) and over batches of at most 64 tokens."""
    t = table.with_columns(
        (pl.col("gemm_ms") + pl.col("elementwise_ms") + pl.col("all_reduce_ms")).alias("sum_ms"),
        (pl.col(f"gemm_ms_{engine}") + pl.col(f"elementwise_ms_{engine}") + pl.col(f"all_reduce_ms_{engine}")).alias(f"sum_ms_{engine}"),
        pl.when(pl.col("tokens") >= 1024).then(pl.lit("prompt")).when(pl.col("tokens") <= 64).then(pl.lit("decode")).otherwise(None).alias("regime"),
    ).filter(pl.col("regime").is_not_null())
    aggs = []
    for c in (*CLASSES, "sum"):
        ratio = pl.col(f"{c}_ms_{engine}").sum() / pl.col(f"{c}_ms").sum()
        aggs.append(pl.when(pl.col(f"{c}_ms").sum() > 0).then(ratio).otherwise(None).round(2).alias(c))
    aggs.append((pl.col("gemm_ms").sum() / pl.col("sum_ms").sum()).round(2).alias("measured_gemm_share"))
    aggs.append((pl.col(f"gemm_ms_{engine}").sum() / pl.col(f"sum_ms_{engine}").sum()).round(2).alias("predicted_gemm_share"))
    keys = [k for k in ("gpu", "model", "regime", "tp") if k in t.columns]
    return t.group_by(keys, maintain_order=True).agg(aggs).sort(keys)


FIT_CLASSES = {"gemm": "gemm_compute", "elementwise": "elementwise_memory", "all_reduce": "collective"}
"""Each operator group and the absolute factor (``per_gpu``) its time scales inversely with."""


def _profile_text(values: dict[str, float], residual: dict[str, float] | None = None) -> str:
    import yaml

    body = {
        "description": "vllm on a DGX-H100 as Vidur measured its kernels: the vllm profile with the H100's projections, "
                       "elementwise kernels and 8-GPU all-reduces fitted to Vidur's public operator profiles",
        "measured_on": "H100 SXM, DGX-H100 (Vidur's public profiles, microsoft/vidur data/profiling; calibration/h100-vidur/ops.csv)",
        "based_on": "vllm",
        "per_gpu": {"h100-sxm": {k: float(f"{v:.4g}") for k, v in values.items()}},
    }
    if residual:
        body["residuals"] = {"per_layer_prompt_ratio": residual}
    body["fitted_from"] = {"command": "python -m tools.fidelity.vidur_ops --measured calibration/h100-vidur/ops.csv --fit-profile <file>",
                           "data": "calibration/h100-vidur/ops.csv", "regime": "prefills of 1024-4096 tokens; collective on TP8"}
    return "# Written by `python -m tools.fidelity.vidur_ops --fit-profile` (do not edit by hand).\n" + yaml.safe_dump(body, sort_keys=False, width=120)


def fit_profile(meas: pl.DataFrame, rounds: int = 6) -> tuple[str, dict[str, float]]:
    """An engine profile (YAML text) fitted to ``meas``'s prompts, and the predicted / measured
    ratio of each group it leaves. Each round scales a factor by its group's summed predicted /
    measured time (the time of a compute- or memory-bound kernel is inverse in its factor; the
    rounds absorb the roofline blend)."""
    from fleetwise.catalog import builtin_gpus
    from fleetwise.catalog.engine import resolve_calibration

    base = resolve_calibration("h100-sxm", builtin_gpus()["h100-sxm"], "vllm")
    values = {f: float(getattr(base, f)) for f in FIT_CLASSES.values()}
    prompts = meas.filter(pl.col("tokens") >= 1024)
    ratio: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds + 1):
            path = Path(tmp) / f"round{i}.yaml"
            path.write_text(_profile_text(values))
            t = compare(prompts, (str(path),))
            for cls, factor in FIT_CLASSES.items():
                rows = t.filter(pl.col("tp") == 8) if cls == "all_reduce" else t
                ratio[cls] = float(rows[f"{cls}_ms_{path}"].sum() / rows[f"{cls}_ms"].sum())
            if i < rounds:
                values = {f: min(1.0, values[f] * ratio[c]) for c, f in FIT_CLASSES.items()}
    return _profile_text(values, {c: round(r, 3) for c, r in ratio.items()}), ratio


def main(argv: list[str] | None = None) -> int:
    """Writes or re-predicts the comparison and prints the per-(model, TP) summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--profiles", type=Path, help="directory with Vidur's H100 CSVs (shared/reference/profiling)")
    src.add_argument("--measured", type=Path, help="a CSV this tool wrote: reuse its measured columns")
    src.add_argument("--vidur-tree", type=Path, help="a copy of Vidur's data/profiling tree (with --gpu)")
    src.add_argument("--kernels", type=Path, help="kernels.csv of tools/fidelity/layer_kernels.py (this project's own timings)")
    ap.add_argument("--gpu", choices=sorted(TREE_GPUS), default="a100", help="which GPU of --vidur-tree")
    ap.add_argument("--engines", nargs="+", default=["vllm", "fleetwise-torch"])
    ap.add_argument("--out", type=Path, help="write the table here (CSV)")
    ap.add_argument("--fit-profile", type=Path, help="fit an engine profile to the measured prompts and write it here")
    args = ap.parse_args(argv)
    if args.measured:
        meas = pl.read_csv(args.measured)
        meas = meas.select([c for c in ("gpu", "model", "tp", "tokens", "gemm_ms", "elementwise_ms", "all_reduce_ms") if c in meas.columns])
    elif args.kernels:
        meas = measured_kernels(args.kernels)
    else:
        meas = measured(args.profiles, None) if args.profiles else measured(args.vidur_tree, args.gpu)
    if args.fit_profile:
        text, ratio = fit_profile(meas)
        args.fit_profile.write_text(text)
        print(f"wrote {args.fit_profile}; predicted / measured per group after the fit: {ratio}")
        return 0
    table = compare(meas, tuple(args.engines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.with_columns(pl.selectors.float().round(5)).write_csv(args.out)
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_hide_dataframe_shape=True):
        for engine in args.engines:
            source = f"layer_kernels.py on {args.kernels}" if args.kernels else "Vidur's profiles"
            print(f"predicted / measured per layer, engine {engine} (measured: {source})")
            print(summary(table, engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
