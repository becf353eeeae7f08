"""Output paths: a file in the way, an unwritable directory or a path-like scenario name is a clear
error (exit 2, naming the path or the field), never a traceback, and nothing is written outside."""

from __future__ import annotations

import os

import pytest
import yaml

from conftest import run_cli, small_scenario


@pytest.fixture
def scenario(tmp_path):
    sc = small_scenario()
    sc["workload"]["requests"] = 200
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def _clean_exit_2(r, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.parametrize("command", [
    ["run"],
    ["sweep", "--grid", "workload.arrivals.rate=4"],
    ["goodput", "--slo", "ttft_p90=0.5"],
    ["compare", "--variant", "rr: cluster.router.kind=round-robin"],
    ["place", "--grid", "cluster.pools.0.count=1,2", "--slo", "ttft_p90=0.5"],
])
def test_dev_null_and_a_file_in_the_way_are_refused(scenario, tmp_path, command):
    cmd, *opts = command
    _clean_exit_2(run_cli(cmd, str(scenario), *opts, "-o", "/dev/null"), "/dev/null", "exists and is not a directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _clean_exit_2(run_cli(cmd, str(scenario), *opts, "-o", str(blocker / "sub")), str(blocker), "is in the way")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_directory_is_refused(scenario, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _clean_exit_2(run_cli("run", str(scenario), "-o", str(locked / "out")), str(locked), "not writable")
    finally:
        locked.chmod(0o700)


def test_report_output_must_be_a_writable_file_path(scenario, tmp_path):
    run = tmp_path / "run"
    assert run_cli("run", str(scenario), "-o", str(run)).returncode == 0
    _clean_exit_2(run_cli("report", str(run), "-o", str(tmp_path)), "is a directory")
    _clean_exit_2(run_cli("report", str(run), "-o", "/dev/null/r.html"), "/dev/null", "not a directory")


@pytest.mark.parametrize("name", ["../../escaped", "..", "a/b", "a\\b"])
def test_a_path_like_scenario_name_is_refused_naming_the_field(scenario, tmp_path, name):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    for cmd in (["run"], ["sweep", "--grid", "workload.arrivals.rate=4"]):
        r = run_cli(cmd[0], str(scenario), *cmd[1:], "--set", f"name={name}", cwd=work)
        _clean_exit_2(r, "name:", "plain file name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["sc.yaml", "work", "deep"]), "nothing was written"


def test_an_ordinary_name_still_names_the_default_directory(scenario, tmp_path):
    r = run_cli("run", str(scenario), "--set", "name=my run-1.2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "my run-1.2" / "summary.json").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no directory can be made")
def test_a_directory_that_cannot_be_made_is_refused_before_simulating(scenario):
    # access() says yes to root in /proc; the check makes (and removes) a directory there first.
    r = run_cli("run", str(scenario), "-o", "/proc/fleetwise-out")
    _clean_exit_2(r, "output path /proc/fleetwise-out: cannot create a directory in /proc")
    assert "requests finished" not in r.stdout  # nothing was simulated


def test_validate_and_calibrate_check_their_output_file_first(tmp_path):
    from conftest import REPO

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    log = REPO / "tests" / "data" / "vllm_bench_cpu_tiny_rate3.json"
    sc = REPO / "tests" / "data" / "vllm_cpu_tiny.yaml"
    r = run_cli("validate", str(sc), "--requests", str(log), "--json", str(blocker / "x.json"))
    _clean_exit_2(r, str(blocker), "with --json")
    assert "replayed requests finished" not in r.stdout
    r = run_cli("calibrate", "--requests", str(log), "--scenario", str(sc), "-o", str(tmp_path))
    _clean_exit_2(r, f"output file {tmp_path} is a directory")
    assert list(tmp_path.iterdir()) == [blocker]  # the checks left nothing behind


def test_an_empty_output_path_is_refused_not_the_current_directory(tmp_path, monkeypatch):
    import fleetwise
    from fleetwise.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    sc = small_scenario()
    sc["workload"]["requests"] = 20
    result = fleetwise.simulate(sc)
    with pytest.raises(ConfigError, match="output path is empty"):
        result.write("")
    assert list(tmp_path.iterdir()) == []
