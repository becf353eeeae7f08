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

A factor the fit puts at either end of its range (``GRID``: 0.02 to 1) is refused rather than
written: at the top, the measurements ran faster than the GPU's datasheet roofline allows (they
came from another GPU than ``--gpu``); at the bottom, more than 50x slower. ``check_model`` refuses
a model other than the one whose forward passes were measured, and ``check_device`` a catalogue GPU
other than the one ``device.json`` names.
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

FORWARD_MODEL = {"name": "llama-3-8b", "num_layers": 32, "hidden_size": 4096, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128,
                 "intermediate_size": 14336, "vocab_size": 128256, "num_experts": 0, "mla": None, "mlp": "gated",
                 "parallel_attention": False, "sliding_window": None, "tie_word_embeddings": False, "dtype_bytes": 2}
"""The model whose forward passes ``measure_gpu.py`` times (its ``Llama`` class; its gemm.csv rows
for it are named ``llama3_8b.*``), for measurements whose device.json does not say (``"model"``,
written by measure_gpu.py since it records it)."""


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
    source: Path | None = None
    """The directory they were read from (for messages)."""

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
            device=device if isinstance(device, dict) else {},
            source=d,
        )

    def file(self, name: str) -> str:
        """``name`` in the directory the measurements came from, for messages."""
        return str(self.source / name) if self.source is not None else name

    @property
    def device_name(self) -> str | None:
        """The measured GPU's name from device.json, if it gives one."""
        name = self.device.get("name")
        return name.strip() if isinstance(name, str) and name.strip() else None

    @property
    def forward_model(self) -> dict:
        """The shape of the model whose forward passes forward.csv holds: device.json's ``model``
        when it gives one, else measure_gpu.py's (``FORWARD_MODEL``)."""
        given = self.device.get("model")
        return given if isinstance(given, dict) and given else FORWARD_MODEL


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


def fit_calibration(m: Measurements, gpu: GpuSpec, model: ModelSpec, collective: float = 0.75, gpu_name: str | None = None) -> Calibration:
    """Fits every factor to ``m`` for ``gpu`` (datasheet peaks, named ``gpu_name`` in messages);
    ``model`` is the forward passes' model. Raises ``ConfigError`` when a table has no measurement
    that isolates a factor, and when a factor lands at either end of ``GRID`` (module docstring)."""
    from fleetwise.errors import ConfigError

    gname = gpu_name or "the --gpu"
    flops, nbytes, sec = _gemm_terms(m.gemm)
    tokens = m.gemm["tokens"].to_numpy()
    dec = m.attn_decode.filter(pl.col("batch") * pl.col("context") >= 65536)
    dbytes, dsec = _decode_terms(dec)
    pf, _, ps = _prefill_terms(m.attn_prefill)
    big = pf >= 1e11
    # factor, work, seconds, rate, what it is fitted on, rate's name
    fits = [
        ("memory", nbytes[tokens <= 16], sec[tokens <= 16], gpu.memory_bandwidth, (m.file("gemm.csv"), "GEMMs of at most 16 tokens"), "memory_bandwidth"),
        ("gemm_compute", flops[tokens >= 2048], sec[tokens >= 2048], gpu.peak_flops, (m.file("gemm.csv"), "GEMMs of at least 2048 tokens"), "peak_flops"),
        ("attention_memory", dbytes, dsec, gpu.memory_bandwidth, (m.file("attn_decode.csv"), "decode attentions of at least 65536 cached tokens (batch x context)"), "memory_bandwidth"),
        ("attention_compute", pf[big], ps[big], gpu.peak_flops, (m.file("attn_prefill.csv"), "prefill attentions of at least 1e11 FLOPs"), "peak_flops"),
    ]
    values = {}
    for name, work, seconds, rate, (file, what), rate_name in fits:
        if len(work) == 0:
            raise ConfigError(f"{file}: no {what}, which {name} is fitted on; measure them (measure_gpu.py without --quick)")
        values[name] = round(fit_one(work, seconds, rate), 4)
        _check_bounds(m, name, values[name], f"the {what} in {file}", float(np.median(work / (rate * seconds))), f"{gname}'s {rate_name} ({rate:.4g})", gname)
    base = Calibration(gemm_compute=values["gemm_compute"], attention_compute=values["attention_compute"], memory=values["memory"],
                       attention_memory=values["attention_memory"], elementwise_memory=1.0, collective=collective, iteration_overhead=0.0, layer_overhead=0.0)
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
    _check_bounds(m, "elementwise_memory", round(ee, 4), f"the forward passes in {m.file('forward.csv')}", None, f"{gname}'s memory_bandwidth", gname)
    return base.model_copy(update={"elementwise_memory": round(ee, 4), "layer_overhead": round(lo, 7)})


