"""Fits the cost model's factors to the serving engine's own iterations (``grid.csv``).

``grid.py`` times the engine of ``torch_engine.py`` on chosen iteration shapes (decode batches of
1..64 sequences at uniform, spread and sampled contexts; prefills of 1-8 prompts, 32..4096 tokens)
on the GPU the traces ran on, never on the traces themselves. This module fits, on those points, the
factors that depend on the engine's kernels, minimising the mean squared log error of the predicted
iteration period (the time from one iteration's start to the next's: host work, graph replay, the
sampled tokens' copy back, bookkeeping):

* ``attention_memory``: HBM bandwidth reached by FlashAttention's decode kernel;
* ``attention_cta``: the bandwidth one decode-attention thread block reaches on its own, as a
  fraction of one SM's share; it bounds a batch that fills the GPU by its longest sequence;
* ``attention_compute``: prefill attention's share of peak FLOP/s;
* ``elementwise_memory``: bandwidth of the unfused norms, RoPE, residual adds and activations;
* ``gemm_ridge_exponent``: the exponent p of the GEMMs' blend of compute and memory time,
  ``(c^p + m^p)^(1/p)``: cuBLAS's GEMMs of a few hundred rows, near the roofline's ridge, reach
  neither their FLOP rate nor the weights' bandwidth;
* ``iteration_overhead``: the fixed time per iteration (the engine's host work plus what the cost
  model misses), with ``layer_overhead`` kept at the operator fit's value (the two are one constant
  for a fixed model). The grid runs the engine's device path and per-sequence bookkeeping but not
  the rest of ``serve``'s loop (arrivals, admission, the iteration log), so the overhead gets the
  difference of the median host time per iteration (period minus GPU time) between the
  calibration trace's iterations and the grid's (``host_gap``): host time only, no latency and no
  GPU time of any trace enters the fit, and the validation traces are not read.

The GEMM factors (``gemm_compute``, ``memory``) are cuBLAS's and stay as fitted on operators
(``calibration/h100/fitted.yaml``). ``prefill_pad_tokens`` is not fitted: it is the engine's prefill
CUDA-graph step (``prefill_step`` of the run's ``device.json``, 64), so a prefill's GEMMs are charged
at its padded token count.

Lab tooling, not part of the fleetwise package; run from the repository root::

    python -m tools.fidelity.serving_fit [--write]     # prints (and writes) serving/fitted.yaml

``compare.py`` reads the written file as it is (nothing is copied into the catalogue).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from tools.fidelity import compare as fc

GRID_CSV = fc.DATA / "grid.csv"
SERVING_FITTED = fc.DATA / "fitted.yaml"
FITTED_FACTORS = ("attention_memory", "attention_cta", "attention_compute", "elementwise_memory", "gemm_ridge_exponent")
SEARCH = {
    "attention_memory": np.round(np.arange(0.30, 1.0001, 0.005), 4),
    "attention_cta": np.round(np.arange(0.10, 1.5001, 0.005), 4),
    "attention_compute": np.round(np.arange(0.10, 1.0001, 0.005), 4),
    "elementwise_memory": np.round(np.arange(0.05, 1.0001, 0.005), 4),
    "gemm_ridge_exponent": np.round(np.arange(1.5, 16.0001, 0.1), 4),
}
OVERHEADS = np.arange(0.0, 3e-3, 2e-6)


def load_grid(path: Path = GRID_CSV) -> pl.DataFrame:
    """The engine's grid measurements (one row per iteration shape)."""
    return pl.read_csv(path, schema_overrides={"prefill_lens": pl.Utf8, "contexts": pl.Utf8})


def shapes(grid: pl.DataFrame) -> list[tuple[list, list]]:
    """The cost model's (prefills, decodes) arguments of each grid row (each decode's own context)."""
    out = []
    for lens, ctx in zip(grid["prefill_lens"], grid["contexts"]):
        prefills = [(int(n), 0, True) for n in str(lens or "").split(";") if n]
        decodes = [int(c) for c in str(ctx or "").split(";") if c]
        out.append((prefills, decodes))
    return out


def predict(shape_list: list[tuple[list, list]], calibration: dict) -> np.ndarray:
    """Predicted seconds of each shape with ``calibration``."""
    cost = fc.cost_model(calibration)
    return np.array([cost.iteration_seconds(p, d) for p, d in shape_list])


