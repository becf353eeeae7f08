"""Fits the ``vllm`` engine profile to the efficient engine's iterations measured on a GPU.

Reads ``calibration/<dir>/iterations.csv`` (written by ``fused_grid.py`` on the lent GPU: whole
iterations of dense, 70B-shaped and MoE models, prefill, decode and mixed batches, CUDA-graph
replays), keeps the GPU's hardware fractions fixed (its ``hardware:`` block in the catalogue) and
fits the profile's relative factors by a deterministic coordinate search on the mean squared log
error. The CPU step comes from ``calibration/vllm-cpu/cpu_step.yaml`` (vLLM's own scheduler step,
measured by ``measure_vllm_step.py``). Writes the profile that the catalogue reads
(``python/fleetwise/catalog/engines/vllm.yaml``) and the per-point errors
(``calibration/<dir>/fit.csv``)::

    python -m tools.fidelity.engine_fit [--data calibration/h200-vllm-like] [--gpu h200]
    python -m tools.fidelity.engine_fit --hold-out    # leave one model out: fit on the others, predict it
    python -m tools.fidelity.engine_fit --check calibration/h100-vllm-like --gpu h100-sxm   # another GPU's iterations

The routed experts' grouped GEMMs are fitted first, on their own: ``calibration/<dir>/grouped_gemm.csv``
(``grouped_gemm.py`` on the same GPU: both projections of Mixtral-8x7B's and Qwen3-30B-A3B's experts
over 1-4096 tokens per expert, random top-k routing) sets ``expert_compute``, ``expert_memory`` and
``expert_ridge_exponent`` (the cost model's shape-dependent expert curve; ``expert_pad_rows``, the
core's tile-padding term, stays unset: fitted with the blend it goes to its floor on this sweep, and
the two trade against each other when one expert shape pins them;
per-point errors in ``grouped_gemm_fit.csv``); the iteration fit then holds them and fits the rest.

The elementwise kernels' rate is not fitted on whole iterations either, where it trades against the
projections and the test engine's own unfused copies: ``elementwise_memory`` is set so that the cost
model's elementwise operator takes what the fused kernels took alone (``--kernels``:
``layer_kernels.py``'s ``kernels.csv``, prompts of 2048 tokens and more, beyond the L2 cache), and a MoE
layer's dispatch and combine get a factor of their own (``moe_dispatch_memory``, fitted). Weight
streaming (``memory``) is held at the largest device-to-device copy rate the same run measured
(``hardware.csv``): with it free, a fit without the 70B model trades it against ``layer_overhead``.

``--check DIR`` predicts another measurement set (``DIR/iterations.csv``, e.g. a GPU the profile was
not fitted on) with the profile as shipped (or ``--profile FILE``), writes ``DIR/check.csv`` and prints
the errors per model; it fits nothing.

``--hold-out`` writes ``calibration/<dir>/holdout.csv`` (every point, predicted by the fit that
never saw its model: its iterations and its experts' kernel sweep) and leaves the profile alone: how
the profile transfers to a model it was not fitted on.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from fleetwise.catalog import lookup
from fleetwise.catalog.engine import ENGINES_DIR, EngineFactors, EngineProfile, profile_calibration
from fleetwise.cost import cost_model

ROOT = Path(__file__).resolve().parents[2]
START = {"gemm_compute": 1.0, "memory": 1.3, "attention_compute": 0.6, "attention_memory": 1.2, "elementwise_memory": 1.0, "moe_dispatch_memory": 0.5,
         "layer_overhead": 20e-6, "moe_layer_overhead": 50e-6,
         "mixed_query_tile": 64, "decode_query_rows": 8, "gemm_ridge_exponent": 4.0, "attention_cta": 0.4,
         "attention_memory_split": 1.4}
"""The fitted relative factors and where the search starts."""
EXPERT_START = {"expert_compute": 1.0, "expert_memory": 0.9, "expert_ridge_exponent": 4.0}
"""The expert-GEMM factors the kernel sweep fits (and where its search starts); held in the iteration fit."""
EXPERT_STARTS = ({}, {"expert_ridge_exponent": 2.0}, {"expert_ridge_exponent": 16.0})
"""Changes to ``EXPERT_START`` the kernel search also starts from."""
FLOORS = {"gemm_ridge_exponent": 1.0, "expert_ridge_exponent": 1.0}
"""Lower bounds (a ridge blend's exponent is at least 1)."""
INTEGER = ("mixed_query_tile", "decode_query_rows")
"""Factors the core takes as whole numbers (query rows); searched as reals, rounded when used."""
LIMITS = {"expert_ridge_exponent": 64.0, "layer_overhead": 100e-6, "moe_layer_overhead": 500e-6, "memory": 1.64, "gemm_compute": 1.11, "mixed_query_tile": 256, "decode_query_rows": 128, "gemm_ridge_exponent": 64.0,
          "attention_memory_split": 1.46}
"""Upper bounds that keep the fit physical: weight streaming stays near a plain copy's 0.89 of
peak (1.64 x the H200's 0.61), decode attention while keys are split stays below
the same copy rate (1.46 x 0.61), and a layer's fixed cost (the ramp and tail of its ~9 kernels, which
CUDA graphs do not remove) stays under 100 us."""
"""Candidate query tiles of decodes beside a prefill."""


def layer_cost_model(name: str, layers: int, gpu_name: str, factors: dict):
    """The cost model of ``layers`` of catalogue model ``name`` on ``gpu_name`` under the engine
    ``factors`` (no CPU step: GPU time), as the measured subsets of layers ran."""
    gpu = lookup("gpu", gpu_name, {}, "gpu")
    prof = EngineProfile(factors=EngineFactors(**{k: max(1, round(v)) if k in INTEGER else v for k, v in factors.items()}))
    cal = profile_calibration(gpu_name, gpu, prof, label="fit")
    m = lookup("model", name, {}, "model").model_copy(update={"num_layers": layers})
    return cost_model(m, gpu, calibration=cal, model_name=name)


def predict(data: pl.DataFrame, gpu_name: str, factors: dict) -> np.ndarray:
    """Predicted seconds of every measured iteration under ``factors`` (no CPU step: GPU time)."""
    out = []
    for (name, layers), g in data.group_by(["model", "layers_run"], maintain_order=True):
        cm = layer_cost_model(name, layers, gpu_name, factors)
        for r in g.iter_rows(named=True):
            out.append(cm.iteration_seconds([(q, c, True) for q, c in json.loads(r["prefills"])], json.loads(r["decode_kv"])))
    return np.array(out)


def kernel_points(kernels: pl.DataFrame) -> pl.DataFrame:
    """The sweep's random-routing points, both projections of a point summed (one expert pass)."""
    return (kernels.filter(pl.col("routing") == "random")
            .group_by(["model", "tokens_per_expert"], maintain_order=True)
            .agg(pl.col("experts").first(), pl.col("pairs").first(), pl.col("touched").first(), pl.col("seconds").sum()))


def predict_kernels(points: pl.DataFrame, gpu_name: str, factors: dict) -> np.ndarray:
    """Predicted seconds of one MoE layer's routed experts at each kernel point: the cost model's
    ``moe_experts`` operator for a one-layer model prefilling as many tokens as the sweep routed."""
    gpu = lookup("gpu", gpu_name, {}, "gpu")
    prof = EngineProfile(factors=EngineFactors(**{**START, **factors}))
    cal = profile_calibration(gpu_name, gpu, prof, label="fit")
    out = []
    for (name,), g in points.group_by(["model"], maintain_order=True):
        m = lookup("model", name, {}, "model").model_copy(update={"num_layers": 1, "first_dense_layers": 0, "moe_layer_interval": 1})
        cm = cost_model(m, gpu, calibration=cal, model_name=name)
        for r in g.iter_rows(named=True):
            tokens = max(1, round(r["pairs"] / m.experts_per_token))
            out.append(next(c["seconds"] for c in cm.breakdown([(tokens, 0, True)], []) if c["op"] == "moe_experts"))
    return np.array(out)


def fit_kernels(points: pl.DataFrame, gpu_name: str) -> tuple[dict, np.ndarray]:
    """The expert-GEMM factors that best predict the kernel sweep (best of the searches from each start)."""
    meas = points["seconds"].to_numpy()
    pred = lambda x: predict_kernels(points, gpu_name, x)  # noqa: E731
    _, x = min((_search(pred, {**EXPERT_START, **s}, meas, kernel_loss) for s in EXPERT_STARTS), key=lambda r: r[0])
    return x, pred(x)


def ordered(data: pl.DataFrame) -> pl.DataFrame:
    """The rows in the order ``predict`` returns them (grouped by model, first appearance)."""
    return pl.concat([g for _, g in data.group_by(["model", "layers_run"], maintain_order=True)])


def kernel_loss(pred: np.ndarray, meas: np.ndarray) -> float:
    """Mean absolute log error: the kernel library switches tile configurations at a few sizes
    (Mixtral's and Qwen3's experts at 96 and 192 rows run 20-30% faster than their neighbours), and
    the smooth curve should follow the bulk of the sweep, not those points."""
    return float(np.mean(np.abs(np.log(pred / meas))))


def loss(pred: np.ndarray, meas: np.ndarray) -> float:
    """Mean squared log error plus a small weight on the worst point."""
    e = np.log(pred / meas)
    return float(np.mean(e**2) + 0.05 * np.max(np.abs(e)) ** 2)


STARTS = ({}, {"attention_memory": 1.4, "attention_cta": 0.25}, {"attention_memory": 1.4, "elementwise_memory": 1.0, "attention_cta": 0.6})
"""Changes to ``START`` the search also starts from (it keeps the best end): the decode-attention
factors trade against each other, and one start can stop in a worse corner."""


def _search(pred, x: dict, meas: np.ndarray, loss=loss) -> tuple[float, dict]:
    """Coordinate search of ``pred``'s factors from ``x`` minimising ``loss`` (multiplicative
    steps, halved when no factor improves)."""
    cur = loss(pred(x), meas)
    step = 0.5
    while step > 0.004:
        improved = False
        for k in list(x):
            for f in (1 + step, 1 / (1 + step)):
                y = dict(x)
                y[k] = max(min(x[k] * f, LIMITS.get(k, 4.0)), FLOORS.get(k, 0.0))
                try:
                    v = loss(pred(y), meas)
                except Exception:  # noqa: BLE001 - a factor out of its range: not a candidate
                    continue
                if v < cur - 1e-12:
                    x, cur, improved = y, v, True
        if not improved:
            step /= 2
    return cur, x


def elementwise_from_kernels(path: Path) -> float:
    """The relative ``elementwise_memory`` at which the cost model's elementwise operator takes, summed
    over ``path``'s dense prompts of 2048+ tokens at every TP, what the fused kernels took alone there."""
    from tools.fidelity.vidur_ops import measured_kernels

    meas = measured_kernels(path).filter(pl.col("tokens") >= 2048)
    gpu_name = meas["gpu"][0]
    gpu = lookup("gpu", gpu_name, {}, "gpu")
    cal = profile_calibration(gpu_name, gpu, EngineProfile(factors=EngineFactors(**{**START, "elementwise_memory": 1.0})), label="kernels")
    pred = 0.0
    for r in meas.iter_rows(named=True):
        m = lookup("model", r["model"], {}, "model").model_copy(update={"num_layers": 1})
        cm = cost_model(m, gpu, tp=r["tp"], calibration=cal, model_name=r["model"])
        pred += next(c["seconds"] for c in cm.breakdown([(r["tokens"], 0, True)], []) if c["op"] == "elementwise")
    return float(f"{pred / (meas['elementwise_ms'].sum() / 1e3):.4g}")


def memory_from_copy(hardware_csv: Path, gpu_name: str) -> float:
    """The relative ``memory`` factor at which weights stream at the fastest copy rate in ``hardware_csv``."""
    from fleetwise.catalog.hardware import hardware_fractions

    gpu = lookup("gpu", gpu_name, {}, "gpu")
    copy = pl.read_csv(hardware_csv).filter(pl.col("kind") == "copy")["rate"].max()
    return float(f"{copy / gpu.memory_bandwidth / hardware_fractions(gpu).memory:.4g}")


def fit(data: pl.DataFrame, gpu_name: str, experts: dict, held: dict | None = None) -> tuple[dict, np.ndarray]:
    """The best of the coordinate searches from each start, the expert-GEMM factors ``experts`` and
    any ``held`` factors fixed."""
    meas = data["gpu_seconds"].to_numpy()
    held = held or {}
    pred = lambda x: predict(data, gpu_name, {**x, **experts, **held})  # noqa: E731
    free = lambda d: {k: v for k, v in d.items() if k not in held}  # noqa: E731
    _, x = min((_search(pred, free({**START, **s}), meas) for s in STARTS), key=lambda r: r[0])
    x = x | held
    x = {k: max(1, round(v)) if k in INTEGER else v for k, v in x.items()} | experts
    return x, predict(data, gpu_name, x)


def errors(data: pl.DataFrame, pred: np.ndarray) -> pl.DataFrame:
    """``data``'s points with their predicted seconds and relative error."""
    return data.select("model", "layers_run", "label", "gpu_seconds").with_columns(
        pl.Series("predicted_seconds", pred), pl.Series("error", pred / data["gpu_seconds"].to_numpy() - 1))


def hold_out(data: pl.DataFrame, kernels: pl.DataFrame, gpu_name: str, held: dict) -> pl.DataFrame:
    """Each model's points predicted by the factors fitted on the other models only (their
    iterations and their experts' kernel sweep)."""
    parts = []
    for (name,), g in data.group_by(["model"], maintain_order=True):
        experts, _ = fit_kernels(kernels.filter(pl.col("model") != name), gpu_name)
        x, _ = fit(data.filter(pl.col("model") != name), gpu_name, experts, held)
        pred = predict(g, gpu_name, x)
        parts.append(errors(g, pred))
    return pl.concat(parts)


def check(data_dir: Path, gpu_name: str, profile: Path) -> None:
    """Writes ``data_dir/check.csv``: every iteration there predicted by ``profile``'s factors on ``gpu_name``."""
    factors = yaml.safe_load(profile.read_text())["factors"]
    data = ordered(pl.read_csv(data_dir / "iterations.csv"))
    pred = predict(data, gpu_name, factors)
    table = errors(data, pred)
    table.write_csv(data_dir / "check.csv")
    for (m,), g in table.group_by(["model"], maintain_order=True):
        e = g["error"].to_numpy()
        print(f"{m}: median |error| {np.median(np.abs(e)):.3f}, median error {np.median(e):+.3f}, worst {np.max(np.abs(e)):.3f}")
    e = np.abs(table["error"].to_numpy())
    print(f"all {len(e)} points ({profile.name} on {gpu_name}): median |error| {np.median(e):.3f}, p90 {np.quantile(e, 0.9):.3f}, worst {e.max():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="calibration/h200-vllm-like")
    ap.add_argument("--gpu", default="h200")
    ap.add_argument("--cpu-step", default="calibration/vllm-cpu/cpu_step.yaml")
    ap.add_argument("--out", default=str(ENGINES_DIR / "vllm.yaml"))
    ap.add_argument("--hold", action="append", default=[], metavar="FACTOR=VALUE", help="keep a factor fixed (repeatable)")
    ap.add_argument("--kernels", default="calibration/h100-vllm-like/kernels.csv", help="layer kernels timed alone: sets elementwise_memory ('' to fit it)")
    ap.add_argument("--hold-out", action="store_true", help="leave each model out in turn; write holdout.csv, not the profile")
    ap.add_argument("--check", type=Path, metavar="DIR", help="predict DIR/iterations.csv with --profile on --gpu; fit nothing")
    ap.add_argument("--profile", type=Path, default=ENGINES_DIR / "vllm.yaml", help="the profile --check predicts with")
    args = ap.parse_args()
    if args.check:
        check(ROOT / args.check, args.gpu, args.profile)
        return
    data = ordered(pl.read_csv(ROOT / args.data / "iterations.csv"))
    kernels = kernel_points(pl.read_csv(ROOT / args.data / "grouped_gemm.csv"))
    held = {"memory": memory_from_copy(ROOT / args.data / "hardware.csv", args.gpu)}
    held |= {"elementwise_memory": elementwise_from_kernels(ROOT / args.kernels)} if args.kernels else {}
    held |= {k: float(v) for k, v in (h.split("=", 1) for h in args.hold)}
    if args.hold_out:
        table = hold_out(data, kernels, args.gpu, held)
        table.write_csv(ROOT / args.data / "holdout.csv")
        for (m,), g in table.group_by(["model"], maintain_order=True):
            e = np.abs(g["error"].to_numpy())
            print(f"{m} (held out): median |error| {np.median(e):.3f}, worst {e.max():.3f}, within 15% {np.mean(e <= 0.15):.0%}")
        e = np.abs(table["error"].to_numpy())
        print(f"all held-out points: median |error| {np.median(e):.3f}, worst {e.max():.3f}, within 15% {np.mean(e <= 0.15):.0%}")
        return
    device = json.loads((ROOT / args.data / "device.json").read_text())
    experts, kpred = fit_kernels(kernels, args.gpu)
    kerr = kpred / kernels["seconds"].to_numpy() - 1
    kernels.with_columns(pl.Series("predicted_seconds", kpred), pl.Series("error", kerr)).write_csv(ROOT / args.data / "grouped_gemm_fit.csv")
    x, pred = fit(data, args.gpu, experts, held)
    err = pred / data["gpu_seconds"].to_numpy() - 1
    table = errors(data, pred)
    table.write_csv(ROOT / args.data / "fit.csv")
    cpu_path = ROOT / args.cpu_step
    cpu_file = yaml.safe_load(cpu_path.read_text()) if cpu_path.exists() else {}
    cpu = cpu_file.get("cpu_step", cpu_file)
    cpu_step = {k: float(cpu.get(k, 0.0)) for k in ("base", "per_seq", "per_token")} | {"overlap": True}
    if "ngram_lookup" in cpu_file:  # the n-gram proposer's lookup (tools/fidelity/ngram_lookup_fit.py)
        cpu_step["ngram_lookup"] = {k: float(cpu_file["ngram_lookup"][k]) for k in ("base", "per_seq", "per_seq_squared", "per_context_token")}
    factors = {k: v if k in INTEGER else float(f"{v:.4g}") for k, v in x.items()}
    by_model = {m: float(f"{np.median(np.abs(g['error'].to_numpy())):.4f}") for (m,), g in table.group_by(["model"], maintain_order=True)}
    profile = {
        "description": "vllm — an efficient serving engine as vLLM runs it: fused add+RMSNorm, RoPE and SiLU-and-mul, "
                       "CUDA graphs for every iteration, FlashAttention (varlen), fused-MoE grouped GEMMs, LM head on sampled rows; "
                       "plus vLLM's own CPU time per scheduler step",
        "measured_on": f"{device['device']}, PyTorch {device['torch']}, {device['date']} ({args.data}, tools/fidelity/fused_grid.py); "
                       f"CPU step: {args.cpu_step}",
        "factors": factors,
        "cpu_step": cpu_step,
        "residuals": {"iteration_seconds": {"median_abs": float(f"{np.median(np.abs(err)):.4f}"), "p90_abs": float(f"{np.quantile(np.abs(err), 0.9):.4f}"),
                                            "max_abs": float(f"{np.max(np.abs(err)):.4f}"), "rms_log": float(f"{math.sqrt(np.mean(np.log1p(err) ** 2)):.4f}"),
                                            "points": len(err), "median_abs_by_model": by_model},
                      "expert_gemm_seconds": {"median_abs": float(f"{np.median(np.abs(kerr)):.4f}"), "max_abs": float(f"{np.max(np.abs(kerr)):.4f}"),
                                              "points": len(kerr)}},
        "fitted_from": {"command": "python -m tools.fidelity.engine_fit", "data": args.data, "gpu": args.gpu,
                        "expert_gemms": f"{args.data}/grouped_gemm.csv (tools/fidelity/grouped_gemm.py)",
                        "elementwise_kernels": f"{args.kernels} (tools/fidelity/layer_kernels.py)" if args.kernels else "fitted on the iterations",
                        "held": held},
    }
    header = ("# Written by `python -m tools.fidelity.engine_fit` (do not edit by hand): the default engine profile.\n"
              "# Relative factors multiply a GPU's hardware fractions (catalog/gpus.yaml hardware:, or its architecture prior).\n")
    Path(args.out).write_text(header + yaml.safe_dump(profile, sort_keys=False, width=120))
    with pl.Config(tbl_rows=200, tbl_width_chars=140):
        print(table.sort("error"))
    print(f"expert GEMMs ({len(kerr)} kernel points): median |error| {np.median(np.abs(kerr)):.3f}, worst {np.max(np.abs(kerr)):.3f}")
    print(f"factors {factors}\nmedian |error| {np.median(np.abs(err)):.3f}, worst {np.max(np.abs(err)):.3f}; by model {by_model}")


if __name__ == "__main__":
    main()
