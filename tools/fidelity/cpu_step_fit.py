"""The CPU-step fit: vLLM's measured CPU time per engine step (``calibration/vllm-cpu/steps.csv``,
written by ``tools/fidelity/measure_vllm_step.py``) fitted as

    cpu_step = base + per_seq * num_seqs + per_token * num_batched_tokens [+ per_waiting * num_waiting]

by least squares on relative error (each point weighted by 1/measured, so small batches count as
much as large ones), coefficients kept non-negative. Lab tooling, not part of the fleetwise package;
needs only numpy, polars and pyyaml. Run from the repository root::

    python -m tools.fidelity.cpu_step_fit

It writes ``calibration/vllm-cpu/cpu_step.yaml``:

* ``cpu_step``: what the engine profile takes, the engine-core process's host work per step on one
  core, the sum of two fitted components: the scheduler (``schedule()`` + ``update_from_output()`` +
  msgpack encode of the outputs; steps.csv, column ``engine_core``) and the model runner's host work
  (input preparation + sampled-token bookkeeping; runner.csv, column ``host``);
* ``parts`` / ``runner_parts``: the same fit for each measured part on its own, including the front
  end's (``decode``, ``output``: another process, overlapping the engine core);
* ``per_request``: per-request costs against prompt length (first_token.csv);
* ``ngram_lookup``: the n-gram proposer's lookup per step (ngram_lookup.csv, ``ngram_lookup_fit``);

each with its residuals (median and max relative error over its points). ``per_waiting`` is kept only
when fitting it lowers the median relative residual by more than :data:`WAITING_GAIN` and adds at
least :data:`WAITING_SHARE` of the median step at the largest waiting queue measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
import yaml

DATA = Path(__file__).resolve().parents[2] / "calibration" / "vllm-cpu"
TERMS = ("base", "per_seq", "per_token", "per_waiting")
"""Fit terms: constant, per sequence in the batch, per batched token, per waiting request."""
WAITING_GAIN = 0.01
"""per_waiting must lower the median relative residual by this much (absolute fraction) to be kept..."""
WAITING_SHARE = 0.05
"""... and add at least this fraction of the median step at the most waiting requests measured."""
PARTS = {
    "engine_core": "Scheduler.schedule() + Scheduler.update_from_output() + msgpack encode of EngineCoreOutputs",
    "schedule": "Scheduler.schedule()",
    "update": "Scheduler.update_from_output() with one sampled token per decoding request",
    "encode": "msgpack encode of EngineCoreOutputs (engine core output thread)",
    "decode": "msgpack decode of EngineCoreOutputs (front-end process)",
    "output": "OutputProcessor.process_outputs(): detokenise, build RequestOutput, queue (front-end process)",
    "total": "all parts above, as if run back to back on one core",
}
"""Each fitted part of the step (steps.csv) and what it covers."""
DECODE_ONLY = ("decode", "output")
"""Front-end parts whose work is per emitted token, not per scheduled sequence: a prefill chunk emits
nothing until its last, when the first token costs in proportion to the prompt (first_token.csv), so
a per-sequence line fits decode steps only."""
RUNNER_PARTS = {
    "host": "model runner host work: input_prep + bookkeeping + sample_rest (CPUModelRunner = GPUModelRunner code)",
    "input_prep": "_update_states, _prepare_inputs, batch padding, slot mappings, attention metadata, _preprocess",
    "bookkeeping": "_bookkeeping_sync: sampled ids to lists, per-request appends",
    "sample_rest": "sample_tokens() minus the sampler and bookkeeping",
}
"""Each fitted part of the model runner's step (runner.csv) and what it covers."""
RUNNER_MIN_SAMPLES = 9
"""runner.csv points with fewer steps than this are left out of the fit."""


def load_steps(path: Path = DATA / "steps.csv") -> pl.DataFrame:
    """The measured points, one row per (kind, batch, waiting) point."""
    return pl.read_csv(path)


