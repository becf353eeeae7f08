"""``fleetwise validate`` and ``fleetwise calibrate``: replay a deployment's request log and compare,
fit the cost model to a log (``--requests``) or to GPU measurements (``--data``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from fleetwise.cli.app import app, err, out

_FORMAT_HELP = "Log format: vllm-bench, table or fleetwise (default: by the file; docs/calibration.md)."
_SELECT_HELP = "Keep only a table's rows whose COLUMN equals VALUE (e.g. trace=rate6). Repeatable."


def _select(pairs: List[str]) -> dict[str, str]:
    """``COLUMN=VALUE`` pairs as a dict; ``ConfigError`` for one without ``=``."""
    from fleetwise.errors import ConfigError

    chosen = {}
    for pair in pairs:
        column, eq, value = pair.partition("=")
        if not eq or not column.strip():
            raise ConfigError(f"--select {pair!r}: expected COLUMN=VALUE, e.g. trace=rate6")
        chosen[column.strip()] = value.strip()
    return chosen


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.2f}"


def _comparison_table(title: str, comparison) -> Table:
    """Measured vs simulated ms and the relative error, one row per metric and statistic."""
    t = Table(title=title)
    for c in ("metric", "stat", "measured (ms)", "simulated (ms)", "error"):
        t.add_column(c, justify="left" if c in ("metric", "stat") else "right")
    for r in comparison.rows:
        t.add_row(r.metric.upper(), r.statistic, _ms(r.measured_s), _ms(r.simulated_s), _pct(r.error))
    return t


def _log_line(log) -> str:
    dropped = ", ".join(f"{n} {k}" for k, n in log.dropped.items() if n)
    notes = "; ".join(log.notes)
    return (f"log {log.path} ({log.format}): {len(log)} of {log.rows_read} requests replayed"
            + (f" (left out: {dropped})" if dropped else "") + ("; ITL recorded" if log.has_itl else "; no ITL in the log")
            + (f"; {notes}" if notes else ""))


def _write_json(path: Path, data: dict) -> None:
    from fleetwise.errors import ConfigError

    try:
        path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the JSON: {e.strerror or e}") from None


@app.command()
def validate(
    scenario: Path = typer.Argument(..., help="Scenario YAML: the cluster, pools and policies (its workload is replaced by the log)."),
    requests: Path = typer.Option(..., "--requests", help="The deployment's per-request log (vllm bench serve --save-detailed JSON, a CSV/JSONL/Parquet table, or a fleetwise requests.parquet)."),
    log_format: Optional[str] = typer.Option(None, "--format", help=_FORMAT_HELP),
    select: List[str] = typer.Option([], "--select", help=_SELECT_HELP),
    set_: List[str] = typer.Option([], "--set", help="Override a scenario value: PATH=VALUE. Repeatable."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison as JSON to this file (-: print it on stdout, the table going to stderr)."),
) -> None:
    """Replay exactly the log's requests on SCENARIO and print simulated vs measured TTFT, TPOT, ITL and E2E."""
    from fleetwise.calibrate.comparison import compare
    from fleetwise.calibrate.replay import load_replay_scenario, replay
    from fleetwise.requestlog import read_request_log

    from fleetwise.result import check_output_file

    if json_out is not None and str(json_out) != "-":
        check_output_file(json_out, "--json")  # a bad --json fails before the replay
    log = read_request_log(requests, log_format, _select(select))
    sc = load_replay_scenario(scenario, set_)
    comparison = compare(log, replay(sc, log))
    to_stdout = json_out is not None and str(json_out) == "-"
    show = err if to_stdout else out  # with --json -, stdout holds the JSON alone
    show.print(_comparison_table(f"{sc.name}: {comparison.finished}/{comparison.requests} replayed requests finished (simulated vs measured)", comparison))
    show.print(_log_line(log), highlight=False)
    if comparison.rejected:
        show.print(f"the simulated cluster rejected {comparison.rejected} of the log's requests; their latencies are left out", highlight=False)
    data = {"scenario": str(scenario), "log": str(log.path), "log_format": log.format, "rows_read": log.rows_read,
            "dropped": dict(log.dropped), "notes": list(log.notes), **comparison.to_json()}
    if to_stdout:
        print(json.dumps(data, indent=2, allow_nan=False))
    elif json_out is not None:
        _write_json(json_out, data)
        out.print(f"comparison written to {json_out}")
    if comparison.finished == 0:
        from fleetwise.errors import SimulationError

        raise SimulationError(f"{scenario}: no replayed request finished on the simulated cluster; nothing to compare")