def _best_overhead(p0: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    loss = np.mean((np.log(p0[None, :] + OVERHEADS[:, None]) - np.log(y[None, :])) ** 2, axis=1)
    i = int(np.argmin(loss))
    return float(OVERHEADS[i]), float(loss[i])


def fit(grid: pl.DataFrame, base: dict, factors: tuple[str, ...] = FITTED_FACTORS, sweeps: int = 4) -> dict:
    """Coordinate descent over ``factors`` (each searched on its grid, the overhead solved for at
    every step) from ``base``; returns the fitted calibration."""
    y = grid["period_s"].to_numpy()
    sh = shapes(grid)
    cal = {**base, "iteration_overhead": 0.0}
    for f in factors:
        if cal.get(f) is None:
            cal[f] = float(SEARCH[f][len(SEARCH[f]) // 2])
    for _ in range(sweeps):
        for f in factors:
            best = None
            for v in SEARCH[f]:
                o, loss = _best_overhead(predict(sh, {**cal, f: float(v)}), y)
                if best is None or loss < best[0]:
                    best = (loss, float(v))
            cal[f] = round(best[1], 4)
    cal["iteration_overhead"] = round(_best_overhead(predict(sh, cal), y)[0], 7)
    return cal


def host_gap(grid: pl.DataFrame, iters: pl.DataFrame) -> dict:
    """Median host seconds per iteration (start to next start, minus the GPU time) of the
    calibration trace's iterations, of the grid's, and their difference."""
    it = iters.filter(pl.col("trace") == fc.CALIBRATION_TRACE)
    s, g = it["start_s"].to_numpy(), it["gpu_s"].to_numpy()
    serve = float(np.median(s[1:] - s[:-1] - g[:-1]))
    grid_host = float(np.median((grid["period_s"] - grid["gpu_s"]).to_numpy()))
    return {"serve_host_s": serve, "grid_host_s": grid_host, "gap_s": serve - grid_host}


def errors(grid: pl.DataFrame, calibration: dict) -> pl.DataFrame:
    """The grid with predicted seconds and the relative error against the measured period."""
    pred = predict(shapes(grid), calibration)
    return grid.with_columns(predicted_s=pl.Series(pred), error=pl.Series(pred / grid["period_s"].to_numpy() - 1))


def summary(table: pl.DataFrame) -> dict:
    """Median and worst absolute error, per kind of iteration."""
    out = {}
    for kind in ("decode", "prefill"):
        e = np.abs(table.filter(pl.col("kind") == kind)["error"].to_numpy())
        out[kind] = {"points": len(e), "median_abs_error": float(np.median(e)), "p90_abs_error": float(np.quantile(e, 0.9)), "max_abs_error": float(np.max(e))}
    return out


def engine_parameters(data: Path = fc.DATA) -> dict:
    """The engine's own parameters that the cost model charges (not fitted): the prefill CUDA
    graphs' token step, from the run's ``device.json``."""
    dev = json.loads((data / "device.json").read_text())
    step = int(dev.get("prefill_step", 0)) if dev.get("prefill_cuda_graphs") else 0
    return {"prefill_pad_tokens": step} if step > 1 else {}


def serving_calibration(path: Path = SERVING_FITTED) -> dict:
    """The committed serving-engine factors (``calibration/h100/serving/fitted.yaml``)."""
    return yaml.safe_load(path.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=GRID_CSV)
    ap.add_argument("--write", action="store_true", help=f"write {SERVING_FITTED.relative_to(fc.ROOT)}")
    args = ap.parse_args(argv)
    grid = load_grid(args.grid)
    base = {**fc.fitted_calibration(), **engine_parameters(args.grid.parent)}
    cal = fit(grid, base)
    gap = host_gap(grid, fc.load_run(args.grid.parent)[1])
    grid_overhead = cal["iteration_overhead"]
    op = fc.fitted_calibration()
    cal["iteration_overhead"] = round(grid_overhead + gap["gap_s"], 7)
    res = {"calibration": cal, "grid_overhead_s": grid_overhead, "host_gap": gap, "fitted_on": summary(errors(grid, {**cal, "iteration_overhead": grid_overhead})), "operator_factors": summary(errors(grid, {**op, "iteration_overhead": _best_overhead(predict(shapes(grid), op), grid["period_s"].to_numpy())[0]}))}
    print(json.dumps(res, indent=2))
    if args.write:
        dev = json.loads((args.grid.parent / "grid.json").read_text())
        head = (f"# Fitted by `python -m tools.fidelity.serving_fit --write` on the serving engine's grid of\n"
                f"# iterations beside this file ({dev['device']}, PyTorch {dev['torch']}, {dev['time']}); GEMM factors,\n"
                f"# collective and layer_overhead from calibration/h100/fitted.yaml (operator fit); prefill_pad_tokens is the\n"
                f"# engine's prefill CUDA-graph step (device.json). iteration_overhead =\n"
                f"# {grid_overhead * 1e3:.3f} ms fitted on the grid + {gap['gap_s'] * 1e3:.3f} ms of serve-loop host time the grid does not run\n"
                f"# (median host time per iteration: calibration trace {gap['serve_host_s'] * 1e3:.3f} ms, grid {gap['grid_host_s'] * 1e3:.3f} ms).\n")
        SERVING_FITTED.write_text(head + yaml.safe_dump(cal, sort_keys=False))


if __name__ == "__main__":
    main()
