"""Compare fleetwise with a real serving engine on the same request traces.

The traces are Poisson arrivals with log-normal prompt and output lengths, made by fleetwise's own
workload generators (``make_trace``). ``torch_engine.py`` replays them on a GPU; this module
simulates the same requests with fleetwise (one ``vllm`` instance of llama-3-8b on h100-sxm, the
engine's limits, the cost-model factors of ``calibration/h100/fitted.yaml``) and reports the error
of the simulated TTFT, TPOT and E2E percentiles against the measured ones.

Two calibrations (``--calibration``):

* ``serving`` (default): the factors of ``calibration/h100/serving/fitted.yaml``, fitted by
  ``serving_fit.py`` on the engine's own iterations timed on a grid of shapes (``grid.py``), never on
  a trace; every trace, the calibration trace included, is then a validation;
* ``operator``: the operator-level factors of ``calibration/h100/fitted.yaml`` (the SDPA calibration
  engine), with the engine's per-iteration overhead fitted on the calibration trace's iterations
  (the first comparison; the calibration trace is then not validated on).

Lab tooling, not part of the fleetwise package; run from the repository root::

    python -m tools.fidelity.compare traces --out calibration/h100/serving      # write the traces
    python -m tools.fidelity.compare --data calibration/h100/serving [--markdown] [--calibration operator]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[2]
"""The repository this script lives in (tools/fidelity/ -> the root), whose calibration/ it reads."""
DATA = ROOT / "calibration" / "h100" / "serving"
FITTED = ROOT / "calibration" / "h100" / "fitted.yaml"
SERVING_FITTED = DATA / "fitted.yaml"

MODEL, GPU = "llama-3-8b", "h100-sxm"
MAX_NUM_SEQS, MAX_NUM_BATCHED_TOKENS, MAX_LEN = 64, 4096, 2560
CALIBRATION_TRACE = "calibration"
QUANTILES = (0.5, 0.9, 0.99)
METRICS = ("ttft", "tpot", "e2e")


@dataclass(frozen=True)
class TraceSpec:
    """A Poisson trace: ``requests`` arrivals at ``rate`` per second, seeded."""

    rate: float
    requests: int
    seed: int


TRACES = {
    CALIBRATION_TRACE: TraceSpec(rate=9.0, requests=300, seed=101),
    "rate6": TraceSpec(rate=6.0, requests=500, seed=1),
    "rate12": TraceSpec(rate=12.0, requests=600, seed=2),
}
"""The traces replayed on the GPU: one to fit the engine's iteration overhead, two to validate."""

LENGTHS = {"kind": "lognormal", "prompt_median": 512, "prompt_sigma": 0.8, "output_median": 128, "output_sigma": 0.7}
"""Length distribution (chat-like); prompts are clipped to [32, 2048] and outputs to [8, 512]."""


def make_trace(spec: TraceSpec) -> pl.DataFrame:
    """A trace (request_id, arrival_s, prompt_tokens, output_tokens) from fleetwise's generators,
    lengths clipped to the engine's limits, arrivals shifted so that the first is at 0."""
    from fleetwise.workload import build_workload
    from fleetwise.workload.config import WorkloadConfig

    cfg = WorkloadConfig.model_validate({"arrivals": {"kind": "poisson", "rate": spec.rate}, "lengths": LENGTHS, "requests": spec.requests})
    w = build_workload(cfg, seed=spec.seed)
    arrival = (w.arrival_ns - w.arrival_ns[0]) / 1e9
    return pl.DataFrame({
        "request_id": np.arange(len(arrival)),
        "arrival_s": np.round(arrival, 6),
        "prompt_tokens": np.clip(w.prompt_tokens, 32, 2048),
        "output_tokens": np.clip(w.output_tokens, 8, 512),
    })


def write_traces(out: Path) -> list[Path]:
    """Writes every trace of ``TRACES`` as ``<name>.csv`` into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in TRACES.items():
        p = out / f"{name}.csv"
        make_trace(spec).write_csv(p)
        paths.append(p)
    return paths


def fitted_calibration(path: Path = FITTED) -> dict:
    """The cost-model factors fitted to the H100's operator measurements."""
    return yaml.safe_load(path.read_text())


def cost_model(calibration: dict):
    """fleetwise's cost model of llama-3-8b on one h100-sxm with ``calibration``."""
    from fleetwise.cost import cost_model
    from fleetwise.catalog import Calibration, lookup
    from fleetwise.catalog.engine import resolve_calibration

    g = lookup("gpu", GPU, {}, "gpu")
    m = lookup("model", MODEL, {}, "model")
    base = resolve_calibration(GPU, g, "fleetwise-torch")  # the engine these measurements describe
    cal = Calibration.model_validate({**base.model_dump(), **calibration})
    return cost_model(m, g, calibration=cal, model_name=MODEL, gpu_name=GPU)