def load_runner(path: Path = DATA / "runner.csv") -> pl.DataFrame:
    """The model runner's measured points with at least :data:`RUNNER_MIN_SAMPLES` steps (the rest
    are one-off steps where requests join the batch, three samples each)."""
    return pl.read_csv(path).filter(pl.col("samples") >= RUNNER_MIN_SAMPLES)


def design(df: pl.DataFrame, terms: tuple[str, ...]) -> np.ndarray:
    """The regression matrix of ``terms`` for the points in ``df``."""
    cols = {
        "base": lambda: np.ones(df.height),
        "per_seq": lambda: df["num_seqs"].to_numpy().astype(float),
        "per_token": lambda: df["num_batched_tokens"].to_numpy().astype(float),
        "per_waiting": lambda: df["num_waiting"].to_numpy().astype(float),
    }
    return np.column_stack([cols[t]() for t in terms])


def _nonneg_relative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares of relative error with every coefficient >= 0 (active set: a term whose
    coefficient comes out negative is fixed at zero and the rest refitted)."""
    active = list(range(x.shape[1]))
    w = 1.0 / y
    while True:
        coef, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
        if (coef >= 0).all() or len(active) == 1:
            out = np.zeros(x.shape[1])
            out[active] = np.maximum(coef, 0.0)
            return out
        active.pop(int(np.argmin(coef)))


def coefficients(part: dict) -> dict[str, float]:
    """The fit terms present in a part's (or ``cpu_step``'s) mapping."""
    return {t: part[t] for t in TERMS if t in part}


def relative_errors(df: pl.DataFrame, coef: dict[str, float], column: str) -> np.ndarray:
    """(predicted - measured) / measured for each point of ``column`` (microseconds in the CSV)."""
    terms = tuple(coef)
    pred = design(df, terms) @ np.array([coef[t] for t in terms]) * 1e6
    meas = df[column].to_numpy()
    return (pred - meas) / meas


def fit_part(df: pl.DataFrame, part: str, what: str, try_waiting: bool = True) -> dict:
    """Fits one part's median step time (column ``<part>_median_us``); returns its coefficients
    (seconds, 4 significant digits) and the residuals of those rounded coefficients. Front-end
    parts (:data:`DECODE_ONLY`) are fitted on decode steps only."""
    column = f"{part}_median_us"
    plain = TERMS[:3]
    if part in DECODE_ONLY:  # decode steps schedule one token per sequence: per_token is per_seq there
        df = df.filter(pl.col("kind") == "decode")
        plain = TERMS[:2]
    with_waiting = plain + ("per_waiting",)
    y = df[column].to_numpy() * 1e-6
    candidates = [plain, with_waiting] if try_waiting else [plain]
    fits = {terms: {t: float(f"{c:.4g}") for t, c in zip(terms, _nonneg_relative_lstsq(design(df, terms), y))} for terms in candidates}
    med = {k: float(np.median(np.abs(relative_errors(df, v, column)))) for k, v in fits.items()}
    keep_waiting = try_waiting and med[plain] - med[with_waiting] > WAITING_GAIN and fits[with_waiting]["per_waiting"] * df["num_waiting"].max() > WAITING_SHARE * float(np.median(y))
    coef = fits[with_waiting] if keep_waiting else fits[plain]
    rel = np.abs(relative_errors(df, coef, column))
    out = {"what": what, **coef, "residuals": {"median_rel": round(float(np.median(rel)), 4), "max_rel": round(float(np.max(rel)), 4), "points": int(df.height)}}
    if try_waiting:
        out["per_waiting_if_fitted"] = fits[with_waiting]["per_waiting"]
        out["per_waiting_kept"] = bool(keep_waiting)
    return out


def build(data: Path = DATA) -> dict:
    """The whole fit file's content from ``data/steps.csv`` (and ``data/runner.csv`` when present)."""
    df = load_steps(data / "steps.csv")
    parts = {p: fit_part(df, p, what) for p, what in PARTS.items()}
    components = {"scheduler": parts["engine_core"]}
    runner_parts = {}
    if (data / "runner.csv").exists():
        rdf = load_runner(data / "runner.csv")
        runner_parts = {p: fit_part(rdf, p, what, try_waiting=False) for p, what in RUNNER_PARTS.items()}
        components["runner_host"] = runner_parts["host"]
    per_request = fit_first_token(data / "first_token.csv") if (data / "first_token.csv").exists() else {}
    cpu_step = {t: float(f"{sum(c.get(t, 0.0) for c in components.values()):.4g}") for t in TERMS if any(t in c for c in components.values())}
    return {
        "source": "calibration/vllm-cpu/steps.csv and runner.csv (tools/fidelity/measure_vllm_step.py, measure_vllm_runner.py); fit: tools/fidelity/cpu_step_fit.py",
        "units": "seconds; per_seq per sequence in the batch, per_token per batched token, per_waiting per waiting request",
        "cpu_step": cpu_step,
        "cpu_step_is": "the sum of components (engine-core process host work per step, one core): " + ", ".join(f"{k} = {v['what']}" for k, v in components.items()),
        "residuals": {
            "max_rel": max(c["residuals"]["max_rel"] for c in components.values()),
            "median_rel": max(c["residuals"]["median_rel"] for c in components.values()),
            "bound": "each component's residual on its own points; a sum of positive parts errs by at most the larger relative error",
            **{k: dict(v["residuals"]) for k, v in components.items()},
        },
        "parts": parts,
        "runner_parts": runner_parts,
        "per_request": per_request,
        **({"ngram_lookup": _ngram_lookup(data / "ngram_lookup.csv")} if (data / "ngram_lookup.csv").exists() else {}),
    }


