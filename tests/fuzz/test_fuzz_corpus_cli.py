"""The CLI part of issue 12's fuzz corpus: each case runs ``fleetwise ...`` (``cli.main``, in the
sandboxed worker; a handful as real ``python -m fleetwise`` processes) and must exit 2 with a
message and no traceback, or exit 0 with every invariant of what it wrote (strict-JSON summary,
no NaN printed)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import pytest
import yaml

from fuzz_worker import REPO, assert_clean_cli, run_cli_process
from fuzz_fixtures import worker  # noqa: F401  (the module's sandboxed worker fixture)

QUICKSTART = str(REPO / "scenarios" / "quickstart.yaml")
TINY = {
    "name": "tiny",
    "seed": 1,
    "cluster": {"pools": [{"name": "main", "count": 1, "gpu": "h100-sxm", "model": "llama-3-8b"}]},
    "workload": {"arrivals": {"kind": "poisson", "rate": 10.0}, "lengths": {"kind": "constant", "prompt": 200, "output": 20}, "requests": 20},
    "slo": {"ttft": 0.5, "tpot": 0.05},
}


@pytest.fixture(scope="module")
def scratch():
    """A scratch directory holding ``tiny.yaml``; removed at the end of the module."""
    import shutil

    d = Path(tempfile.mkdtemp(prefix="fleetwise-fuzz-cli-"))
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def cli(worker, scratch: Path, *args: str, check_dir: Path | None = None, timeout: float = 30) -> dict:
    """Runs ``fleetwise ARGS`` in the worker with ``scratch`` as the working directory."""
    req = {"op": "cli", "args": list(args), "cwd": str(scratch)}
    if check_dir is not None:
        req["check_dir"] = str(check_dir)
    return worker.call(req, timeout=timeout)


def assert_refused(outcome: dict, case: str, *words: str) -> None:
    """The command must exit 2, with a message naming one of ``words`` and no traceback."""
    assert_clean_cli(outcome, case)
    assert outcome["exit_code"] == 2, f"{case}: accepted with exit {outcome['exit_code']}:\n{outcome['stdout'][-800:]}"
    assert any(w.lower() in outcome["stderr"].lower() for w in words), f"{case}: the message does not name {words}: {outcome['stderr'][-800:]}"


def test_nothing_finished_writes_strict_json_and_prints_no_nan(worker, scratch):
    """Every request rejected (prompts beyond the context): summary.json is strict JSON (null, not
    NaN), and the CLI prints no 'nan' (was 'SLO attainment nan%')."""
    out = scratch / "nothing"
    outcome = cli(worker, scratch, "run", "tiny.yaml", "--set", "workload.lengths={kind: constant, prompt: 100000, output: 10}", "-o", str(out), check_dir=out)
    assert_clean_cli(outcome, "nothing finishes")


def test_every_request_rejected_says_why(worker, scratch):
    """max_num_batched_tokens 16 rejects every request: not a silent exit 0 — the output names the reason."""
    out = scratch / "rejected"
    outcome = cli(worker, scratch, "run", QUICKSTART, "--set", "workload.requests=50", "--set", "cluster.pools.0.scheduler={kind: vllm, max_num_batched_tokens: 16}", "-o", str(out), check_dir=out)
    assert_clean_cli(outcome, "all rejected")
    text = outcome["stdout"] + outcome["stderr"]
    assert "max_num_batched_tokens" in text, f"all rejected: the reason is not printed (exit {outcome['exit_code']}):\n{text[-1500:]}"


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["../../x", "{scratch}/absolute-name"])
def test_scenario_name_cannot_write_outside_runs(worker, scratch, name):
    """``--set name=../../x`` (or an absolute path) never writes outside ``runs/`` of the working directory."""
    name = name.format(scratch=scratch)
    cwd = scratch / "a" / "b"
    cwd.mkdir(parents=True, exist_ok=True)
    before = _files_under(scratch)
    outcome = worker.call({"op": "cli", "args": ["run", str(scratch / "tiny.yaml"), "--set", f"name={name}"], "cwd": str(cwd)}, timeout=30)
    assert_clean_cli(outcome, f"name={name}")
    escaped = sorted(str(p) for p in _files_under(scratch) - before if not p.is_relative_to(cwd / "runs"))
    assert not escaped, f"name={name}: wrote outside runs/: {escaped}"


def test_goodput_negative_slo_is_refused(worker, scratch):
    """``goodput --slo ttft_p90=-1`` exits 2 naming the SLO (was accepted silently)."""
    outcome = cli(worker, scratch, "goodput", "tiny.yaml", "--slo", "ttft_p90=-1", "-j", "1", "-o", str(scratch / "goodput"), timeout=60)
    assert_refused(outcome, "goodput --slo ttft_p90=-1", "ttft", "slo")


def test_place_negative_budget_is_refused(worker, scratch):
    """``place --budget-dollars-per-hour -5`` exits 2 naming the budget (was accepted silently)."""
    outcome = cli(worker, scratch, "place", "tiny.yaml", "--grid", "cluster.pools.0.count=1,2", "--slo", "ttft_p90=1", "--budget-dollars-per-hour", "-5", "-j", "1", "-o", str(scratch / "place"), timeout=60)
    assert_refused(outcome, "place --budget-dollars-per-hour -5", "budget")


def test_report_on_truncated_points_parquet_is_clean(worker, scratch):
    """``report`` on a sweep whose points.parquet is truncated exits 2 (was a polars ComputeError)."""
    sweep = scratch / "sweep"
    sweep.mkdir(exist_ok=True)
    pl.DataFrame({"id": ["a", "b"], "requests_per_s": [1.0, 2.0]}).write_parquet(sweep / "points.parquet")
    data = (sweep / "points.parquet").read_bytes()
    (sweep / "points.parquet").write_bytes(data[: len(data) // 2])
    outcome = cli(worker, scratch, "report", str(sweep), "-o", str(scratch / "report.html"))
    assert_clean_cli(outcome, "truncated points.parquet")


def test_output_to_dev_null_is_clean(worker, scratch):
    """``run -o /dev/null`` exits 2 with a message (was FileExistsError)."""
    assert_clean_cli(cli(worker, scratch, "run", "tiny.yaml", "-o", "/dev/null"), "-o /dev/null")


@pytest.mark.parametrize("offload", [["--offload", "tape"], ["--offload", "flash", "--offload-set", "storage=1e9"], ["--offload", "dram", "--offload-set", "layer_fraction=2"], ["--offload", "dram", "--offload-set", "read_chunk_kb=inf"]])
def test_estimate_bad_offload_is_refused(worker, scratch, offload):
    """``estimate --offload tape`` (or a non-catalogue storage) exits 2 (was a pydantic ValidationError traceback)."""
    outcome = cli(worker, scratch, "estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--prefill", "16", *offload)
    assert_refused(outcome, " ".join(offload), "offload", "storage", "tier", "layer_fraction", "read_chunk_kb")


def test_estimate_tp_beyond_int64_is_refused(worker, scratch):
    """``estimate --tp 2**63`` exits 2 naming --tp (was OverflowError: Python int too large to convert to C long)."""
    outcome = cli(worker, scratch, "estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--prefill", "16", "--tp", "9223372036854775808")
    assert_refused(outcome, "--tp 2**63", "tp")


# --- a handful as real processes: the console entry point, exit codes and stderr ------------------

PROCESS_CASES = {
    "requests 1e29": ["--set", "workload.requests=1e29"],
    "swap_space_gb .inf": ["--set", "cluster.pools.0.scheduler={kind: vllm, preemption_mode: swap, swap_space_gb: .inf}"],
    "all-NUL trace": ["--set", "workload={arrivals: {kind: trace, format: azure, path: nul.csv}}"],
    "valid run": [],
}


@pytest.mark.parametrize("case", sorted(PROCESS_CASES))
def test_cli_process_exits_2_or_writes_valid_results(scratch, case):
    """``python -m fleetwise run`` under a memory limit and a timeout: exit 2 without a traceback, or
    exit 0 with valid results."""
    (scratch / "nul.csv").write_bytes(b"\x00" * 65536)
    out = scratch / f"proc-{case.replace(' ', '-')}"
    outcome = run_cli_process(["run", "tiny.yaml", *PROCESS_CASES[case], "-o", str(out)], cwd=scratch, timeout=60, check_dir=out)
    assert outcome["outcome"] != "hang", f"{case}: hung"
    assert_clean_cli(outcome, case)
    if case == "valid run":
        assert outcome["exit_code"] == 0, outcome["stderr"][-1500:]