def decode_contexts(trace: pl.DataFrame, iters: pl.DataFrame) -> list[list[int]]:
    """Each iteration's decode contexts (including the new token; empty for a prefill), rebuilt by
    replaying the engine's iteration log over the trace: a prefill admits the next requests in
    arrival order, a decode advances every running request by one token."""
    reqs = trace.sort("request_id")
    prompts, outputs = reqs["prompt_tokens"].to_list(), reqs["output_tokens"].to_list()
    nxt, running, out = 0, {}, []
    for lens, b, kv in zip(iters["prefill_lens"], iters["decode_seqs"], iters["decode_kv_tokens"]):
        ls = [int(n) for n in str(lens or "").split(";") if n]
        if ls:
            new = list(range(nxt, nxt + len(ls)))
            assert sorted(prompts[i] for i in new) == sorted(ls), "iteration log does not follow the trace"
            nxt += len(ls)
            running.update({i: [prompts[i], 1] for i in new if outputs[i] > 1})
            out.append([])
            continue
        ctx = [c + 1 for c, _ in running.values()]
        assert len(ctx) == b and sum(ctx) == kv, "iteration log does not follow the trace"
        out.append(ctx)
        for i in list(running):
            running[i][0] += 1
            running[i][1] += 1
            if running[i][1] == outputs[i]:
                del running[i]
    return out


def predict_iterations(iters: pl.DataFrame, calibration: dict, contexts: list[list[int]] | None = None) -> np.ndarray:
    """Predicted seconds of each measured iteration: its exact prefill lengths; its decodes at their
    own ``contexts`` if given (``decode_contexts``), else at the batch's mean context (the same KV
    bytes, but no longest sequence)."""
    cost = cost_model(calibration)
    out = np.empty(len(iters))
    for i, (lens, b, kv) in enumerate(zip(iters["prefill_lens"], iters["decode_seqs"], iters["decode_kv_tokens"])):
        prefills = [(int(n), 0, True) for n in str(lens or "").split(";") if n]
        decodes = []
        if contexts is not None:
            decodes = contexts[i]
        elif b:
            q, r = divmod(int(kv), int(b))
            decodes = [q + 1] * r + [q] * (int(b) - r)
        out[i] = cost.iteration_seconds(prefills, decodes)
    return out


def load_run(data: Path = DATA) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The measured per-request and per-iteration tables of an engine run."""
    reqs = pl.read_csv(data / "requests.csv")
    iters = pl.read_csv(data / "iterations.csv", schema_overrides={"prefill_lens": pl.Utf8})
    return reqs, iters


def fit_iteration_overhead(iters: pl.DataFrame, calibration: dict) -> dict:
    """The engine's per-iteration overhead: the median of measured minus predicted seconds over
    the calibration trace's iterations (also per kind, for the record)."""
    it = iters.filter(pl.col("trace") == CALIBRATION_TRACE)
    res = (it["end_s"] - it["start_s"]).to_numpy() - predict_iterations(it, {**calibration, "iteration_overhead": 0.0})
    prefill = it["prefill_tokens"].to_numpy() > 0
    return {"iteration_overhead": float(np.median(res)), "prefill_median": float(np.median(res[prefill])),
            "decode_median": float(np.median(res[~prefill])), "iterations": len(it)}


def simulate_trace(trace: pl.DataFrame, calibration: dict) -> pl.DataFrame:
    """fleetwise's per-request results for ``trace`` (request_id, arrival_s, prompt/output tokens)."""
    import fleetwise

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.parquet"
        trace.select(
            (pl.col("arrival_s") * 1e9).round().cast(pl.Int64).alias("arrival_ns"),
            pl.col("prompt_tokens").cast(pl.Int64), pl.col("output_tokens").cast(pl.Int64),
        ).write_parquet(path)
        scenario = {
            "name": "serving-fidelity", "seed": 0,
            "cluster": {"engine": "fleetwise-torch", "pools": [{"name": "engine", "count": 1, "gpu": GPU, "model": MODEL,
                                   "scheduler": {"kind": "vllm", "max_num_seqs": MAX_NUM_SEQS, "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS},
                                   "calibration": calibration}]},
            "workload": {"arrivals": {"kind": "trace", "path": str(path), "format": "parquet"}},
        }
        return fleetwise.simulate(scenario).requests


def measured_metrics(reqs: pl.DataFrame) -> dict[str, np.ndarray]:
    """TTFT, TPOT and E2E (seconds) as vLLM's ``bench serve`` defines them."""
    ttft = (reqs["first_token_s"] - reqs["arrival_s"]).to_numpy()
    e2e = (reqs["last_token_s"] - reqs["arrival_s"]).to_numpy()
    tpot = (e2e - ttft) / (reqs["output_tokens"].to_numpy() - 1)
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e}


