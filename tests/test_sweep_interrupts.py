"""Sweeps under interruption: kill -9 takes the workers along, Ctrl-C keeps and counts every finished
point, a rerun computes only what is missing, two sweeps never share a directory, damaged files are
named (report) or recomputed (sweep), and the worker pool never hangs on a dead worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from fleetwise.errors import ConfigError, SimulationError
from fleetwise.sweep.store import SweepStore
from fleetwise.sweep.workers import WorkerPool

from conftest import REPO, run_cli, small_scenario

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process state from /proc (Linux)")

HANG_GUARD_S = 120
"""Only guards against a hang; nothing here asserts how fast anything is."""


def _scenario(tmp_path: Path, requests: int) -> Path:
    sc = small_scenario()
    sc["workload"]["requests"] = requests
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def _sweep_cmd(sc: Path, out: Path, rates: str, jobs: int) -> list[str]:
    return [sys.executable, "-m", "fleetwise", "sweep", str(sc), "--grid", f"workload.arrivals.rate={rates}", "-o", str(out), "-j", str(jobs)]


def _start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, start_new_session=True)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as dead)."""
    s = _stat(pid)
    return s is not None and s[0] not in ("Z", "X")


def _children(pid: int) -> set[int]:
    kids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            s = _stat(int(d.name))
            if s is not None and int(s[1]) == pid:
                kids.add(int(d.name))
    return kids


def _wait_until(cond, what: str, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _kill_survivors(pids: set[int]) -> None:
    """Cleans up processes this test started that are still running (only multiprocessing workers)."""
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if _alive(pid) and b"multiprocessing" in cmd:
            os.kill(pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=HANG_GUARD_S)


def _rows(out: Path) -> int:
    return len(list((out / "rows").glob("*.parquet")))


def test_kill_9_of_a_sweep_takes_its_workers_with_it(tmp_path):
    sc = _scenario(tmp_path, requests=20000)
    out = tmp_path / "sw"
    proc = _start(_sweep_cmd(sc, out, "2,3,4,5,6,7", jobs=2))
    workers: set[int] = set()
    try:
        def two_workers() -> bool:
            workers.update(_children(proc.pid))
            return len([w for w in workers if _alive(w)]) >= 2

        _wait_until(two_workers, "the sweep's worker processes")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
        _wait_until(lambda: not any(_alive(w) for w in workers), "the workers to die with their parent", timeout=30)
        saved = _rows(out)
        time.sleep(1.0)
        assert _rows(out) == saved, "nothing writes points after the sweep was killed"
    finally:
        _kill_survivors(workers)
        _stop(proc)
    # What finished is kept: a rerun resumes from it and ends with every point.
    r = run_cli("sweep", str(sc), "--grid", "workload.arrivals.rate=2,3,4,5,6,7", "-o", str(out), "-j", "2")
    assert r.returncode == 0, r.stderr
    assert f"{6 - saved} points computed, {saved} resumed" in r.stdout
    assert pl.read_parquet(out / "points.parquet").height == 6


def test_pool_workers_die_with_a_killed_parent_even_mid_task(tmp_path):
    # The workers sleep ten minutes: only their death with the parent ends them within the bound.
    code = "import time; from fleetwise.sweep.workers import WorkerPool; next(WorkerPool(time.sleep, 2).imap_unordered([(600,), (600,)]))"
    proc = _start([sys.executable, "-c", code])
    workers: set[int] = set()
    try:
        def two_workers() -> bool:
            workers.update(w for w in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes())
            return len(workers) >= 2

        _wait_until(two_workers, "two pool workers")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
        _wait_until(lambda: not any(_alive(w) for w in workers), "the workers to die with their parent", timeout=30)
    finally:
        _kill_survivors(workers)
        _stop(proc)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_workers_reports_the_true_count_and_the_rerun_computes_only_the_rest(tmp_path, sig, code):
    sc = _scenario(tmp_path, requests=20000)
    out = tmp_path / "sw"
    cmd = _sweep_cmd(sc, out, "2,3,4,5,6,7,8,9", jobs=2)
    proc = _start(cmd)
    workers: set[int] = set()
    try:
        def one_saved() -> bool:
            workers.update(_children(proc.pid))
            return _rows(out) >= 1

        _wait_until(one_saved, "the first saved point")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == code, err
        assert "Traceback" not in err
        # Workers are reaped before the sweep exits; multiprocessing's resource tracker follows them.
        _wait_until(lambda: not any(_alive(w) for w in workers), "every worker to end with the sweep", timeout=30)
    finally:
        _kill_survivors(workers)
        _stop(proc)
    saved = _rows(out)
    assert 1 <= saved < 8
    assert f"interrupted: {saved} of 8 points saved" in err
    assert pl.read_parquet(out / "points.parquet").height == saved
    before = {f.name: f.stat().st_mtime_ns for f in (out / "rows").glob("*.parquet")}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    assert f"{8 - saved} points computed, {saved} resumed" in r.stdout
    assert pl.read_parquet(out / "points.parquet").height == 8
    assert {n: (out / "rows" / n).stat().st_mtime_ns for n in before} == before, "no saved point was computed again"
    assert not list(out.rglob(".*.tmp")), "no temporary files remain"


def test_a_second_sweep_into_a_busy_directory_is_refused_with_the_first_ones_pid(tmp_path):
    sc = _scenario(tmp_path, requests=20000)
    out = tmp_path / "sw"
    cmd = _sweep_cmd(sc, out, "2,3,4,5,6,7,8,9,10,11", jobs=1)
    first = _start(cmd)
    try:
        lock = out / "sweep.lock"
        _wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), "the first sweep to take the directory")
        if first.poll() is not None:
            pytest.skip("the first sweep finished before the second started")
        r = run_cli("sweep", str(sc), "--grid", "workload.arrivals.rate=2,3,4,5,6,7,8,9,10,11", "-o", str(out), "-j", "1")
        still_running = first.poll() is None
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=HANG_GUARD_S)
    finally:
        _stop(first)
    if not still_running:
        pytest.skip("the first sweep finished while the second started")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert str(out) in r.stderr and f"pid {first.pid}" in r.stderr and "another sweep" in r.stderr
    # Once the first is gone (its lock goes with it, however it ended) the directory is free again.
    with SweepStore(out) as store:
        assert store.dir == out


