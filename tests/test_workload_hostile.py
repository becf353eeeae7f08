"""The ``workload`` section on hostile input: arrival rates at the edge of floating point, length
distributions without a cap, files whose few bytes decode to gigabytes, workloads too large for
memory. Each must be a clear error naming the field (exit 2, no traceback) or a correct run, never
a traceback, a core error about an internal array or a wrong number with exit 0."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from fleetwise.config.limits import MAX_TOKENS
from fleetwise.errors import ConfigError, TraceError
from fleetwise.workload import WorkloadConfig, build_workload
from fleetwise.workload import build as build_module
from fleetwise.workload import native
from fleetwise.workload.arrivals import gamma_arrivals, onoff_arrivals, ramp_arrivals
from fleetwise.workload.config import LognormalLengths, RampArrivals
from fleetwise.workload.lengths import sample_lengths

from conftest import REPO, run_cli, small_scenario

TRACES = REPO / "traces"


def _scenario(tmp_path: Path, workload: dict, requests: int | None = 40) -> Path:
    """A one-instance scenario file with ``workload`` (``requests`` set unless None)."""
    sc = small_scenario()
    sc["cluster"]["pools"][0]["count"] = 1
    sc["workload"] = {**workload, **({"requests": requests} if requests is not None else {})}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(sc, sort_keys=False))
    return path


def _clean_error(r, *needles: str) -> None:
    """Exit 2, one ``error:`` line holding every needle, no traceback or Rust panic."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout and "panicked" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- arrivals: rates at the edge of floating point ------------------------------------------------


def test_gamma_with_a_rate_that_underflows_is_a_config_error():
    # rate * shape (5e-324 * 1e-6) underflowed to 0: ZeroDivisionError, a traceback with exit 1.
    with pytest.raises(ConfigError, match=r"^workload\.arrivals: the generated arrival times reach inf s, .* the rate is far too low for 5 requests$"):
        gamma_arrivals(5, 5e-324, 1000.0, np.random.default_rng(1))


def test_gamma_with_a_tiny_rate_exits_2_from_the_cli(tmp_path):
    path = _scenario(tmp_path, {"arrivals": {"kind": "gamma", "rate": 5e-324, "cv": 1000},
                                "lengths": {"kind": "constant", "prompt": 100, "output": 10}})
    r = run_cli("run", str(path), "-o", str(tmp_path / "out"))
    _clean_error(r, "scenario.yaml: workload.arrivals:", "the rate is far too low for 40 requests")
    assert "ZeroDivisionError" not in r.stderr


def test_gamma_arrivals_are_unchanged_for_ordinary_rates():
    # The guard must not move a single nanosecond of an ordinary gamma process.
    rng = np.random.default_rng([7, 1])
    shape = 1.0 / 2.5**2
    expected = np.rint(np.cumsum(rng.gamma(shape=shape, scale=1e9 / (3.0 * shape), size=200))).astype(np.int64)
    assert np.array_equal(gamma_arrivals(200, 3.0, 2.5, np.random.default_rng([7, 1])), expected)


def test_onoff_overflow_is_an_error_naming_on_s_without_a_runtime_warning():
    # on_s = 1e-300 made floor(t / on) * off overflow: "RuntimeWarning: overflow encountered in
    # multiply" was printed, then an error blaming the rate alone.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match=r"reach inf s, .*: the rate is far too low, or on_s far too short for off_s, for 20 requests$"):
            onoff_arrivals(20, 10.0, 1e-300, 1.0, np.random.default_rng(2))


def test_ramp_overflow_is_an_error_naming_end_rate_without_a_runtime_warning():
    cfg = RampArrivals(start_rate=0, end_rate=1e-300, duration_s=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match=r"reach inf s, .*: end_rate is far too low for 20 requests$"):
            ramp_arrivals(20, cfg, np.random.default_rng(3))


# --- lengths: an uncapped log-normal --------------------------------------------------------------


def test_uncapped_lognormal_is_clipped_at_max_tokens():
    # Samples were clipped at 2**53, which the core (32-bit token counts) refused.
    cfg = LognormalLengths(prompt_median=1e8, prompt_sigma=20, output_median=1e8, output_sigma=20)
    prompt, output = sample_lengths(cfg, 2000, np.random.default_rng(4))
    assert prompt.max() == MAX_TOKENS and output.max() == MAX_TOKENS
    assert prompt.min() >= 1 and output.min() >= 1