def simulated_metrics(reqs: pl.DataFrame) -> dict[str, np.ndarray]:
    """TTFT, TPOT and E2E (seconds) of a fleetwise result's requests."""
    return {m: reqs[f"{m}_s"].to_numpy() for m in METRICS}


def compare(data: Path = DATA, calibration: str = "serving") -> dict:
    """Simulates the traces with the ``serving`` calibration (fitted on the engine's grid; every
    trace is validated) or the ``operator`` one (overhead fitted on the calibration trace, which is
    then left out) and returns the measured and simulated percentiles and their relative errors."""
    reqs, iters = load_run(data)
    base = fitted_calibration()
    fit = fit_iteration_overhead(iters, base)
    if calibration == "operator":
        cal = {**base, "iteration_overhead": round(fit["iteration_overhead"], 7)}
    else:
        cal = fitted_calibration(data / "fitted.yaml")
    out = {"method": calibration, "fit": fit, "calibration": cal, "traces": {}}
    present = set(reqs["trace"])
    skip = {CALIBRATION_TRACE} if calibration == "operator" else set()
    for name in [t for t in TRACES if t in present and t not in skip] + sorted(present - set(TRACES)):
        measured = reqs.filter(pl.col("trace") == name).sort("request_id")
        trace = pl.read_csv(data / f"{name}.csv").sort("request_id")
        sim = simulate_trace(trace, cal)
        mm, sm = measured_metrics(measured), simulated_metrics(sim)
        it = iters.filter(pl.col("trace") == name)
        it_err = predict_iterations(it, cal, decode_contexts(trace, it)) / (it["end_s"] - it["start_s"]).to_numpy() - 1
        rows = {}
        for m in METRICS:
            for q in QUANTILES:
                a, b = float(np.quantile(mm[m], q)), float(np.quantile(sm[m], q))
                rows[f"{m}_p{round(q * 100)}"] = {"measured": a, "simulated": b, "error": b / a - 1}
        out["traces"][name] = {"requests": len(measured), "iterations": len(it), "metrics": rows,
                               "iteration_error_median": float(np.median(it_err)),
                               "iteration_abs_error_median": float(np.median(np.abs(it_err))),
                               "measured_wall_s": float(measured["last_token_s"].max()),
                               "simulated_wall_s": float(sim["completion_ns"].max() / 1e9)}
    return out


def markdown(result: dict) -> str:
    """The comparison as Markdown tables (one row per metric and percentile)."""
    if result.get("method") == "operator":
        lines = [f"iteration_overhead fitted on the calibration trace: {result['fit']['iteration_overhead'] * 1e3:.3f} ms "
                 f"(prefill iterations {result['fit']['prefill_median'] * 1e3:.3f} ms, decode {result['fit']['decode_median'] * 1e3:.3f} ms; "
                 f"{result['fit']['iterations']} iterations)", ""]
    else:
        lines = ["calibration: " + ", ".join(f"{k} {v}" for k, v in result["calibration"].items()) + " (fitted on the engine's grid)", ""]
    for name, t in result["traces"].items():
        lines += [f"**{name}** ({t['requests']} requests, {t['iterations']} iterations; per-iteration error median "
                  f"{t['iteration_error_median'] * 100:+.1f}%, median absolute {t['iteration_abs_error_median'] * 100:.1f}%)", "",
                  "| metric | measured | simulated | error |", "|---|---:|---:|---:|"]
        for key, r in t["metrics"].items():
            m, p = key.split("_")
            unit, scale = ("ms", 1e3) if m in ("ttft", "tpot") else ("s", 1)
            lines.append(f"| {m.upper()} {p} | {r['measured'] * scale:.{1 if unit == 'ms' else 2}f} {unit} | "
                         f"{r['simulated'] * scale:.{1 if unit == 'ms' else 2}f} {unit} | {r['error'] * 100:+.1f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``traces --out DIR`` writes the traces; otherwise compares a run."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", choices=["compare", "traces"], default="compare")
    ap.add_argument("--data", type=Path, default=DATA, help="directory with the traces and the engine's outputs")
    ap.add_argument("--out", type=Path, help="traces: where to write them (default: --data)")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables instead of JSON")
    ap.add_argument("--calibration", choices=["serving", "operator"], default="serving",
                    help="serving: factors fitted on the engine's grid; operator: operator factors + overhead fitted on the calibration trace")
    args = ap.parse_args(argv)
    if args.command == "traces":
        for p in write_traces(args.out or args.data):
            print(p)
        return
    result = compare(args.data, args.calibration)
    print(markdown(result) if args.markdown else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
