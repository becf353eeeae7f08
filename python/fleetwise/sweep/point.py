"""Running one sweep point: a scenario with overrides, simulated and written to its directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fleetwise.metrics.flatten import flatten_summary
from fleetwise.sweep.grid import Point
from fleetwise.sweep.scenarios import BaseScenario

SUMMARY_COLUMNS = ("ttft", "tpot", "e2e")
"""The latencies whose p50/p90/p99 a point's row holds."""

ROW_METRICS = ("finished", "rejected", "requests_per_s", "output_tokens_per_s",
               *(f"{m}_{q}" for m in SUMMARY_COLUMNS for q in ("p50", "p90", "p99")),
               "slo_attainment", "energy_joules_per_output_token", "dollars_per_million_output_tokens")
"""The flattened summary columns of a point's row, in order."""


def summary_row(point: Point, summary: dict, grid_paths: list[str]) -> dict:
    """One row of ``points.parquet``: the point's grid values and its flattened summary."""
    row: dict = {"point": point.id, "label": point.label, "rate": point.rate}
    values = dict(point.assignments)
    for path in grid_paths:
        v = values.get(path)
        # Numbers stay numbers (so rates sort numerically); anything else is text.
        row[path] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    flat = flatten_summary(summary)
    row.update((name, flat[name]) for name in ROW_METRICS)
    return row


def run_point(base: BaseScenario, point: Point, out_dir: str, grid_paths: list[str], write_requests: bool = True, record_iterations: bool = False) -> dict:
    """Simulates one point, saves its run directory and its row durably; returns its summary row.

    Runs in a worker process: everything it needs comes in its arguments (``base``, the sweep's
    parsed scenario, builds the point's). The run directory is written straight under a temporary
    name and renamed to ``points/<id>``; the row file (``rows/<id>.parquet``, what resuming keys on)
    comes last, so a point counts as finished only once all of it is on disk, whenever the process is
    interrupted.
    """
    from fleetwise.simulate import simulate
    from fleetwise.sweep.store import publish_dir, saving, temp_name, write_row

    result = simulate(base.load(point.overrides()), record_iterations=record_iterations)
    final = Path(out_dir) / "points" / point.id
    with saving(final):  # disk full: an error naming the point, not a traceback
        final.parent.mkdir(parents=True, exist_ok=True)
        d = temp_name(final)
        try:
            write_run_files(result, d, write_requests)
            (d / "point.json").write_bytes(point_json(point))
            publish_dir(d, final)
        finally:
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
        row = summary_row(point, result.summary, grid_paths)
        write_row(Path(out_dir), row)
    return row


def write_run_files(result, d: Path, write_requests: bool = True) -> None:
    """Writes a run directory's files into ``d`` (created): all that ``Result.write`` writes, or only
    ``summary.json`` without ``write_requests``."""
    if write_requests:
        result.write(d)
    else:
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(result.summary, indent=2, sort_keys=True) + "\n")


def point_json(point: Point) -> bytes:
    """The bytes of a point's ``point.json``: its id and assignments."""
    return (json.dumps({"id": point.id, "assignments": point.assignments}, default=str) + "\n").encode()


def simulate_run_files(scenario, write_requests: bool = True, record_iterations: bool = False) -> tuple[dict[str, bytes], dict]:
    """Simulates ``scenario`` (a loaded Scenario: it travels whole, so a remote worker needs none of
    the driver's files or working directory) and returns its run directory's files as bytes
    (``write_run_files``) and its summary: what a Ray task sends back to the driver."""
    import tempfile

    from fleetwise.simulate import simulate

    result = simulate(scenario, record_iterations=record_iterations)
    with tempfile.TemporaryDirectory(prefix="fleetwise-run-") as tmp:
        d = Path(tmp) / "run"
        write_run_files(result, d, write_requests)
        files = {f.name: f.read_bytes() for f in sorted(d.iterdir()) if f.is_file()}
    return files, result.summary


def simulate_point_files(scenario, point: Point, write_requests: bool = True, record_iterations: bool = False) -> tuple[dict[str, bytes], dict]:
    """``simulate_run_files`` of a sweep point, with its ``point.json`` (id and assignments) added."""
    files, summary = simulate_run_files(scenario, write_requests, record_iterations)
    files["point.json"] = point_json(point)
    return dict(sorted(files.items())), summary


def write_run_dir(final: Path, files: dict[str, bytes]) -> None:
    """Writes a run directory's files under a temporary name, flushes them and renames the
    directory to ``final`` (replacing a stale one), so ``final`` is never seen half written."""
    from fleetwise.sweep.store import publish_dir, temp_name

    final.parent.mkdir(parents=True, exist_ok=True)
    d = temp_name(final)
    try:
        d.mkdir()
        for name, data in files.items():
            (d / name).write_bytes(data)
        publish_dir(d, final)
    finally:
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)


def save_point(out_dir: Path, point: Point, files: dict[str, bytes], summary: dict, grid_paths: list[str]) -> dict:
    """Writes a finished point's files to ``out_dir/points/<id>`` (temporary name, then rename) and
    then its row; returns the row."""
    from fleetwise.sweep.store import saving, write_row

    with saving(out_dir / "points" / point.id):
        write_run_dir(out_dir / "points" / point.id, files)
        row = summary_row(point, summary, grid_paths)
        write_row(out_dir, row)
    return row