def test_store_lock_is_exclusive_and_released_on_close(tmp_path):
    a = SweepStore(tmp_path / "sw")
    with pytest.raises(ConfigError, match=rf"another sweep \(pid {os.getpid()}\)"):
        SweepStore(tmp_path / "sw")
    a.close()
    with SweepStore(tmp_path / "sw"):
        pass


def test_a_corrupt_row_is_recomputed_and_a_corrupt_points_file_is_named_by_report(tmp_path):
    sc = _scenario(tmp_path, requests=200)
    out = tmp_path / "sw"
    args = ("sweep", str(sc), "--grid", "workload.arrivals.rate=4,8,12", "-o", str(out), "-j", "1")
    assert run_cli(*args).returncode == 0
    row = sorted((out / "rows").glob("*.parquet"))[0]
    row.write_bytes(row.read_bytes()[:40])  # truncated
    (out / "rows" / ".abc.123.deadbeef.tmp").write_bytes(b"left by a killed worker")
    (out / "points.parquet").write_bytes((out / "points.parquet").read_bytes()[:100])
    html = tmp_path / "r.html"
    r = run_cli("report", str(out), "-o", str(html))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "points.parquet" in r.stderr and "truncated or corrupt" in r.stderr
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"{row.name} was unreadable" in r.stderr and f"recomputing point {row.stem}" in r.stderr
    assert "1 points computed, 2 resumed" in r.stdout
    assert not (out / "rows" / ".abc.123.deadbeef.tmp").exists()
    assert pl.read_parquet(out / "points.parquet").height == 3
    assert run_cli("report", str(out), "-o", str(html)).returncode == 0
    # A point whose run directory is gone is missing too.
    shutil.rmtree(out / "points" / row.stem)
    r = run_cli(*args)
    assert r.returncode == 0 and "1 points computed, 2 resumed" in r.stdout
    assert (out / "points" / row.stem / "summary.json").exists()
    # So is one whose summary.json was truncated (report could not read it).
    summary = out / "points" / row.stem / "summary.json"
    summary.write_bytes(summary.read_bytes()[:30])
    r = run_cli(*args)
    assert r.returncode == 0 and "1 points computed, 2 resumed" in r.stdout
    assert f"{summary} was unreadable" in r.stderr
    assert run_cli("report", str(out), "-o", str(html)).returncode == 0


def test_goodput_recomputes_a_point_whose_request_table_is_damaged(tmp_path, capsys):
    from fleetwise.sweep.goodput import _measure, _rate_point

    sc = _scenario(tmp_path, requests=200)
    with SweepStore(tmp_path / "gp") as store:
        first = _measure(str(sc), [], store, [4.0], {"ttft": 0.5}, 1, True, "goodput")
        req = store.dir / "points" / _rate_point(4.0).id / "requests.parquet"
        req.write_bytes(req.read_bytes()[:64])
        again = _measure(str(sc), [], store, [4.0], {"ttft": 0.5}, 1, True, "goodput")
    assert again == first
    assert "unreadable (truncated or corrupt): recomputing point" in capsys.readouterr().err
    assert pl.read_parquet(req).height == 200


def test_report_names_a_damaged_run_file(tmp_path):
    sc = _scenario(tmp_path, requests=200)
    run = tmp_path / "run"
    assert run_cli("run", str(sc), "-o", str(run)).returncode == 0
    (run / "requests.parquet").write_bytes(b"\0" * 4096)
    r = run_cli("report", str(run), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "requests.parquet" in r.stderr
    (run / "summary.json").write_text('{"scenario": "x", ')
    r = run_cli("report", str(run), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "summary.json" in r.stderr and "Traceback" not in r.stderr


def test_worker_pool_raises_a_task_error_and_names_a_dead_worker(tmp_path):
    with WorkerPool(int, 2) as pool:
        assert sorted(v for _, v in pool.imap_unordered([("1",), ("2",), ("3",)])) == [1, 2, 3]
    with WorkerPool(int, 2) as pool, pytest.raises(ValueError, match="invalid literal"):
        list(pool.imap_unordered([("1",), ("x",)]))
    with WorkerPool(os._exit, 1) as pool, pytest.raises(SimulationError, match=r"point B: its worker process died \(exit code 3\)"):
        list(pool.imap_unordered([(3,)], describe=lambda i: "point B"))
    assert not [p for p in pool.pids() if _alive(p)]
