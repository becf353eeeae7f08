"""Fits the cost model's efficiency factors to measurements taken by ``measure_gpu``.

Each factor is fitted on the measurements that isolate it, minimising the mean squared log error
of the roofline prediction (so a 10% miss counts the same on a 20 us and a 20 ms kernel):

* ``memory``: on projection GEMMs of at most 16 tokens (they stream their weights);
* ``gemm_compute``: on projection GEMMs of at least 2048 tokens (compute-bound);
* ``attention_memory``: on decode attention with at least 64K cached tokens per call (smaller
  calls are dominated by the kernel's fixed latency, which ``layer_overhead`` carries);
* ``attention_compute``: on prefill attention of at least 1e11 FLOPs;
* ``elementwise_memory`` and ``layer_overhead``: on whole forward passes, the bandwidth reached by
  norms, RoPE, residual adds and activations (searched on a grid) and the fixed time per layer
  (kernel launches and latencies; in closed form by least squares of relative error).

``iteration_overhead`` is 0: forward passes are timed by CUDA-graph replay, without the CPU-side
work a serving engine adds per step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.catalog import Calibration, GpuSpec, ModelSpec
from fleetwise.cost import cost_model

BF16 = 2
GRID = np.arange(0.02, 1.0001, 0.0025)


def _log_loss(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return np.mean((np.log(pred) - np.log(measured)) ** 2, axis=-1)


def fit_one(work: np.ndarray, seconds: np.ndarray, rate: float) -> float:
    """The efficiency ``e`` for which ``work / (rate * e)`` best predicts ``seconds``."""
    pred = work[None, :] / (rate * GRID[:, None])
    return float(GRID[np.argmin(_log_loss(pred, seconds))])


@dataclass(frozen=True)
class Measurements:
    """The CSV tables one ``measure_gpu`` run wrote."""

    gemm: pl.DataFrame
    attn_prefill: pl.DataFrame
    attn_decode: pl.DataFrame
    forward: pl.DataFrame
    device: dict

    @classmethod
    def load(cls, directory: str | Path) -> "Measurements":
        """Reads the tables from ``directory``; ConfigError naming the file, line and column of
        a missing column, an empty table, a count that is not a whole number >= 0 or a time that
        is not a positive finite number of seconds (a fit to 0 s timings is no fit)."""
        from fleetwise.errors import ConfigError

        d = Path(directory)
        try:
            device = json.loads((d / "device.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ConfigError(f"{d / 'device.json'}: cannot read it as JSON: {e}") from None
        return cls(
            gemm=_table(d / "gemm.csv", ("tokens", "k", "n"), ("seconds",)),
            attn_prefill=_table(d / "attn_prefill.csv", ("q", "cached", "heads", "kv_heads", "head_dim"), ("seconds",)),
            attn_decode=_table(d / "attn_decode.csv", ("batch", "context", "heads", "kv_heads", "head_dim"), ("seconds",)),
            forward=_table(d / "forward.csv", ("prefill", "cached", "decode_batch", "context"), ("graph_seconds",)),
            device=device,
        )


def _table(path: Path, counts: tuple[str, ...], times: tuple[str, ...]) -> pl.DataFrame:
    """One measurement table, checked: ``counts`` whole numbers >= 0, ``times`` positive finite seconds."""
    from fleetwise.errors import ConfigError

    try:
        frame = pl.read_csv(path, infer_schema_length=None)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise ConfigError(f"{path}: cannot read it as CSV: {str(e).splitlines()[0] if str(e) else e}") from None
    missing = [c for c in (*counts, *times) if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(frame.columns) or 'none'})")
    if frame.height == 0:
        raise ConfigError(f"{path}: no measurements (only a header); run the measurement again")
    for cols, ok, what in ((counts, lambda v: v.is_integer() and v >= 0, "a whole number >= 0"),
                           (times, lambda v: math.isfinite(v) and v > 0, "a positive finite number of seconds")):
        for c in cols:
            values = frame[c].cast(pl.Float64, strict=False)
            for i, (raw, v) in enumerate(zip(frame[c].to_list(), values.to_list())):
                if v is None or not ok(v):
                    raise ConfigError(f"{path}: line {i + 2}: {c} must be {what}, got {raw!r}")
    return frame.with_columns(pl.col(c).cast(pl.Float64) for c in times).with_columns(pl.col(c).cast(pl.Int64) for c in counts)


def _gemm_terms(g: pl.DataFrame):
    t, k, n = (g[c].to_numpy().astype(float) for c in ("tokens", "k", "n"))
    return 2 * t * k * n, (k * n + t * k + t * n) * BF16, g["seconds"].to_numpy()


def _prefill_terms(a: pl.DataFrame):
    q, c, h, kv, d = (a[x].to_numpy().astype(float) for x in ("q", "cached", "heads", "kv_heads", "head_dim"))
    flops = 4 * h * d * q * (c + (q + 1) / 2)
    nbytes = (2 * q * h * d + 2 * kv * d * (c + q)) * BF16
    return flops, nbytes, a["seconds"].to_numpy()


def _decode_terms(a: pl.DataFrame):
    b, c, h, kv, d = (a[x].to_numpy().astype(float) for x in ("batch", "context", "heads", "kv_heads", "head_dim"))
    return (2 * b * h * d + 2 * kv * d * b * c) * BF16, a["seconds"].to_numpy()


def forward_shape(row: dict) -> tuple[list, list]:
    """The cost model's (prefills, decodes) arguments for one forward.csv row."""
    prefills = [(row["prefill"], row["cached"], True)] if row["prefill"] else []
    decodes = [row["context"] + 1] * row["decode_batch"]
    return prefills, decodes