@app.command()
def calibrate(
    requests: Optional[Path] = typer.Option(None, "--requests", help="Fit to a deployment's per-request log (with --scenario): writes an engine profile."),
    scenario: Optional[Path] = typer.Option(None, "--scenario", help="With --requests: the scenario the log's deployment is (cluster, pools, policies)."),
    pool: Optional[str] = typer.Option(None, "--pool", help="With --requests: the pool to fit (default: the only one)."),
    param: List[str] = typer.Option([], "--param", help="With --requests: fit only this parameter (default: iteration_overhead, elementwise_memory, attention_compute, layer_overhead, attention_memory; also seq_overhead, token_overhead, moe_layer_overhead, moe_dispatch_memory). Repeatable."),
    metric: List[str] = typer.Option([], "--metric", help="With --requests: fit to this metric's p50/p90/p99 only (ttft, tpot, itl, e2e; default ttft, tpot, itl). Repeatable."),
    log_format: Optional[str] = typer.Option(None, "--format", help=_FORMAT_HELP),
    select: List[str] = typer.Option([], "--select", help=_SELECT_HELP),
    set_: List[str] = typer.Option([], "--set", help="With --requests: override a scenario value: PATH=VALUE. Repeatable."),
    data: Optional[Path] = typer.Option(None, "--data", help="Directory of GPU measurements (written by --measure, or copied from a GPU machine)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="With --data: catalogue GPU whose datasheet peaks the factors are relative to."),
    measure: bool = typer.Option(False, "--measure", help="With --data: first measure on this machine's GPU (needs PyTorch and CUDA)."),
    model: str = typer.Option("llama-3-8b", "--model", help="With --data: model of the measured forward passes (measure_gpu.py runs llama-3-8b; another model is refused)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Where to write the result (--requests: the engine profile, default profile.yaml; --data: default DATA/fitted.yaml)."),
) -> None:
    """Fit the cost model: to a deployment's request log (--requests LOG --scenario S), or to measurements taken on a real GPU (--data DIR --gpu NAME)."""
    from fleetwise.errors import ConfigError

    if requests is not None:
        if data is not None or measure:
            raise ConfigError("calibrate: give either --requests (fit to a request log) or --data (fit to GPU measurements), not both")
        if scenario is None:
            raise ConfigError("calibrate --requests: --scenario is required (the cluster the log was measured on)")
        _calibrate_from_log(requests, scenario, pool, param, metric, log_format, _select(select), set_, output or Path("profile.yaml"))
        return
    if data is None or gpu is None:
        raise ConfigError("calibrate: give --requests LOG --scenario S (fit to a request log), or --data DIR --gpu NAME (fit to GPU measurements)")
    _calibrate_from_measurements(data, gpu, measure, model, output)


def _calibrate_from_log(requests: Path, scenario: Path, pool: str | None, names: List[str], metrics: List[str], log_format: str | None,
                        select: dict[str, str], overrides: List[str], output: Path) -> None:
    """``calibrate --requests``: fit, print before/after, write the profile."""
    from fleetwise.calibrate.log_fit import FIT_METRICS, OPTIONAL_PARAMETERS, PARAMETERS, fit_log
    from fleetwise.calibrate.profile_file import engine_profile, write_profile
    from fleetwise.calibrate.replay import load_replay_scenario
    from fleetwise.errors import ConfigError
    from fleetwise.requestlog import read_request_log
    from fleetwise.result import check_output_file

    known = {p.name: p for p in (*PARAMETERS, *OPTIONAL_PARAMETERS)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--param {', '.join(unknown)}: not a fitted parameter; allowed: {', '.join(known)}")
    parameters = [known[n] for n in dict.fromkeys(names)] if names else list(PARAMETERS)
    check_output_file(output)  # a bad -o fails before the fit
    _check_not_input(output, {"--requests": requests, "--scenario": scenario})
    log = read_request_log(requests, log_format, select)
    sc = load_replay_scenario(scenario, overrides)
    fit = fit_log(sc, log, pool, parameters, tuple(dict.fromkeys(metrics)) or FIT_METRICS)
    t = Table(title=f"pool {fit.pool} ({fit.gpu}): {len(parameters)} parameter(s) fitted to {len(log)} requests in {fit.evaluations} replays")
    for c in ("parameter", "before", "fitted"):
        t.add_column(c, justify="left" if c == "parameter" else "right")
    for name, value in fit.fitted.items():
        t.add_row(name, f"{fit.start[name]:.4g}", f"{value:.4g}")
    out.print(t)
    errors = Table(title=f"relative error of the simulated percentiles (loss over {', '.join(fit.metrics)}: {fit.loss_before:.4f} -> {fit.loss_after:.4f})")
    for c in ("metric", "stat", "measured (ms)", "before", "after"):
        errors.add_column(c, justify="left" if c in ("metric", "stat") else "right")
    for b, a in zip(fit.before.rows, fit.after.rows):
        errors.add_row(b.metric.upper(), b.statistic, _ms(b.measured_s), _pct(b.error), _pct(a.error))
    out.print(errors)
    out.print(_log_line(log), highlight=False)
    path = write_profile(engine_profile(fit, log, scenario, select, overrides), output)
    out.print(f"engine profile written to {path}")


MEASURED_FILES = ("gemm.csv", "attn_prefill.csv", "attn_decode.csv", "copy.csv", "forward.csv", "device.json")
"""The files measure_gpu.py writes into --data (the fit reads all but copy.csv)."""
FITTED_FILE = "fitted.yaml"
"""What ``calibrate --data DIR`` writes by default, in DIR (so a later fit may replace it)."""


def _check_not_input(output: Path, inputs: dict[str, Path]) -> None:
    """``ConfigError`` when -o ``output`` is one of ``inputs`` (option -> path): it would be overwritten."""
    from fleetwise.errors import ConfigError
    from fleetwise.result import same_file

    for option, path in inputs.items():
        if same_file(output, path):
            raise ConfigError(f"-o {output}: that is the {option} input ({path}); writing there would overwrite it; give another -o")


def _check_not_in_data(output: Path, data: Path, measure: bool) -> None:
    """``ConfigError`` when -o ``output`` would overwrite a file of the --data directory: an existing
    file there other than ``FITTED_FILE``, or (with --measure) one that measuring writes."""
    from fleetwise.errors import ConfigError

    try:
        out, d = output.resolve(), data.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop before Python 3.13
        return
    if not out.is_relative_to(d) or out == d / FITTED_FILE:
        return
    if out.exists() or (measure and out.parent == d and out.name in MEASURED_FILES):
        raise ConfigError(f"-o {output}: a file of the --data directory {data} (the measurements); writing there would overwrite it; "
                          f"give a new file, or leave -o out to write {data / FITTED_FILE}")


def _write_text(path: Path, text: str, what: str) -> None:
    """Writes ``text`` to ``path`` (its directory created); ``ConfigError`` naming it if that fails."""
    from fleetwise.errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write {what}: {e.strerror or e}") from None


def _measure(data: Path) -> None:
    """Runs measure_gpu.py into ``data`` on this machine's GPU; its progress goes to stdout. A
    failure (no CUDA, no PyTorch) is a ``ConfigError`` with the child's last error line."""
    import subprocess

    from fleetwise.errors import ConfigError

    script = Path(__file__).resolve().parent.parent / "calibrate" / "measure_gpu.py"
    try:
        done = subprocess.run([sys.executable, str(script), "--out", str(data)], stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as e:
        raise ConfigError(f"--measure: cannot run {script}: {e.strerror or e}") from None
    if done.returncode == 0:
        if done.stderr:
            sys.stderr.write(done.stderr)
        return
    lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {done.returncode}"
    raise ConfigError(f"--measure: measuring needs a CUDA GPU and PyTorch: {script.name} failed: {last}")


def _calibrate_from_measurements(data: Path, gpu: str, measure: bool, model: str, output: Path | None) -> None:
    """``calibrate --data``: fit the efficiency factors to operator measurements of a GPU."""
    import yaml

    from fleetwise.calibrate.fit import (Measurements, check_device, check_model, error_summary, error_table, fit_calibration,
                                         predict_forward)
    from fleetwise.catalog import builtin_gpus, lookup
    from fleetwise.errors import ConfigError
    from fleetwise.paths import path_kind
    from fleetwise.result import check_output_file

    if path_kind(data, "--data") not in (None, "dir"):
        raise ConfigError(f"--data {data}: not a directory; give the directory measure_gpu.py wrote")
    spec = lookup("gpu", gpu, {}, "--gpu")
    m_spec = lookup("model", model, {}, "--model")
    out_file = output if output is not None else data / FITTED_FILE

    def check_data() -> None:
        missing = [f for f in MEASURED_FILES if f != "copy.csv" and not (data / f).exists()]  # the fit reads all but copy.csv
        if missing:
            raise ConfigError(f"--data {data}: missing {', '.join(missing)}; run with --measure on a GPU machine, or copy a measure_gpu.py output directory")

    if not measure:
        check_data()
    check_output_file(out_file, "-o")  # a bad -o fails before the fit (and before measuring)
    if output is not None:
        _check_not_in_data(output, data, measure)
    if measure:
        _measure(data)
        check_data()
    m = Measurements.load(data)
    check_model(m, m_spec, model)
    cal = fit_calibration(m, spec, m_spec, gpu_name=gpu)
    warning = check_device(m, spec, gpu, builtin_gpus())
    if warning:
        err.print(warning, highlight=False)
    s = error_summary(error_table(m.forward, predict_forward(m.forward, m_spec, spec, cal)))
    _write_text(out_file, yaml.safe_dump(cal.model_dump(exclude_none=True), sort_keys=False), "the fitted factors")
    out.print(yaml.safe_dump(cal.model_dump(), sort_keys=False))
    out.print(f"forward passes: median error {s['median_abs_error']:.1%}, worst {s['max_abs_error']:.1%} over {s['points']} points; written to {out_file}")
