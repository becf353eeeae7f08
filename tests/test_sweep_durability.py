"""What a sweep directory keeps apart and what its readers see after an interruption: a rerun never
resumes points of a changed scenario or a differently spelled grid, stray row files stay out of
``points.parquet``, ``report`` reads the points a killed sweep saved, a full disk is an error
naming the point (exit 2), and an interrupted ``compare`` leaves no earlier run beside new ones."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from fleetwise.errors import ConfigError

from conftest import run_cli, small_scenario


def _scenario(tmp_path: Path, **changes) -> Path:
    sc = small_scenario()
    sc["workload"]["requests"] = 50
    sc.update(changes)
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def _sweep(sc: Path, out: Path, rates: str = "4,8"):
    return run_cli("sweep", str(sc), "--grid", f"workload.arrivals.rate={rates}", "-o", str(out), "-j", "1")


def test_a_rerun_after_the_scenario_changed_is_refused_not_resumed(tmp_path):
    sc = _scenario(tmp_path)
    out = tmp_path / "sw"
    assert _sweep(sc, out).returncode == 0
    before = pl.read_parquet(out / "points.parquet")
    _scenario(tmp_path, seed=4)  # same path, different content: its points would be other numbers
    r = _sweep(sc, out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(out) in r.stderr and "scenario's content" in r.stderr
    assert pl.read_parquet(out / "points.parquet").equals(before)
    # Formatting and comments are not content: the sweep resumes.
    _scenario(tmp_path)
    sc.write_text("# the same scenario\n" + sc.read_text())
    r = _sweep(sc, out)
    assert r.returncode == 0 and "0 points computed, 2 resumed" in r.stdout
    # goodput keeps its evaluated rates the same way.
    gp = ("goodput", str(sc), "--slo", "ttft_p90=0.5", "-o", str(tmp_path / "gp"), "-j", "1")
    assert run_cli(*gp).returncode == 0
    _scenario(tmp_path, seed=4)
    r = run_cli(*gp)
    assert r.returncode == 2 and "scenario's content" in r.stderr and "Traceback" not in r.stderr


def test_a_rerun_after_a_file_the_scenario_names_changed_is_refused(tmp_path):
    # The fingerprint hashed the scenario's text only: after its trace (or engine profile, or
    # hf_config) changed, a rerun resumed the old points and printed the old numbers.
    trace = tmp_path / "trace.parquet"
    pl.DataFrame({"arrival_ns": [0, 10**8], "prompt_tokens": [64, 64], "output_tokens": [4, 4]}).write_parquet(trace)
    sc = _scenario(tmp_path, workload={"arrivals": {"kind": "trace", "format": "parquet", "path": "trace.parquet"}})
    out = tmp_path / "sw"
    grid = ("sweep", str(sc), "--grid", "seed=1,2", "-o", str(out), "-j", "1")
    assert run_cli(*grid).returncode == 0
    assert run_cli(*grid).returncode == 0  # unchanged: resumes
    pl.DataFrame({"arrival_ns": [0, 10**8], "prompt_tokens": [640, 640], "output_tokens": [4, 4]}).write_parquet(trace)
    r = run_cli(*grid)
    assert r.returncode == 2 and "or a file it names has changed" in r.stderr, r.stderr


def test_a_grid_value_spelled_differently_is_refused_and_stray_rows_stay_out_of_the_table(tmp_path):
    sc = _scenario(tmp_path)
    out = tmp_path / "sw"
    assert _sweep(sc, out).returncode == 0
    # 4.0 is another point id than 4: resuming would put rate 4 in the table twice.
    r = _sweep(sc, out, "4.0,8")
    assert r.returncode == 2 and "grid differs" in r.stderr and "Traceback" not in r.stderr
    # A row file of another sweep (copied in by hand) is not one of this sweep's points.
    other = tmp_path / "other"
    assert _sweep(sc, other, "16").returncode == 0
    for f in (other / "rows").glob("*.parquet"):
        shutil.copy(f, out / "rows" / f.name)
        shutil.copytree(other / "points" / f.stem, out / "points" / f.stem)
    r = _sweep(sc, out)
    assert r.returncode == 0 and "0 points computed, 2 resumed" in r.stdout
    table = pl.read_parquet(out / "points.parquet")
    assert sorted(table["rate"].to_list()) == [4.0, 8.0]


def test_a_damaged_manifest_or_a_file_in_place_of_a_directory_is_named(tmp_path):
    sc = _scenario(tmp_path)
    out = tmp_path / "sw"
    assert _sweep(sc, out).returncode == 0
    (out / "sweep.json").write_text("[1]\n")
    r = _sweep(sc, out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "sweep.json" in r.stderr and "JSON object" in r.stderr
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "points").write_text("not a directory")
    r = _sweep(sc, blocked)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(blocked / "points") in r.stderr


def test_report_reads_the_points_a_killed_sweep_saved(tmp_path):
    sc = _scenario(tmp_path)
    out = tmp_path / "sw"
    assert _sweep(sc, out, "4,8,12").returncode == 0
    html = tmp_path / "r.html"
    # kill -9 before the sweep's end: its rows are saved, points.parquet never built.
    (out / "points.parquet").unlink()
    r = run_cli("report", str(out), "-o", str(html))
    assert r.returncode == 0, r.stderr
    from fleetwise.report.load import load_inputs

    assert load_inputs([out]).sweeps[0].points.height == 3
    # A points.parquet older than the rows (from an earlier interrupted run) is out of date.
    rows = sorted((out / "rows").glob("*.parquet"))
    pl.read_parquet(rows[0]).write_parquet(out / "points.parquet")
    stamp = min(f.stat().st_mtime_ns for f in rows) - 10**9
    os.utime(out / "points.parquet", ns=(stamp, stamp))
    assert load_inputs([out]).sweeps[0].points.height == 3
    # A damaged row file is named, not read as a result.
    rows[1].write_bytes(rows[1].read_bytes()[:40])
    r = run_cli("report", str(out), "-o", str(html))
    assert r.returncode == 2 and "Traceback" not in r.stderr and rows[1].name in r.stderr


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     pl.exceptions.ComputeError("parquet: File out of specification: Invalid thrift: transport error")],
                         ids=["oserror", "polars"])
def test_a_full_disk_is_an_error_naming_the_point_and_keeps_what_was_saved(tmp_path, monkeypatch, failure):
    from fleetwise.config.load import load_scenario
    from fleetwise.simulate import simulate
    from fleetwise.sweep.grid import expand
    from fleetwise.sweep.runner import run_points
    from fleetwise.sweep.store import SweepStore

    sc = _scenario(tmp_path)
    points = expand([("workload.arrivals.rate", [4, 8])])
    with SweepStore(tmp_path / "sw") as store:
        run_points(str(sc), [], points[:1], store, ["workload.arrivals.rate"], quiet=True)

        def full(*args, **kwargs):
            raise failure

        monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
        monkeypatch.setattr(pl.LazyFrame, "sink_parquet", full)
        with pytest.raises(ConfigError, match=rf"points/{points[1].id}: cannot write .*run the same command again"):
            run_points(str(sc), [], points, store, ["workload.arrivals.rate"], quiet=True)
        assert store.done() == {points[0].id}
        with pytest.raises(ConfigError, match="cannot write the results"):
            simulate(load_scenario(sc)).write(tmp_path / "run")


def test_an_interrupted_compare_leaves_no_earlier_run_beside_its_new_ones(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fleetwise.cli import app

    module = sys.modules["fleetwise.simulate"]  # the package's ``simulate`` attribute is the function

    sc = _scenario(tmp_path)
    out = tmp_path / "cmp"
    args = ["compare", str(sc), "--variant", "rr: cluster.router.kind=round-robin",
            "--variant", "lot: cluster.router.kind=least-outstanding-tokens", "-o", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "lot" / "summary.json").exists()
    real, calls = module.simulate, []

    def ctrl_c_at_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, "simulate", ctrl_c_at_the_second)
    r = CliRunner().invoke(app, [*args, "--set", "seed=11"])
    assert r.exit_code == 130
    assert yaml.safe_load((out / "rr" / "summary.json").read_text())["seed"] == 11
    assert not (out / "lot" / "summary.json").exists(), "the first compare's run would be reported beside the second's"


def test_a_second_compare_into_the_same_directory_is_refused(tmp_path):
    # Two compares writing one directory would interleave their variants' runs: while one holds
    # the directory's lock, another is refused, naming the holder's pid.
    from fleetwise.sweep.store import lock_directory

    sc = _scenario(tmp_path)
    out = tmp_path / "cmp"
    out.mkdir()
    args = ("compare", str(sc), "--variant", "rr: cluster.router.kind=round-robin", "-o", str(out))
    held = lock_directory(out, ".compare.lock", "compare", "then run it again")
    try:
        r = run_cli(*args)
        assert r.returncode == 2 and f"another compare (pid {os.getpid()}) is writing to this directory" in r.stderr, r.stderr
        assert not (out / "rr").exists()
    finally:
        held.close()
    assert run_cli(*args).returncode == 0 and (out / "rr" / "summary.json").exists()


def test_compare_into_a_run_or_sweep_directory_is_refused(tmp_path):
    # compare -o an earlier run's directory nested its variants' runs inside that run (and report
    # of the directory then read the old run beside them); a sweep's directory likewise.
    sc = _scenario(tmp_path)
    run_dir = tmp_path / "run"
    assert run_cli("run", str(sc), "-o", str(run_dir)).returncode == 0
    r = run_cli("compare", str(sc), "--variant", "rr: cluster.router.kind=round-robin", "-o", str(run_dir))
    assert r.returncode == 2 and f"output directory {run_dir} holds a run (summary.json)" in r.stderr, r.stderr
    assert not (run_dir / "rr").exists()
    sweep_dir = tmp_path / "sw"
    assert _sweep(sc, sweep_dir).returncode == 0
    r = run_cli("compare", str(sc), "--variant", "rr: cluster.router.kind=round-robin", "-o", str(sweep_dir))
    assert r.returncode == 2 and "holds a sweep (sweep.json)" in r.stderr and not (sweep_dir / "rr").exists(), r.stderr


def test_compare_goodput_reruns_after_the_scenario_changed(tmp_path):
    # compare owns its variants' goodput searches: after the scenario file changed, the rerun
    # starts them afresh (the store refused the old search only after every variant had run again).
    sc = _scenario(tmp_path)
    out = tmp_path / "cmp"
    args = ("compare", str(sc), "--variant", "rr: cluster.router.kind=round-robin", "--slo", "ttft_p90=0.2", "--goodput", "-o", str(out))
    assert run_cli(*args).returncode == 0
    assert (out / "rr-goodput" / "sweep.json").exists()
    data = yaml.safe_load(sc.read_text())
    data["seed"] = data.get("seed", 0) + 1
    sc.write_text(yaml.safe_dump(data))
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
