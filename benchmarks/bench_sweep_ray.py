"""The large sweep's grid, smaller, on a local Ray cluster of several nodes: one and two worker CPUs.

Used by ``bench_sweep.py`` (``--only ray``). For each size it starts a cluster with
``ray.cluster_utils.Cluster``: a head node with no CPUs (it runs Ray's services; no task can be
placed on it) and 1 or 2 worker nodes of one CPU each, each its own raylet with its own worker
processes. ``fleetwise sweep --ray ADDRESS`` runs in a separate process as the cluster's driver.

What it shows:

* the multi-node path: every point ran on a worker node (the head has no CPU), and the processes
  seen running the task (``ray::simulate_point_files``: children of a node's raylet, sampled from
  /proc) are counted per node with their CPU time;
* nothing is read from a shared file system: the driver ships each point's validated scenario and
  writes the files each task sends back; the scenario file (a copy in a temporary directory) is
  deleted once the first point is saved, and the sweep still finishes;
* throughput against the number of one-CPU worker nodes (``--ray-nodes``, default 1 and 2; on a
  machine of C cores that also runs the driver and Ray's services, at best about C - 2 nodes
  scale).

Every Ray process started here is stopped (``Cluster.shutdown``), and ``ps`` is checked for leftovers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from bench_sweep_large import COUNTS, RATES, REPO, _cpu_s

TASK_TITLE = "ray::simulate_point_files"
"""The process title of a Ray worker running a sweep point."""


def _ray_pids() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process whose command line mentions ray."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    procs = {}
    for line in out.splitlines():
        pid, ppid, args = line.strip().split(None, 2) + [""] * (3 - len(line.strip().split(None, 2)))
        if "ray" in args and ("ray::" in args or "/ray/" in args or "raylet" in args or "gcs_server" in args):
            procs[int(pid)] = (int(ppid), args)
    return procs


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def run_on_cluster(worker_nodes: int, seeds: int, requests: int, extra: tuple[str, ...] = ()) -> dict:
    """Starts a head (0 CPUs) and ``worker_nodes`` nodes of 1 CPU, runs the sweep on it, stops it."""
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="fleetwise-sweep-ray-"))
    scenario = work / "quickstart.yaml"
    shutil.copy(REPO / "scenarios" / "quickstart.yaml", scenario)
    out = work / "sw"
    before = set(_ray_pids())
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0}, shutdown_at_exit=True)
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(worker_nodes)]
        cluster.wait_for_nodes()
        raylet_of = {}
        for i, node in enumerate(nodes):
            for info in node.all_processes.get("raylet", []):
                raylet_of[info.process.pid] = f"worker node {i + 1}"
        for info in cluster.head_node.all_processes.get("raylet", []):
            raylet_of[info.process.pid] = "head"
        cmd = [sys.executable, "-m", "fleetwise", "sweep", str(scenario),
               "--grid", "workload.arrivals.rate=" + ",".join(map(str, RATES)), "--grid", "cluster.pools.0.count=" + ",".join(map(str, COUNTS)),
               "--grid", "seed=" + ",".join(str(s) for s in range(1, seeds + 1)), "--set", f"workload.requests={requests}",
               "-o", str(out), "--ray", cluster.address, *extra]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: dict[int, str] = {}
        busy: dict[str, int] = {}
        cpu: dict[int, float] = {}
        first_saved = None
        while proc.poll() is None:
            for raylet, node in raylet_of.items():  # a node's worker processes are its raylet's children
                for pid in _children(raylet):
                    if _title(pid).startswith(TASK_TITLE):
                        seen[pid] = node
                        busy[node] = busy.get(node, 0) + 1
                    if pid in seen:
                        cpu[pid] = max(cpu.get(pid, 0.0), _cpu_s(pid))
            if first_saved is None and (out / "rows").is_dir() and any((out / "rows").glob("*.parquet")):
                first_saved = time.perf_counter() - t0
                scenario.unlink()  # from here on nothing may read it
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"sweep on Ray failed ({proc.returncode}): {stderr[-3000:]}")
        pts = pl.read_parquet(out / "points.parquet")
        kept = sum(1 for _ in (out / "points").glob("*/requests.parquet"))
    finally:
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    time.sleep(2)
    left = {pid: args for pid, (_, args) in _ray_pids().items() if pid not in before}
    n = len(RATES) * len(COUNTS) * seeds
    by_node: dict[str, int] = {}
    for where in seen.values():
        by_node[where] = by_node.get(where, 0) + 1
    return {"worker_nodes": worker_nodes, "worker_cpus": worker_nodes, "points": n, "wall_seconds": wall, "points_per_minute": n / wall * 60,
            "rows_in_points_parquet": pts.height, "points_with_request_tables": kept, "scenario_deleted_after_s": first_saved,
            "task_processes_seen_by_node": by_node, "busy_samples_by_node": busy,
            "task_process_cpu_s_by_node": {node: sum(c for p, c in cpu.items() if seen[p] == node) for node in set(seen.values())}, "ray_processes_left": left, "stdout_tail": stdout.strip().splitlines()[-1]}


def _cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo ("unknown" where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def ray_cluster(seeds: int, requests: int, node_counts: tuple[int, ...] = (1, 2)) -> dict:
    """The sweep (summaries only) on each count of one-CPU worker nodes, then once more keeping the
    per-request tables on the largest; ``speedup_vs_1`` is the 1-node wall time over each run's."""
    import ray

    res = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "ray": ray.__version__, "seeds": seeds,
           "requests_per_point": requests, "load_average_before": os.getloadavg()[0], "cores": os.cpu_count(),
           "cpu_model": _cpu_model(), "runs": []}
    for nodes, keep in [(n, "--no-requests") for n in node_counts] + [(max(node_counts), "--requests")]:
        res["runs"].append(run_on_cluster(nodes, seeds, requests, (keep,)))
        # Each run as it ends, so that a run cut short by a time limit keeps the ones before it.
        print("ray run: " + json.dumps({k: v for k, v in res["runs"][-1].items() if k in ("worker_nodes", "points", "wall_seconds", "points_per_minute", "scenario_deleted_after_s", "rows_in_points_parquet")}), flush=True)
    one = next((r["wall_seconds"] for r in res["runs"] if r["worker_nodes"] == 1), None)
    res["speedup_vs_1"] = {str(r["worker_nodes"]): one / r["wall_seconds"] for r in res["runs"][:len(node_counts)]} if one else {}
    return res


