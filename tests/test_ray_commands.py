"""``place``, ``compare`` and ``goodput`` on Ray: the same bytes as a local run, finished points kept
through Ctrl-C, and every process of the private local cluster gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli, small_scenario

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="follows processes through /proc (Linux)")

HANG_GUARD_S = 240
"""Only guards against a hang; nothing here asserts how fast anything is."""
GRID = ["cluster.pools.0.count=1,2"]
SLOS = {"ttft": 1.0, "tpot": 0.05}


def _scenario(tmp_path: Path, requests: int = 200) -> Path:
    sc = small_scenario()
    sc["workload"]["requests"] = requests
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _descendants(root: int) -> set[int]:
    """Every living process below ``root`` (children, their children, ...)."""
    parents = {int(d.name): _parent(int(d.name)) for d in Path("/proc").iterdir() if d.name.isdigit()}
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= frontier
    return {p for p in found if _alive(p)}


def _end(pids: set[int], what: str) -> None:
    """Waits for ``pids`` (processes this test started) to end; kills survivors and fails."""
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = {p for p in pids if _alive(p)}
    for p in survivors:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    assert not survivors, f"{what}: processes {sorted(survivors)} outlived the Ray cluster"


@pytest.fixture(scope="module")
def ray_local():
    """A private two-CPU Ray for this module, shut down at its end with every process it started."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'fleetwise[ray]'")
    before = _descendants(os.getpid())
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        started = _descendants(os.getpid()) - before
        ray.shutdown()
        _end(started, "ray.shutdown()")


def _files(d: Path) -> dict[str, bytes]:
    """Every file below ``d`` (the lock file aside: it holds the writer's pid) by relative path."""
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file() and f.name != "sweep.lock"}


def _no_local_simulation(monkeypatch) -> None:
    """Makes simulating in this process an error: on Ray, only the cluster's workers simulate."""
    def refuse(*a, **k):
        raise AssertionError("simulated in the driver instead of on Ray")

    monkeypatch.setattr("fleetwise.sweep.runner.run_point", refuse)
    monkeypatch.setattr(sys.modules["fleetwise.simulate"], "simulate", refuse)  # the package exports a function of that name


def test_place_on_ray_writes_the_same_bytes_as_local_workers(tmp_path, ray_local, monkeypatch):
    from fleetwise.sweep.grid import expand, parse_grid
    from fleetwise.sweep.placement import place

    sc = _scenario(tmp_path)
    points = expand(parse_grid(GRID))
    local = place(str(sc), [], points, tmp_path / "local", SLOS, 0.9, "goodput_per_gpu", low=1.0, tolerance=0.2, jobs=1)
    _no_local_simulation(monkeypatch)
    on_ray = place(str(sc), [], points, tmp_path / "ray", SLOS, 0.9, "goodput_per_gpu", low=1.0, tolerance=0.2, ray_address="local")
    assert on_ray == local
    assert len(local) == 2 and all(r["goodput"] > 1.0 for r in local)
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert a.keys() == b.keys() and a == b
    # Each layout's search saved its rates as sweep points (bisection and curve alike).
    for p in points:
        saved = list((tmp_path / "ray" / "points" / p.id / "rows").glob("*.parquet"))
        assert len(saved) >= 7 and (tmp_path / "ray" / "points" / p.id / "goodput.json").exists()


def test_compare_on_ray_prints_and_writes_what_a_local_compare_does(tmp_path, ray_local, monkeypatch):
    from typer.testing import CliRunner

    from fleetwise.cli import app

    sc = _scenario(tmp_path)
    args = ["compare", str(sc), "--slo", "ttft_p90=1", "--goodput",
            "--variant", "vllm: cluster.pools.0.scheduler={kind: vllm, max_num_seqs: 64}",
            "--variant", "sarathi: cluster.pools.0.scheduler={kind: sarathi-serve, token_budget: 256}"]
    runner = CliRunner()
    local = runner.invoke(app, [*args, "-o", str(tmp_path / "local")], env={"COLUMNS": "200"})
    assert local.exit_code == 0, local.output
    _no_local_simulation(monkeypatch)
    on_ray = runner.invoke(app, [*args, "-o", str(tmp_path / "ray"), "--ray", "local"], env={"COLUMNS": "200"})
    assert on_ray.exit_code == 0, on_ray.output
    table = lambda text: text.split("runs in ")[0].strip()  # a local run leaves its progress bars' blank lines
    assert table(on_ray.output) == table(local.output)
    assert "goodput (req/s)" in local.output and "SLO attainment" in local.output
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert a.keys() == b.keys() and a == b
    assert "vllm/requests.parquet" in a and "sarathi-goodput/goodput.json" in a