def test_uncapped_lognormal_runs_and_rejects_the_long_requests(tmp_path):
    # Used to exit 2 with "prompt_tokens[25] = 9007199254740992 is out of range" (no field named).
    lengths = {"kind": "lognormal", "prompt_median": 0.0001, "prompt_sigma": 20, "output_median": 10, "output_sigma": 20}
    path = _scenario(tmp_path, {"arrivals": {"kind": "poisson", "rate": 16}, "lengths": lengths}, requests=50)
    r = run_cli("run", str(path), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "out of range" not in r.stderr
    table = pl.read_parquet(tmp_path / "out" / "requests.parquet")
    assert table["prompt_tokens"].max() <= MAX_TOKENS and table["output_tokens"].max() <= MAX_TOKENS
    too_long = table.filter(pl.col("prompt_tokens") + pl.col("output_tokens") > 8192)
    assert too_long.height > 0 and (too_long["status"] == "rejected").all()


def test_max_total_tokens_below_every_row_names_the_field_and_the_minimum(tmp_path):
    lengths = {"kind": "file", "path": str(TRACES / "chat-lengths.csv"), "max_total_tokens": 2}
    cfg = WorkloadConfig.model_validate({"arrivals": {"kind": "poisson", "rate": 1}, "lengths": lengths, "requests": 5})
    with pytest.raises(ConfigError, match=r"^workload\.lengths\.max_total_tokens: no request of .*chat-lengths\.csv has prompt \+ output tokens <= 2 \(the shortest has 152\); allowed: 152 or more$"):
        build_workload(cfg, 1)


# --- prefixes on a trace with its own hashes ------------------------------------------------------


def test_prefixes_on_a_trace_with_hash_ids_name_the_field():
    cfg = WorkloadConfig.model_validate({
        "arrivals": {"kind": "trace", "format": "mooncake", "path": str(TRACES / "sample-mooncake.jsonl")},
        "prefixes": {"groups": 2, "prefix_tokens": 64, "fraction": 1},
    })
    with pytest.raises(ConfigError, match=r"^workload\.prefixes: prefixes cannot be added to the trace .*sample-mooncake\.jsonl: it has its own hash_ids; remove workload\.prefixes$"):
        build_workload(cfg, 1)


# --- running out of memory ------------------------------------------------------------------------


def test_memory_error_while_building_names_workload_requests(monkeypatch):
    # requests near MAX_REQUESTS on a small machine: numpy's MemoryError came out as a traceback.
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 763. MiB for an array")

    monkeypatch.setattr(build_module, "sample_lengths", no_memory)
    cfg = WorkloadConfig.model_validate({"arrivals": {"kind": "poisson", "rate": 1}, "lengths": {"kind": "constant", "prompt": 10, "output": 5}, "requests": 123456})
    with pytest.raises(ConfigError, match=r"^workload\.requests: building 123,456 requests ran out of memory; lower workload\.requests$"):
        build_workload(cfg, 1)


def test_memory_error_while_replaying_a_trace_names_the_path(monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(build_module, "replay_frame", no_memory)
    trace = str(TRACES / "azure-sample.csv")
    cfg = WorkloadConfig.model_validate({"arrivals": {"kind": "trace", "path": trace}})
    with pytest.raises(ConfigError, match=r"^workload\.arrivals\.path: building the trace .*azure-sample\.csv ran out of memory; replay fewer of its rows"):
        build_workload(cfg, 1)


# --- native Parquet traces: only the columns used are read -------------------------------------------


def test_an_ignored_column_is_not_decoded(tmp_path):
    # Every column used to be read, then the unknown ones dropped.
    rows = 3
    frame = pl.DataFrame({"arrival_ns": np.arange(rows), "prompt_tokens": [5] * rows, "output_tokens": [2] * rows})
    frame = frame.with_columns(pl.Series("junk", [[1] * 200_000] * rows, dtype=pl.List(pl.Int64)))
    path = tmp_path / "junk.parquet"
    frame.write_parquet(path)
    loaded = native.load_parquet(path)
    assert loaded.columns == ["arrival_ns", "prompt_tokens", "output_tokens"]
    assert loaded["prompt_tokens"].to_list() == [5, 5, 5]


@pytest.mark.parametrize("data", [b"", b"PAR1", b"not parquet at all", b"PAR1\xff\xff\xff\x7fPAR1", b"PAR1\x19\xfc\x05\x00\x00\x00PAR1"])
def test_a_malformed_footer_is_left_to_the_reader(tmp_path, data):
    path = tmp_path / "bad.parquet"
    path.write_bytes(data)
    with pytest.raises(TraceError, match=r"bad\.parquet: not a readable Parquet file"):
        native.load_parquet(path)


# --- determinism ----------------------------------------------------------------------------------


def test_same_scenario_and_seed_write_identical_files(tmp_path):
    workload = {
        "arrivals": {"kind": "gamma", "rate": 15, "cv": 2.5},
        "lengths": {"kind": "lognormal", "prompt_median": 300, "prompt_sigma": 1, "output_median": 40, "output_sigma": 1, "output_max": 400},
        "sessions": {"turns_mean": 3, "think_time_s": 2},
        "prefixes": {"groups": 3, "prefix_tokens": 100, "fraction": 0.6},
    }
    path = _scenario(tmp_path, workload, requests=150)
    outputs = []
    for run in ("a", "b"):
        r = run_cli("run", str(path), "-o", str(tmp_path / run))
        assert r.returncode == 0, r.stderr[-2000:]
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / run).iterdir())})
    assert set(outputs[0]) >= {"requests.parquet", "instances.parquet", "summary.json"}
    assert outputs[0] == outputs[1]