def ray_md(res: dict) -> str:
    """The Ray part of sweep.md."""
    nodes = ",".join(str(r["worker_nodes"]) for r in res["runs"][:-1])
    machine = f"{res['cores']} cores, {res['cpu_model']}" if "cores" in res else "2 cores"
    lines = [f"# The sweep on a Ray cluster of several nodes\n\nMeasured {res['date']} on a machine of {machine} (Ray {res['ray']}; load average "
             f"{res['load_average_before']:.1f} when it started), `python benchmarks/bench_sweep.py --only ray --ray-seeds {res['seeds']} --ray-nodes {nodes}`: "
             f"the large sweep's grid with {res['seeds']} seeds ({res['runs'][0]['points']} points of {res['requests_per_point']:,} requests) "
             "run by `fleetwise sweep --ray ADDRESS` on a local multi-node cluster (`ray.cluster_utils.Cluster`): a head node with "
             "0 CPUs, so that no task can run on it, and one-CPU worker nodes, each with its own raylet and worker processes. The "
             "scenario file was deleted once the first point was saved (the driver ships each point's validated scenario; tasks "
             "send their files back and the driver writes them), and every sweep still finished.\n",
             "| worker nodes x 1 CPU | keeps | wall time | points per minute | rows in points.parquet | worker processes seen running points, by node (sampled every 0.2 s from /proc) | Ray processes left after shutdown |",
             "|---:|---|---:|---:|---:|---|---:|"]
    for r in res["runs"]:
        seen = ", ".join(f"{k}: {v} process(es), busy in {r['busy_samples_by_node'].get(k, 0)} samples, {r['task_process_cpu_s_by_node'].get(k, 0):.0f} s CPU"
                         for k, v in sorted(r["task_processes_seen_by_node"].items())) or "-"
        keeps = "per-request tables" if r["points_with_request_tables"] else "summaries"
        lines.append(f"| {r['worker_nodes']} | {keeps} | {r['wall_seconds']:.1f} s | {r['points_per_minute']:.0f} | {r['rows_in_points_parquet']} | {seen} | {len(r['ray_processes_left'])} |")
    speedups = res.get("speedup_vs_1") or ({"2": res["speedup_2_vs_1"]} if "speedup_2_vs_1" in res else {})
    lines += ["", "Points per minute against one worker node: " + ", ".join(f"{n} nodes {s:.2f}x" for n, s in speedups.items())
              + f" (the same machine's {machine.split(',')[0]} also run the driver, Ray's head services and one raylet per node).\n"]
    return "\n".join(lines)