def _check_bounds(m: Measurements, name: str, value: float, what: str, reached: float | None, rate: str, gpu_name: str) -> None:
    """``ConfigError`` when factor ``name`` was fitted at the top or bottom of ``GRID``: ``what`` ran
    faster than ``rate`` allows (``reached``: the median fraction of it they reached), or more than
    ``1 / GRID[0]`` times slower."""
    from fleetwise.errors import ConfigError

    device = m.device_name
    where = (f"the data's device ({device}, in {m.file('device.json')}) and --gpu {gpu_name} may differ"
             if device else f"the GPU the data was measured on and --gpu {gpu_name} may differ ({m.file('device.json')} names none)")
    share = f" (a median {reached:.2f}x of it)" if reached is not None else ""
    if value >= GRID[-1] - 1e-9:
        raise ConfigError(f"{name} fitted at its ceiling {GRID[-1]:.2f}: {what} ran faster than {rate} allows{share}, "
                          f"so they were not measured on that GPU: {where}; give the --gpu they were measured on")
    if value <= GRID[0] + 1e-9:
        raise ConfigError(f"{name} fitted at its floor {GRID[0]:.2f}: {what} ran more than {1 / GRID[0]:.0f}x slower than {rate}{share}: "
                          f"{where}, or the measurements are broken; give the --gpu they were measured on, or measure again")


def check_model(m: Measurements, model: ModelSpec, model_name: str) -> None:
    """``ConfigError`` naming both models when ``model`` (``--model model_name``) is not shaped like
    the model whose forward passes ``m`` holds (``Measurements.forward_model``): the fit of
    ``elementwise_memory`` and ``layer_overhead`` predicts those passes with ``model``'s shapes."""
    from fleetwise.errors import ConfigError

    measured = m.forward_model
    label = str(measured.get("name") or "the measured model")
    differ = []
    for field, value in measured.items():
        if field == "name" or field not in ModelSpec.model_fields:
            continue
        got = getattr(model, field)
        got = got.model_dump() if hasattr(got, "model_dump") else got
        if got != value:
            differ.append(f"{field} {got!r} (measured {value!r})")
    if differ:
        raise ConfigError(f"--model {model_name}: the forward passes in {m.file('forward.csv')} were measured on {label} "
                          f"(measure_gpu.py's model; its gemm.csv rows are named after it), and {model_name} differs: {', '.join(differ)}; "
                          f"give --model {label} (the model the data measured)")


def _chips(text: str) -> set[str]:
    """The chip names in a GPU name or description: words with a letter and a digit (H100, L4,
    MI300X, A10G) or of four or more digits (RTX 4090), less memory sizes and kinds (80GB, HBM3,
    GDDR6) and form factors (SXM4, PCIe)."""
    import re

    words = re.split(r"[^0-9A-Za-z]+", text.upper())
    skip = re.compile(r"^(\d+[GT]B|HBM\w*|GDDR\w*|SXM\d*|PCIE\w*|GEN\d+|LPDDR\w*)$")
    return {w for w in words if w and not skip.match(w) and ((re.search(r"[A-Z]", w) and re.search(r"\d", w)) or re.fullmatch(r"\d{4,}", w))}


def check_device(m: Measurements, gpu: GpuSpec, gpu_name: str, catalogue: dict[str, GpuSpec]) -> str | None:
    """Compares device.json's GPU name with catalogue GPU ``gpu_name``'s description by chip name
    (H100, A100, L4, ...). ``ConfigError`` when the device's chip is another catalogue GPU's and not
    ``gpu_name``'s; a warning (returned) when the catalogue has no GPU of that chip; ``None`` when
    they agree or either says no chip."""
    from fleetwise.errors import ConfigError

    device = m.device_name
    chips = _chips(device) if device else set()
    if not chips or not gpu.description or chips & _chips(gpu.description):
        return None
    others = sorted(n for n, g in catalogue.items() if chips & _chips(g.description))
    if others:
        raise ConfigError(f"--gpu {gpu_name} ({gpu.description}): {m.file('device.json')} says the data was measured on {device}; "
                          f"the factors are relative to the measured GPU's peaks, so give its --gpu: {', '.join(others)}")
    return (f"warning: {m.file('device.json')} says the data was measured on {device}, which is not --gpu {gpu_name} ({gpu.description}) "
            f"nor any catalogue GPU; the factors are relative to {gpu_name}'s datasheet peaks")


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