def predict_forward(forward: pl.DataFrame, model: ModelSpec, gpu: GpuSpec, cal: Calibration, model_name: str = "model") -> np.ndarray:
    """Predicted seconds of each forward pass in ``forward`` (tp = 1)."""
    cm = cost_model(model, gpu, calibration=cal, model_name=model_name)
    return np.array([cm.iteration_seconds(*forward_shape(r)) for r in forward.iter_rows(named=True)])


def _split_elementwise(forward: pl.DataFrame, model: ModelSpec, gpu: GpuSpec, cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """Predicted seconds of each forward pass, split into (elementwise, everything else)."""
    cm = cost_model(model, gpu, calibration=cal)
    elem, rest = [], []
    for r in forward.iter_rows(named=True):
        ops = cm.breakdown(*forward_shape(r))
        e = sum(o["seconds"] for o in ops if o["op"] in ("elementwise", "embedding"))
        elem.append(e)
        rest.append(sum(o["seconds"] for o in ops) - e)
    return np.array(elem), np.array(rest)


def fit_calibration(m: Measurements, gpu: GpuSpec, model: ModelSpec, collective: float = 0.75) -> Calibration:
    """Fits every factor to ``m`` for ``gpu`` (datasheet peaks); ``model`` is the forward passes' model."""
    flops, nbytes, sec = _gemm_terms(m.gemm)
    tokens = m.gemm["tokens"].to_numpy()
    em = fit_one(nbytes[tokens <= 16], sec[tokens <= 16], gpu.memory_bandwidth)
    ec = fit_one(flops[tokens >= 2048], sec[tokens >= 2048], gpu.peak_flops)
    dec = m.attn_decode.filter(pl.col("batch") * pl.col("context") >= 65536)
    eam = fit_one(*_decode_terms(dec), gpu.memory_bandwidth)
    pf, _, ps = _prefill_terms(m.attn_prefill)
    big = pf >= 1e11
    eac = fit_one(pf[big], ps[big], gpu.peak_flops)
    ec, em, eam, eac = (round(x, 4) for x in (ec, em, eam, eac))
    base = Calibration(gemm_compute=ec, attention_compute=eac, memory=em, attention_memory=eam, elementwise_memory=1.0, collective=collective, iteration_overhead=0.0, layer_overhead=0.0)
    y = m.forward["graph_seconds"].to_numpy()
    elem_at_peak, rest = _split_elementwise(m.forward, model, gpu, base)
    layers, w = float(model.num_layers), 1.0 / y**2
    best = None
    for ee in GRID:
        p0 = rest + elem_at_peak / ee
        lo = max(0.0, float(np.sum(w * layers * (y - p0)) / np.sum(w * layers**2)))
        loss = float(np.mean(((p0 + layers * lo) / y - 1.0) ** 2))
        if best is None or loss < best[0]:
            best = (loss, float(ee), lo)
    _, ee, lo = best
    return base.model_copy(update={"elementwise_memory": round(ee, 4), "layer_overhead": round(lo, 7)})


def error_table(forward: pl.DataFrame, predicted: np.ndarray) -> pl.DataFrame:
    """Forward passes with predicted seconds and signed relative error."""
    return forward.with_columns(
        predicted_seconds=pl.Series(predicted),
        error=pl.Series(predicted / forward["graph_seconds"].to_numpy() - 1.0),
    )


def error_summary(table: pl.DataFrame) -> dict:
    """Median and worst absolute relative error."""
    e = np.abs(table["error"].to_numpy())
    return {"median_abs_error": float(np.median(e)), "max_abs_error": float(np.max(e)), "points": int(len(e))}


def fit_collective(allreduce: pl.DataFrame, link_bandwidth: float, link_latency: float, min_bytes: int = 16 << 20) -> float:
    """The ``collective`` efficiency of the ring all-reduce model,
    ``2(p-1) * latency + 2(p-1)/p * bytes / (link_bandwidth * e)``, fitted on messages of at least
    ``min_bytes`` (smaller ones measure launch and protocol latency, not bandwidth)."""
    big = allreduce.filter(pl.col("bytes") >= min_bytes)
    p = big["world_size"].to_numpy().astype(float)
    nbytes = big["bytes"].to_numpy().astype(float)
    sec = big["seconds"].to_numpy() - 2 * (p - 1) * link_latency
    return round(fit_one(2 * (p - 1) / p * nbytes, sec, link_bandwidth), 4)
