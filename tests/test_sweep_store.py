"""The sweep store's bookkeeping: recording a point touches only that point's files (so a sweep's
bookkeeping grows linearly, not quadratically), ``points.parquet`` is built once and does not depend
on finishing order, and an interrupted sweep resumes to the very table an uninterrupted one writes."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from fleetwise.sweep.grid import expand, parse_grid
from fleetwise.sweep.point import ROW_METRICS
from fleetwise.sweep.runner import run_points
from fleetwise.sweep.store import SweepStore, write_row

from conftest import small_scenario


def _row(i: int) -> dict:
    row = {"point": f"p{i:05d}", "label": "all", "rate": float(i), "workload.arrivals.rate": float(i)}
    row.update((m, i / 7.0) for m in ROW_METRICS)
    row["slo_attainment"] = None
    return row


class _FileCounter:
    """Counts parquet reads and writes and directory listings (a counting fake around polars and pathlib)."""

    def __init__(self, monkeypatch):
        self.reads = self.writes = self.listings = 0
        read, write, glob = pl.read_parquet, pl.DataFrame.write_parquet, Path.glob

        def counted_read(*a, **k):
            self.reads += 1
            return read(*a, **k)

        def counted_write(df, *a, **k):
            self.writes += 1
            return write(df, *a, **k)

        def counted_glob(path, *a, **k):
            self.listings += 1
            return glob(path, *a, **k)

        monkeypatch.setattr(pl, "read_parquet", counted_read)
        monkeypatch.setattr(pl.DataFrame, "write_parquet", counted_write)
        monkeypatch.setattr(Path, "glob", counted_glob)

    def reset(self) -> None:
        self.reads = self.writes = self.listings = 0


def test_recording_a_point_reads_and_rewrites_nothing_already_saved(tmp_path, monkeypatch):
    store = SweepStore(tmp_path / "sw")
    for i in range(300):
        write_row(store.dir, _row(i))
    count = _FileCounter(monkeypatch)
    for i in range(300, 320):
        if i % 2:
            write_row(store.dir, _row(i))  # as a worker does before the driver records the point
            count.reset()
            store.add(_row(i))
            assert (count.reads, count.writes, count.listings) == (0, 0, 0)
        else:
            count.reset()
            store.add(_row(i))  # a serial sweep: the store writes the row itself, and only it
            assert (count.reads, count.writes, count.listings) == (0, 1, 0)
    assert not (store.dir / "points.parquet").exists(), "the table is built at the end, not per point"
    count.reset()
    frame = store.merge()
    assert count.reads == 320 and count.writes == 1  # every row file once, one table
    assert frame.height == 320 and frame["point"].to_list() == sorted(frame["point"].to_list())
    count.reset()
    store.merge()
    assert count.reads == 0, "row files already read are not read again"
    store.close()


def test_the_table_does_not_depend_on_the_order_points_finished_in(tmp_path):
    rows = [_row(i) for i in range(40)]
    tables = []
    for name, order in (("forward", rows), ("backward", rows[::-1])):
        with SweepStore(tmp_path / name) as store:
            for r in order:
                store.add(r)
            store.merge()
        tables.append((tmp_path / name / "points.parquet").read_bytes())
    assert tables[0] == tables[1]


def test_an_interrupted_sweep_resumes_to_the_table_of_an_uninterrupted_one(tmp_path, monkeypatch):
    sc = small_scenario()
    sc["workload"]["requests"] = 150
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(sc))
    points = expand(parse_grid(["workload.arrivals.rate=3,5,7,9,11"]))
    grid = ["workload.arrivals.rate"]
    with SweepStore(tmp_path / "whole") as whole:
        run_points(str(path), [], points, whole, grid, quiet=True)
        whole.merge()

    recorded = []
    add = SweepStore.add

    def add_then_interrupt(self, row):
        add(self, row)
        recorded.append(row["point"])
        if len(recorded) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(SweepStore, "add", add_then_interrupt)
    with SweepStore(tmp_path / "cut") as cut, pytest.raises(KeyboardInterrupt):
        run_points(str(path), [], points, cut, grid, quiet=True)
    monkeypatch.setattr(SweepStore, "add", add)
    with SweepStore(tmp_path / "cut") as cut:
        assert cut.done() == set(recorded), "every recorded point survives the interruption"
        stamps = {p: (cut.rows / f"{p}.parquet").stat().st_mtime_ns for p in recorded}
        new = run_points(str(path), [], points, cut, grid, quiet=True)
        assert sorted(r["point"] for r in new) == sorted(p.id for p in points if p.id not in recorded)
        assert {p: (cut.rows / f"{p}.parquet").stat().st_mtime_ns for p in recorded} == stamps
        cut.merge()
    assert (tmp_path / "cut" / "points.parquet").read_bytes() == (tmp_path / "whole" / "points.parquet").read_bytes()


def test_the_sweep_prints_at_most_its_table_limit_and_says_where_the_rest_is(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import fleetwise.cli.sweeps as sweeps
    from fleetwise.cli import app

    sc = small_scenario()
    sc["workload"]["requests"] = 50
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(sc))
    monkeypatch.setattr(sweeps, "SWEEP_TABLE_ROWS", 2)
    r = CliRunner().invoke(app, ["sweep", str(path), "--grid", "workload.arrivals.rate=3,5,7", "-o", str(tmp_path / "sw"), "-j", "1"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "the first 2 of 3 points; all of them in" in r.output and "points.parquet" in r.output
    printed = [line for line in r.output.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in printed] == ["3", "5"]
    assert pl.read_parquet(tmp_path / "sw" / "points.parquet").height == 3
