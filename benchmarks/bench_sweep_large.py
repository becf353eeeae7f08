"""A sweep of thousands of 20,000-request points in one command, and one interrupted and resumed.

Used by ``bench_sweep.py`` (``--only large`` and ``--only interrupt``). The grid is the quickstart
scenario (Llama-3-8B on H100s, vLLM batching) at 10 arrival rates (4 to 40 requests/s) x 4 instance
counts (1 to 4) x ``seeds`` seeds, 20,000 requests per point: 10,000 points with 250 seeds.

``large`` runs ``fleetwise sweep`` once and reports its wall time, the CPU time of the command and
its workers (per point), the driver's own CPU time and peak memory (read from /proc while it runs),
the workers' peak memory, points per minute, the sweep directory's size, and that every point is in
``points.parquet``. ``interrupt`` runs the same command (fewer seeds), sends it SIGTERM once some
points are saved, reruns it and sends SIGINT, then reruns it to the end: every run must exit as
documented, every saved point must survive, none may be computed twice (row files untouched), and the
last run must end with every point in ``points.parquet``.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RATES = [4 * (i + 1) for i in range(10)]
"""Arrival rates of the grid, requests/s."""
COUNTS = [1, 2, 3, 4]
"""Instance counts of the grid."""
POLL_S = 0.2
"""How often the driver's and workers' memory and CPU are read from /proc."""


def sweep_cmd(out: Path, seeds: int, requests: int, jobs: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The ``fleetwise sweep`` command of the grid with ``seeds`` seeds."""
    return [sys.executable, "-m", "fleetwise", "sweep", str(REPO / "scenarios" / "quickstart.yaml"),
            "--grid", "workload.arrivals.rate=" + ",".join(map(str, RATES)), "--grid", "cluster.pools.0.count=" + ",".join(map(str, COUNTS)),
            "--grid", "seed=" + ",".join(str(s) for s in range(1, seeds + 1)), "--set", f"workload.requests={requests}",
            "-o", str(out), "-j", str(jobs), *extra]


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _dir_bytes(d: Path) -> tuple[int, int]:
    """Bytes of the files under ``d`` and the disk space they take (blocks), both in bytes."""
    size = used = 0
    for f in d.rglob("*"):
        if f.is_file():
            st = f.stat()
            size += st.st_size
            used += st.st_blocks * 512
    return size, used


def large(seeds: int, requests: int, jobs: int, extra: tuple[str, ...] = ()) -> dict:
    """Runs the sweep once in a fresh directory and returns what it cost."""
    work = Path(tempfile.mkdtemp(prefix="fleetwise-sweep-large-"))
    out = work / "sw"
    cmd = sweep_cmd(out, seeds, requests, jobs, extra)
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver_hwm = driver_cpu = 0.0
    workers_hwm: dict[int, int] = {}
    loads = []
    try:
        while proc.poll() is None:
            driver_hwm = max(driver_hwm, _status_kib(proc.pid, "VmHWM"))
            driver_cpu = max(driver_cpu, _cpu_s(proc.pid))
            for c in _children(proc.pid):
                workers_hwm[c] = max(workers_hwm.get(c, 0), _status_kib(c, "VmHWM"))
            loads.append(os.getloadavg()[0])
            time.sleep(POLL_S)
        stdout, stderr = proc.communicate()
    except BaseException:
        proc.kill()
        raise
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}): {stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    pts = pl.read_parquet(out / "points.parquet")
    n = len(RATES) * len(COUNTS) * seeds
    size, used = _dir_bytes(out)
    kept = sum(1 for _ in (out / "points").glob("*/requests.parquet"))
    shutil.rmtree(work, ignore_errors=True)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(["fleetwise", *cmd[3:]]).replace(str(REPO) + "/", "").replace(str(out), "DIR"),
        "points": n, "seeds": seeds, "requests_per_point": requests, "jobs": jobs,
        "rows_in_points_parquet": pts.height, "distinct_points": pts["point"].n_unique(),
        "every_request_accounted": bool((pts["finished"] + pts["rejected"] == requests).all()),
        "points_with_request_tables": kept,
        "wall_seconds": wall, "points_per_minute": n / wall * 60, "cpu_seconds": cpu, "cpu_seconds_per_point": cpu / n,
        "driver_cpu_seconds": driver_cpu, "driver_peak_rss_mib": driver_hwm / 1024,
        "worker_peak_rss_mib": max(workers_hwm.values(), default=0) / 1024,
        "output_bytes": size, "disk_bytes": used,
        "load_average_before": load_before[0], "load_average_mean_during": sum(loads) / max(1, len(loads)),
        "stdout_tail": stdout.strip().splitlines()[-1] if stdout.strip() else "", "stderr": stderr.strip(),
    }


def _rows(out: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in (out / "rows").glob("*.parquet")} if (out / "rows").is_dir() else {}