def _ngram_lookup(path: Path) -> dict:
    """The n-gram proposer's lookup fit of ``path`` (``ngram_lookup_fit``, which uses this module's solver)."""
    from tools.fidelity import ngram_lookup_fit

    return ngram_lookup_fit.fit(path)


def fit_first_token(path: Path) -> dict:
    """Per-request costs against prompt length (first_token.csv): the engine core's add (prompt block
    hashes) and the front end's first token (detokeniser primed with the whole prompt), each as
    ``base + per_prompt_token * prompt_tokens`` (seconds) with residuals."""
    df = pl.read_csv(path)
    out = {}
    what = {"add": "engine core: Request() with prompt block hashes + Scheduler.add_request(), once per request",
            "first_output": "front end: process_outputs() of a request's first token (DecodeStream primed with the prompt)"}
    for part, text in what.items():
        x = np.column_stack([np.ones(df.height), df["prompt_tokens"].to_numpy().astype(float)])
        y = df[f"{part}_median_us"].to_numpy() * 1e-6
        coef = [float(f"{c:.4g}") for c in _nonneg_relative_lstsq(x, y)]
        rel = np.abs((x @ np.array(coef) - y) / y)
        out[part] = {"what": text, "base": coef[0], "per_prompt_token": coef[1],
                     "residuals": {"median_rel": round(float(np.median(rel)), 4), "max_rel": round(float(np.max(rel)), 4), "points": int(df.height)}}
    return out


def write(data: Path = DATA) -> Path:
    """Fits and writes ``data/cpu_step.yaml``; returns its path."""
    out = data / "cpu_step.yaml"
    out.write_text(yaml.safe_dump(build(data), sort_keys=False, width=120))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: fit and write, print the engine-core fit."""
    ap = argparse.ArgumentParser(description="Fit vLLM's measured CPU time per step.")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args(argv)
    path = write(args.data)
    fit = yaml.safe_load(path.read_text())
    print(f"{path}: cpu_step {fit['cpu_step']} residuals {fit['residuals']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
