"""The operator fit: each GPU's catalogue calibration, fitted on whole forward passes measured on it.

Lab tooling, not part of the fleetwise package (``fleetwise calibrate`` is the users' fitter; this
runs the same fit, ``fleetwise.calibrate.fit``, on the repository's own measurements). Run from the
repository root::

    python -m tools.fidelity.operator_fit

It fits each GPU's calibration from its measurements in ``calibration/<gpu>/`` and writes, from that
one fit, the fitted factors to ``calibration/<gpu>/fitted.yaml``, the same factors into the GPU's
``per_gpu`` line of the ``fleetwise-torch`` engine profile (``python/fleetwise/catalog/engines/``) and the error tables
to ``docs/fidelity.md``; it also predicts the H200 from its datasheet and the H100's calibration, to
show how far a calibration carries to a GPU it was not measured on. ``tests/test_calibration.py``
re-runs the fit and fails if any of the three files differs from what it would write.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import polars as pl
import yaml

from fleetwise.calibrate.fit import Measurements, error_summary, error_table, fit_calibration, fit_collective, predict_forward
from fleetwise.catalog import builtin_gpus, builtin_models

GPUS = {"h100": "h100-sxm", "h200": "h200"}
"""Measured GPUs: directory under calibration/ -> catalogue name."""
MODEL = "llama-3-8b"
ROOT = Path(__file__).resolve().parents[2]
"""The repository this script lives in (tools/fidelity/ -> the root)."""
CATALOGUE = Path("python") / "fleetwise" / "catalog" / "engines" / "fleetwise-torch.yaml"
"""The engine profile these fits belong to (the unfused PyTorch engine), relative to the repository root."""


def _describe(row: dict) -> str:
    parts = []
    if row["prefill"]:
        parts.append(f"prefill {row['prefill']}" + (f" after {row['cached']}" if row["cached"] else ""))
    if row["decode_batch"]:
        parts.append(f"{row['decode_batch']} decodes at {row['context']}")
    return " + ".join(parts)


def _markdown(table: pl.DataFrame) -> list[str]:
    lines = ["| iteration | measured ms | predicted ms | error |", "|---|---:|---:|---:|"]
    for r in table.iter_rows(named=True):
        lines.append(f"| {_describe(r)} | {r['graph_seconds'] * 1e3:.2f} | {r['predicted_seconds'] * 1e3:.2f} | {r['error'] * 100:+.1f}% |")
    return lines


def build(root: Path) -> tuple[dict, str]:
    """Fits every measured GPU and returns (fitted calibrations, markdown report)."""
    gpus, model = builtin_gpus(), builtin_models()[MODEL]
    fitted, sections, summary = {}, [], []
    # NCCL all-reduce measured on two NVLink-4 H200s; H100 SXM has the same NVLink generation.
    collective, collective_note = 0.75, "not measured; the default 0.75"
    ar_file = root / "calibration" / "h200x2" / "allreduce.csv"
    if ar_file.exists():
        ar = pl.read_csv(ar_file)
        collective = fit_collective(ar, gpus["h200"].link_bandwidth, gpus["h200"].link_latency)
        big = ar.filter(pl.col("bytes") == ar["bytes"].max()).row(0, named=True)
        collective_note = (
            f"{collective:.4g}, fitted on NCCL all-reduces of 16-512 MiB between two H200s (`calibration/h200x2/`; "
            f"{big['bytes'] / 2**20:.0f} MiB in {big['seconds'] * 1e3:.2f} ms = {big['bytes'] / big['seconds'] / 1e9:.0f} GB/s of "
            f"the 450 GB/s NVLink 4 per direction), applied to H100 SXM too"
        )
    for short, name in GPUS.items():
        d = root / "calibration" / short
        if not (d / "forward.csv").exists():
            continue
        m = Measurements.load(d)
        cal = fit_calibration(m, gpus[name], model, collective=collective)
        fitted[short] = cal
        (d / "fitted.yaml").write_text(
            f"# Fitted by `python -m tools.fidelity.operator_fit` from the measurements beside this file\n"
            f"# ({m.device['name']}, PyTorch {m.device['torch']}, {m.device['time']}).\n" + yaml.safe_dump(cal.model_dump(exclude_none=True), sort_keys=False)
        )
        t = error_table(m.forward, predict_forward(m.forward, model, gpus[name], cal))
        s = error_summary(t)
        summary.append(f"| {name} | own measurements | {s['points']} | {s['median_abs_error'] * 100:.1f}% | {s['max_abs_error'] * 100:.1f}% |")
        sections += [f"## {name}: fitted on its own measurements", "", *_markdown(t), ""]
    if "h100" in fitted and (root / "calibration" / "h200" / "forward.csv").exists():
        m = Measurements.load(root / "calibration" / "h200")
        t = error_table(m.forward, predict_forward(m.forward, model, gpus["h200"], fitted["h100"]))
        s = error_summary(t)
        summary.append(f"| h200 | H100's calibration + H200 datasheet | {s['points']} | {s['median_abs_error'] * 100:.1f}% | {s['max_abs_error'] * 100:.1f}% |")
        sections += ["## h200 predicted from the H100's calibration and the H200 datasheet", "", *_markdown(t), ""]
    cal_rows = ["| factor | " + " | ".join(GPUS[k] for k in fitted) + " |", "|---|" + "---:|" * len(fitted)]
    for f in fitted[next(iter(fitted))].model_dump(exclude_none=True):
        cal_rows.append(f"| {f} | " + " | ".join(f"{getattr(c, f):.4g}" if getattr(c, f) is not None else "-" for c in fitted.values()) + " |")
    text = "\n".join([
        "# Fidelity of the cost model against real GPUs",
        "",
        "Generated by `python -m tools.fidelity.operator_fit` from the measurements in `calibration/<gpu>/`, taken by",
        "`python3 python/fleetwise/calibrate/measure_gpu.py --out calibration/<gpu>` on the GPU. Each row is one whole",
        f"forward pass of {MODEL} (random weights, bf16, a small PyTorch engine: SDPA attention, contiguous KV cache, CUDA-graph",
        "replay, LM head on sampled rows only) compared with the cost model's prediction for the same iteration",
        "(`fleetwise estimate --engine fleetwise-torch --model llama-3-8b --gpu GPU --prefill P --prefill-context C",
        "--decode-batch B --context X`). Every figure here describes that unfused engine (engine profile `fleetwise-torch`,",
        "whose per-GPU lines this fit writes); the default `vllm` profile's fidelity is in docs/engines.md.",
        "",
        "| GPU | calibration | points | median abs error | worst abs error |",
        "|---|---|---:|---:|---:|",
        *summary,
        "",
        "Fitted factors (`calibration/<gpu>/fitted.yaml`; the catalogue's defaults for these GPUs):",
        "",
        *cal_rows,
        "",
        "How each factor is fitted is described in `python/fleetwise/calibrate/fit.py`. Caveats:",
        "",
        "* The engine measured is fleetwise's own minimal one. Its norms, RoPE and activations are unfused PyTorch",
        "  ops, so `elementwise_memory` is low (they move several times the bytes a fused kernel would) and",
        "  `layer_overhead` carries their launch latencies. A serving engine with fused kernels would fit higher values.",
        "* A prefill chunk after cached context runs PyTorch's masked (memory-efficient) attention kernel, because",
        "  PyTorch's lower-right causal bias does not support GQA there; a flash kernel would be faster. One",
        "  `attention_compute` factor covers both, which is where the largest errors are (chunks after 1-4K cached tokens).",
        "* `iteration_overhead` is 0: graph replay has no CPU work per step. A serving engine adds scheduling, sampling",
        "  and input preparation per iteration; set it per pool (`calibration: {iteration_overhead: ...}`).",
        f"* `collective`: {collective_note}. The ring model's per-step latency stays 2 us: Vidur's public DGX-H100",
        "  profile measures small all-reduces at about 7 us on 2 GPUs and 23-37 us on 8, as 2(p-1) x 2 us predicts;",
        "  our virtual machine showed a 40-60 us floor at 2 GPUs (PyTorch eager launches), so it was not fitted from it.",
        "",
        *sections,
    ])
    return fitted, text


def catalogue_text(text: str, fitted: dict) -> str:
    """The ``fleetwise-torch`` profile ``text`` with the ``per_gpu`` line of each GPU in ``fitted``
    (keys of ``GPUS``) replaced by its fitted factors, in the profile's one-line flow style."""
    for short, cal in fitted.items():
        flow = yaml.safe_dump(cal.model_dump(exclude_none=True), default_flow_style=True, sort_keys=False, width=10**9).strip()
        entry = re.compile(rf"^  {re.escape(GPUS[short])}: \{{.*\}}$", re.MULTILINE)
        text, n = entry.subn(lambda _m: f"  {GPUS[short]}: {flow}", text, count=1)
        if n != 1:
            raise ValueError(f"the fleetwise-torch profile has no per_gpu line for {GPUS[short]}")
    return text


def main() -> None:
    """Writes the fitted calibrations, the catalogue's entries for them and docs/fidelity.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root (default: the one this script is in)")
    args = ap.parse_args()
    fitted, text = build(args.root)
    catalogue = args.root / CATALOGUE
    catalogue.write_text(catalogue_text(catalogue.read_text(), fitted))
    out = args.root / "docs" / "fidelity.md"
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