def interrupt(seeds: int, requests: int, jobs: int, after_s: float = 20.0) -> dict:
    """SIGTERM, then SIGINT, then a run to the end, of one sweep; returns what each run saved."""
    work = Path(tempfile.mkdtemp(prefix="fleetwise-sweep-interrupt-"))
    out = work / "sw"
    cmd = sweep_cmd(out, seeds, requests, jobs)
    n = len(RATES) * len(COUNTS) * seeds
    runs = []
    kept_ok = True
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, None):
            before = _rows(out)
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, COLUMNS="200"))
            if sig is not None:
                deadline = time.monotonic() + after_s
                while proc.poll() is None and (time.monotonic() < deadline or len(_rows(out)) <= len(before)):
                    time.sleep(0.1)
                proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=600)
            rows = _rows(out)
            kept_ok &= all(rows.get(k) == v for k, v in before.items())  # nothing saved before was lost or redone
            table = pl.read_parquet(out / "points.parquet") if (out / "points.parquet").exists() else pl.DataFrame()
            last = (stdout.strip().splitlines() or [""])[-1] if sig is None else stderr.strip().splitlines()[-1]
            runs.append({"signal": None if sig is None else sig.name, "exit_code": proc.returncode, "seconds": time.perf_counter() - t0,
                         "saved_before": len(before), "saved_after": len(rows), "points_parquet_rows": table.height, "message": last})
        leftovers = [str(p.relative_to(out)) for p in out.rglob(".*.tmp")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "points": n, "seeds": seeds, "requests_per_point": requests,
            "jobs": jobs, "runs": runs, "saved_points_untouched": kept_ok, "temporary_files_left": leftovers,
            "computed_in_total": sum(r["saved_after"] - r["saved_before"] for r in runs)}


def _short(command: str) -> str:
    """``command`` with a long ``--grid`` list of consecutive integers written as ``1,2,...,N``."""
    import re

    def fold(m: re.Match) -> str:
        values = m.group(2).split(",")
        if len(values) > 12 and values == [str(i) for i in range(1, len(values) + 1)]:
            return f"{m.group(1)}=1,2,...,{len(values)}"
        return m.group(0)

    return re.sub(r"(\S+)=([\d,]+)", fold, command)


def large_md(res: dict) -> str:
    """The large-sweep part of sweep.md."""
    return (
        f"# A {res['points']:,}-point sweep in one command\n\n"
        f"Measured {res['date']} on {res['machine']} (shared: load average {res['load_average_before']:.1f} when it started, "
        f"{res['load_average_mean_during']:.1f} on average while it ran), `python benchmarks/bench_sweep.py --only large --seeds {res['seeds']}`:\n\n"
        f"```bash\n{_short(res['command'])}\n```\n\n"
        f"10 arrival rates (4 to 40 requests/s) x 4 instance counts (1 to 4) x {res['seeds']} seeds of the quickstart scenario, "
        f"{res['requests_per_point']:,} requests per point. Above 1,000 points `sweep` keeps each point's summary, not its "
        f"per-request table, unless given `--requests` (it said so: \"{res['stderr'].splitlines()[0] if res['stderr'] else ''}\").\n\n"
        f"| | |\n|---|---:|\n"
        f"| wall time (whole command) | {res['wall_seconds'] / 60:.1f} min ({res['wall_seconds']:.0f} s) |\n"
        f"| points per minute | {res['points_per_minute']:.0f} |\n"
        f"| simulated requests per second | {res['points'] * res['requests_per_point'] / res['wall_seconds']:,.0f} |\n"
        f"| CPU time per point (command and workers) | {res['cpu_seconds_per_point'] * 1e3:.0f} ms |\n"
        f"| of which the driver (validating every point, recording, merging) | {res['driver_cpu_seconds'] / res['points'] * 1e3:.1f} ms ({res['driver_cpu_seconds']:.0f} s in all) |\n"
        f"| driver's peak memory (VmHWM) | {res['driver_peak_rss_mib']:.0f} MiB |\n"
        f"| a worker's peak memory | {res['worker_peak_rss_mib']:.0f} MiB |\n"
        f"| sweep directory | {res['output_bytes'] / 2**20:.0f} MiB of files, {res['disk_bytes'] / 2**20:.0f} MiB on disk "
        f"({res['disk_bytes'] / res['points'] / 1024:.0f} KiB per point) |\n"
        f"| rows in `points.parquet` (distinct points) | {res['rows_in_points_parquet']:,} ({res['distinct_points']:,}) |\n"
        f"| every point's finished + rejected = its requests | {'yes' if res['every_request_accounted'] else 'NO'} |\n\n"
        f"It printed: `{res['stdout_tail']}`\n"
    )


def interrupt_md(res: dict) -> str:
    """The interrupted-sweep part of sweep.md."""
    lines = [f"# Interrupted and resumed\n\nThe same grid with {res['seeds']} seeds ({res['points']:,} points, `-j {res['jobs']}`, "
             f"`python benchmarks/bench_sweep.py --only interrupt`, {res['date']}): the command was sent SIGTERM once it had saved points, "
             "run again and sent SIGINT (Ctrl-C), then run again to the end.\n",
             "| run | exit code | saved before | saved after | rows in points.parquet | what it said |", "|---|---:|---:|---:|---:|---|"]
    for i, r in enumerate(res["runs"], 1):
        lines.append(f"| {i}: {r['signal'] or 'to the end'} | {r['exit_code']} | {r['saved_before']:,} | {r['saved_after']:,} | "
                     f"{r['points_parquet_rows']:,} | {r['message'].replace('|', '/')} |")
    lines += ["", f"Points computed over the three runs: {res['computed_in_total']:,} of {res['points']:,} (none twice); every row file "
              f"saved before a run was left untouched by it: {'yes' if res['saved_points_untouched'] else 'NO'}; temporary files left: "
              f"{len(res['temporary_files_left'])}. The test `tests/test_sweep_interrupts.py::"
              "test_ctrl_c_stops_workers_reports_the_true_count_and_the_rerun_computes_only_the_rest` checks the same for SIGINT "
              "and SIGTERM on 8 points.\n"]
    return "\n".join(lines)