def test_ctrl_c_of_place_on_ray_keeps_finished_points_and_the_rerun_resumes_them(tmp_path, ray_local):
    from fleetwise.sweep.grid import expand, parse_grid
    from fleetwise.sweep.placement import place

    sc = _scenario(tmp_path, requests=3000)
    out = tmp_path / "pl"
    cmd = [sys.executable, "-m", "fleetwise", "place", str(sc), *(a for g in GRID for a in ("--grid", g)),
           "--slo", "ttft_p90=1", "--slo", "tpot_p90=0.05", "--ray", "local", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
                            env=dict(os.environ, COLUMNS="200"))
    started: set[int] = set()
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not list(out.glob("points/*/rows/*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
            started |= _descendants(proc.pid)
            time.sleep(0.1)
        started |= _descendants(proc.pid)
        if proc.poll() is not None:
            pytest.fail(f"place ended before it could be interrupted: {proc.communicate()[1]}")
        proc.send_signal(signal.SIGINT)  # the driver only, as a test; a terminal sends it to the group
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted: finished searches are in" in err and "Traceback" not in err
    _end(started, "place --ray local after Ctrl-C")
    saved = {f: f.stat().st_mtime_ns for f in out.glob("points/*/rows/*.parquet")}
    assert saved, "a finished point was saved before the interrupt"
    # The rerun (on the module's Ray) keeps every saved point and ends like a run never interrupted.
    points = expand(parse_grid(GRID))
    rows = place(str(sc), [], points, out, SLOS, 0.9, "goodput_per_gpu", ray_address="local")  # the command's defaults
    assert {f: f.stat().st_mtime_ns for f in saved} == saved, "finished points are not recomputed"
    assert not list(out.rglob(".*.tmp"))
    fresh = place(str(sc), [], points, tmp_path / "fresh", SLOS, 0.9, "goodput_per_gpu", jobs=1)
    assert rows == fresh
    assert json.loads((out / "placement.json").read_text()) == json.loads((tmp_path / "fresh" / "placement.json").read_text())


def test_a_bad_ray_address_is_a_clear_error_not_a_traceback(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'fleetwise[ray]'")
    sc = _scenario(tmp_path)
    r = run_cli("place", str(sc), "--grid", GRID[0], "--slo", "ttft_p90=1", "--ray", "no-such-address", "-o", str(tmp_path / "pl"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--ray no-such-address: cannot start or join Ray" in r.stderr and "'local'" in r.stderr
    # An address where nothing listens: ray.init waited there for minutes (a probe killed it at 100 s).
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    r = run_cli("place", str(sc), "--grid", GRID[0], "--slo", "ttft_p90=1", "--ray", f"127.0.0.1:{port}", "-o", str(tmp_path / "pl"))
    assert r.returncode == 2 and f"--ray 127.0.0.1:{port}: nothing accepts connections there" in r.stderr, r.stderr


def test_sweep_on_a_multi_node_cluster_runs_on_the_worker_node_and_writes_what_local_workers_do(tmp_path):
    """A head node with no CPUs and one worker node (its own raylet): every point must run on the
    worker node; the driver (a separate ``fleetwise sweep --ray ADDRESS`` process) ships each point's
    scenario and writes what the tasks send back, so the scenario file can go once the first point is
    saved; the files equal a local sweep's; every process of the cluster ends with it."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'fleetwise[ray]'")
    from ray.cluster_utils import Cluster

    sc = _scenario(tmp_path, requests=3000)  # points long enough to be seen running
    grid = ["--grid", "workload.arrivals.rate=4,8,16", "--grid", "cluster.pools.0.count=1,2"]
    local = run_cli("sweep", str(sc), *grid, "-o", str(tmp_path / "local"), "-j", "1")
    assert local.returncode == 0, local.stderr
    before = _descendants(os.getpid())
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0}, shutdown_at_exit=False)
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        raylets = {i.process.pid: name for name, node in (("head", cluster.head_node), ("worker", worker)) for i in node.all_processes["raylet"]}
        cmd = [sys.executable, "-m", "fleetwise", "sweep", str(sc), *grid, "-o", str(tmp_path / "ray"), "--ray", cluster.address]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, COLUMNS="200"))
        ran_on: set[str] = set()
        deadline = time.monotonic() + HANG_GUARD_S
        while proc.poll() is None and time.monotonic() < deadline:
            for raylet, name in raylets.items():  # the raylet starts its node's worker processes
                try:
                    workers = Path(f"/proc/{raylet}/task/{raylet}/children").read_text().split()
                except OSError:
                    continue
                for pid in workers:
                    try:
                        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    except OSError:
                        continue
                    if title.startswith("ray::simulate_point_files"):
                        ran_on.add(name)
            if sc.exists() and list((tmp_path / "ray" / "rows").glob("*.parquet")):
                sc.unlink()  # nothing may read the scenario file from here on
            time.sleep(0.02)
        out, err = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == 0, err
        assert "6 points computed" in out
        assert not sc.exists(), "the file was deleted while points were still running"
        assert ran_on == {"worker"}, f"points seen running on {ran_on or 'no node'}"
    finally:
        cluster.shutdown()
        _end(_descendants(os.getpid()) - before, "Cluster.shutdown()")
    assert (tmp_path / "ray" / "points.parquet").read_bytes() == (tmp_path / "local" / "points.parquet").read_bytes()
    for d in (tmp_path / "local" / "points").iterdir():
        for f in d.iterdir():
            assert (tmp_path / "ray" / "points" / d.name / f.name).read_bytes() == f.read_bytes(), f
