"""Loading report inputs: run directories and sweep (or goodput) directories.

A run directory holds ``summary.json`` and usually ``requests.parquet``, ``instances.parquet`` and
(with ``--iterations``) ``iterations.parquet``. A sweep directory holds ``sweep.json``,
``points.parquet``, ``points/<id>/`` run directories and, after a goodput search, ``goodput.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from fleetwise.report.goodput_file import normalise_goodput

RATE_PATH = "workload.arrivals.rate"
MAX_DETAIL_RUNS = 8
"""At most this many runs get the per-run figures (time series, timelines) of a sweep."""

_SWEEP_FILES = ("sweep.json", "points.parquet", "goodput.json")
_KNOWN_FILES = ("summary.json", *_SWEEP_FILES)


@dataclass
class RunData:
    """One simulated run: its summary and whichever tables were written."""

    label: str
    path: Path
    summary: dict
    requests: pl.DataFrame | None = None
    instances: pl.DataFrame | None = None
    iterations: pl.DataFrame | None = None
    note: str = ""
    """How the run was chosen (for sweep points: the point and its rate)."""


@dataclass
class SweepData:
    """One sweep: its manifest, its points (labels already prefixed for the report) and goodput."""

    name: str
    path: Path
    manifest: dict
    points: pl.DataFrame
    goodput: dict[str, dict] = field(default_factory=dict)
    """Series label -> goodput result (slo, attainment_target, goodput_rate, goodput_per_gpu, gpus, curve)."""
    reference_rate: float | None = None
    """The rate whose points stand for each series in the per-run figures (None: no rate axis)."""


@dataclass
class ReportData:
    """Everything a report draws: runs (inputs, or chosen sweep points), sweeps and notes."""

    runs: list[RunData]
    sweeps: list[SweepData]
    notes: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        """Every series label that appears anywhere in the report, sorted."""
        out = {r.label for r in self.runs}
        for s in self.sweeps:
            if s.points.height:
                out.update(s.points["label"].to_list())
            out.update(s.goodput)
        return sorted(out)


def _read_parquet(path: Path) -> pl.DataFrame | None:
    """The table in ``path`` (None when absent); a damaged file is a ValueError naming it."""
    if not path.exists():
        return None
    try:
        return pl.read_parquet(path)
    except BaseException as e:  # polars raises ComputeError, OSError, even a PanicException for a damaged file
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        hint = (" (a sweep rebuilds it from rows/ when you run the same sweep command again)" if path.name == "points.parquet"
                else " (running the same sweep command again recomputes its point)" if path.parent.name == "rows" else "")
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable parquet file, truncated or corrupt ({reason[:200]}){hint}") from None


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; an unreadable or malformed file is a ValueError naming it."""
    # summary.json may hold NaN (json.dumps writes it); json.loads reads it back.
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file, truncated or corrupt ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


REQUEST_COLUMNS = {
    "request_id": "integer",
    "instance": "integer",
    "arrival_ns": "integer",
    "first_token_ns": "integer",
    "completion_ns": "integer",
    "status": "string",
}
"""The columns of requests.parquet every report reads, and their kind (the latency columns
``ttft_s``, ``tpot_s`` and ``e2e_s`` are drawn where present)."""

ITERATION_COLUMNS = {"instance": "integer", "start_ns": "integer", "end_ns": "integer"}
"""The columns of iterations.parquet the time-series figures read, and their kind."""
ITERATION_OPTIONAL = {"kv_blocks": "number", "waiting": "number", "running": "number"}
"""Columns of iterations.parquet drawn where present (KV use, queue lengths): numbers when present."""

INSTANCE_COLUMNS = {"instance": "integer"}
"""The columns of instances.parquet the report reads (its per-instance counters are drawn where present)."""
INSTANCE_OPTIONAL = {"num_blocks": "number"}

_KIND_TEST = {
    "integer": lambda t: t.is_integer(),
    "number": lambda t: t.is_numeric(),
    "string": lambda t: t in (pl.String, pl.Categorical),
}


def _check_columns(path: Path, table: pl.DataFrame | None, what: str, columns: dict[str, str], optional: dict[str, str] | None = None) -> pl.DataFrame | None:
    """``table`` when it has ``columns`` (name -> kind) and its ``optional`` columns that are present
    have their kind; a ValueError naming the file and the missing or mistyped columns when not."""
    if table is None:
        return None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        present = ", ".join(c[:40] for c in table.columns[:20]) + (", ..." if table.width > 20 else "")
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; not a fleetwise {what} table "
                         f"(columns present: {present or 'none'})")
    expected = {**columns, **{c: k for c, k in (optional or {}).items() if c in table.columns}}
    wrong = [f"{c} is {table.schema[c]}, expected {kind}" for c, kind in expected.items() if not _KIND_TEST[kind](table.schema[c])]
    if wrong:
        raise ValueError(f"{path}: column(s) of the wrong type ({'; '.join(wrong)}); not a fleetwise {what} table")
    return table


def _check_requests(path: Path, table: pl.DataFrame | None) -> pl.DataFrame | None:
    """``table`` (a run's requests.parquet) when it has the request table's columns; a ValueError
    naming the file and the missing or mistyped columns when it does not."""
    return _check_columns(path, table, "requests", REQUEST_COLUMNS)


def load_run(path: Path, label: str, note: str = "") -> RunData:
    """Reads one run directory (tables that are missing stay None)."""
    summary = _read_json(path / "summary.json") if (path / "summary.json").exists() else {}
    return RunData(
        label=label,
        path=path,
        summary=summary,
        requests=_check_requests(path / "requests.parquet", _read_parquet(path / "requests.parquet")),
        instances=_check_columns(path / "instances.parquet", _read_parquet(path / "instances.parquet"), "instances", INSTANCE_COLUMNS, INSTANCE_OPTIONAL),
        iterations=_check_columns(path / "iterations.parquet", _read_parquet(path / "iterations.parquet"), "iterations", ITERATION_COLUMNS, ITERATION_OPTIONAL),
        note=note,
    )


_LISTED = 6
"""Names listed in a message about a directory of inputs (then "...")."""


def _kind_of(d: Path) -> str | None:
    """"run" or "sweep" for a directory the report reads, else None."""
    if any((d / f).exists() for f in _SWEEP_FILES):
        return "sweep"
    if (d / "summary.json").exists():
        return "run"
    return None


def _names(dirs: list[Path]) -> str:
    shown = ", ".join(d.name for d in dirs[:_LISTED])
    return shown + (", ..." if len(dirs) > _LISTED else "")


def _children(d: Path) -> list[Path]:
    try:
        return sorted(c for c in d.iterdir() if not c.name.startswith("."))
    except OSError:
        return []


def _holds_inputs(p: Path) -> str | None:
    """What to give instead when ``p`` is no run or sweep directory but holds them (the output of
    ``compare``, ``place`` or ``designs``, or a sweep's points/ folder); None when it holds none."""
    import shlex

    parent = p.resolve().parent
    if p.name == "points" and _kind_of(parent) == "sweep":
        return f"{p} is the points/ folder of the sweep {p.parent}: give the sweep directory, e.g. `fleetwise report {shlex.quote(str(p.parent))}`"
    for marker, sub, what, each in (("placement.json", "points", "a placement search's output", "its layouts' goodput searches"),
                                    ("designs.json", "designs", "a design study's output", "its designs' goodput searches")):
        inner = [c for c in _children(p / sub) if c.is_dir() and _kind_of(c)]
        if (p / marker).exists() or any(_kind_of(c) == "sweep" for c in inner):
            what += f" ({marker})" if (p / marker).exists() else ""
            if not inner:
                return f"{p} is {what} with no finished search in {p / sub} yet: nothing to report"
            return (f"{p} is {what}; {each} are in {p / sub}/ ({_names(inner)}): give them, "
                    f"e.g. `fleetwise report {shlex.quote(str(p / sub))}/*`")
    children = _children(p)
    runs = [c for c in children if c.is_dir() and _kind_of(c) == "run"]
    sweeps = [c for c in children if c.is_dir() and _kind_of(c) == "sweep"]
    if not runs and not sweeps:
        return None
    held = " and ".join(x for x in (f"run directories ({_names(runs)})" if runs else "",
                                    f"sweep or goodput search directories ({_names(sweeps)})" if sweeps else "") if x)
    if len(runs) + len(sweeps) == len(children):
        example = f"{shlex.quote(str(p))}/*"
    else:  # other entries beside them (an unfinished variant, a stray file): name the inputs
        example = " ".join(shlex.quote(str(c)) for c in (runs + sweeps)[:_LISTED]) + (" ..." if len(runs) + len(sweeps) > _LISTED else "")
    return f"{p} is not a run directory but holds {held}: give them, e.g. `fleetwise report {example}`"


def classify(path: Path) -> tuple[str, Path]:
    """("run" | "sweep", directory) for an input path; a file inside such a directory also works."""
    from fleetwise.paths import path_kind

    p = Path(path)
    kind = path_kind(p, "report input", ValueError)  # a name too long: an error naming it
    if kind is None:
        raise FileNotFoundError(f"{p}: no such file or directory")
    if kind == "file":
        if p.name in ("placement.json", "designs.json"):
            p = p.parent  # what to give instead is said below
        elif p.name not in _KNOWN_FILES:
            raise ValueError(f"{p}: not a run or sweep directory (give the directory holding summary.json, or sweep.json/points.parquet/goodput.json)")
        else:
            p = p.parent
    kind = _kind_of(p)
    if kind is not None:
        return kind, p
    instead = _holds_inputs(p)
    if instead is not None:
        raise ValueError(instead)
    raise ValueError(f"{p}: not a run directory (no summary.json) nor a sweep directory (no sweep.json, points.parquet or goodput.json)")


def _unique_names(paths: list[Path]) -> list[str]:
    """Directory names; where two collide, parent/name; where still equal, a #n suffix."""
    short = [p.resolve().name or str(p) for p in paths]
    names = [f"{p.resolve().parent.name}/{n}" if short.count(n) > 1 else n for p, n in zip(paths, short)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


def _run_labels(dirs: list[Path]) -> list[str]:
    """Runs are labelled by directory name; when names are generic duplicates, by scenario name."""
    names = _unique_names(dirs)
    if len(set(p.resolve().name for p in dirs)) < len(dirs):
        scen = []
        for d in dirs:
            try:
                scen.append(str(_read_json(d / "summary.json").get("scenario", "")))
            except (OSError, ValueError):
                scen.append("")
        if all(scen) and len(set(scen)) == len(scen):
            return scen
    return names


def _normalise_points(points: pl.DataFrame, grid: dict) -> pl.DataFrame:
    """Ensures the columns the figures use exist: point (str), label (str), rate (float or null)."""
    if points.height == 0:
        return pl.DataFrame({"point": [], "label": [], "rate": []}, schema={"point": pl.Utf8, "label": pl.Utf8, "rate": pl.Float64})
    if "point" not in points.columns:
        points = points.with_row_index("point").with_columns(pl.col("point").cast(pl.Utf8))
    points = points.with_columns(pl.col("point").cast(pl.Utf8))
    if "label" not in points.columns:
        others = [c for c in grid if c != RATE_PATH and c in points.columns]
        if others:
            points = points.with_columns(pl.concat_str([pl.lit(f"{c}=") + pl.col(c).cast(pl.Utf8) for c in others], separator=", ").alias("label"))
        else:
            points = points.with_columns(pl.lit("all").alias("label"))
    points = points.with_columns(pl.col("label").cast(pl.Utf8).fill_null("all"))
    if "rate" not in points.columns:
        if RATE_PATH in points.columns:
            points = points.with_columns(pl.col(RATE_PATH).cast(pl.Float64, strict=False).alias("rate"))
        else:
            points = points.with_columns(pl.lit(None, dtype=pl.Float64).alias("rate"))
    points = points.with_columns(pl.col("rate").cast(pl.Float64, strict=False))
    for c in ("slo_attainment",):
        if c in points.columns:
            points = points.with_columns(pl.col(c).cast(pl.Float64, strict=False).fill_nan(None))
    return points


def _prefixed(prefix: str | None, label: str) -> str:
    if prefix is None:
        return label
    return prefix if label == "all" else f"{prefix}: {label}"


def load_sweep(path: Path, prefix: str | None) -> SweepData:
    """Reads a sweep directory; ``prefix`` (the sweep's name) is put before labels when several inputs share a report."""
    manifest = _read_json(path / "sweep.json") if (path / "sweep.json").exists() else {}
    grid = manifest.get("grid") if isinstance(manifest.get("grid"), dict) else {}
    raw_points = _points_table(path, grid)
    points = _normalise_points(raw_points if raw_points is not None else pl.DataFrame(), grid)
    if prefix is not None and points.height:
        points = points.with_columns(pl.col("label").map_elements(lambda s: _prefixed(prefix, s), return_dtype=pl.Utf8))
    goodput: dict[str, dict] = {}
    if (path / "goodput.json").exists():
        labels = sorted(set(points["label"].to_list())) if points.height else []
        default = labels[0] if len(labels) == 1 else _prefixed(prefix, "all")
        raw = normalise_goodput(_read_json(path / "goodput.json"), default, path / "goodput.json")
        goodput = {(k if k == default else _prefixed(prefix, k)): v for k, v in raw.items()}
    return SweepData(name=path.resolve().name, path=path, manifest=manifest, points=_attainment_from_goodput(points, goodput), goodput=goodput)


def _points_table(path: Path, grid: dict) -> pl.DataFrame | None:
    """A sweep's table of points: ``points.parquet``, or — when row files are newer (the sweep was
    killed, crashed, or is still running: it rebuilds the table only when it ends) — the table of
    its row files, those of the grid's points only, in point-id order, as the sweep would build it."""
    table = path / "points.parquet"
    rows = sorted((path / "rows").glob("*.parquet")) if (path / "rows").is_dir() else []
    newest = max((f.stat().st_mtime_ns for f in rows if f.exists()), default=None)
    if newest is None or (table.exists() and table.stat().st_mtime_ns >= newest):
        return _read_parquet(table)
    ids = None
    if grid and all(isinstance(v, list) for v in grid.values()):  # a sweep's grid (a goodput search's rates vary)
        from fleetwise.sweep.grid import expand

        ids = {p.id for p in expand(list(grid.items()))}
    frames = [t for t in (_read_parquet(f) for f in rows if ids is None or f.stem in ids) if t is not None]
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def _attainment_from_goodput(points: pl.DataFrame, goodput: dict[str, dict]) -> pl.DataFrame:
    """Fills points' missing slo_attainment from the goodput curves (a goodput search measures it per rate)."""
    known = {(lab, round(float(c["rate"]), 6)): float(c["attainment"]) for lab, g in goodput.items() for c in g.get("curve") or [] if "rate" in c and "attainment" in c}
    if not known or points.height == 0:
        return points
    if "slo_attainment" not in points.columns:
        points = points.with_columns(pl.lit(None, dtype=pl.Float64).alias("slo_attainment"))
    fill = [known.get((lab, round(r, 6))) if r is not None else None for lab, r in zip(points["label"].to_list(), points["rate"].to_list())]
    return points.with_columns(pl.col("slo_attainment").fill_null(pl.Series(fill, dtype=pl.Float64)))


def attainment_target(sweep: SweepData) -> float | None:
    """The target attainment of a sweep: from goodput.json, else sweep.json, else None."""
    for g in sweep.goodput.values():
        t = g.get("attainment_target")
        if isinstance(t, (int, float)):
            return float(t)
    t = sweep.manifest.get("attainment_target")
    return float(t) if isinstance(t, (int, float)) else None


def attainment_curves(sweep: SweepData) -> dict[str, list[tuple[float, float]]]:
    """Label -> [(rate, attainment)] sorted by rate: from points.parquet, else goodput curves."""
    out: dict[str, list[tuple[float, float]]] = {}
    pts = sweep.points
    if pts.height and "slo_attainment" in pts.columns:
        ok = pts.filter(pl.col("rate").is_not_null() & pl.col("slo_attainment").is_not_null())
        for label in sorted(set(ok["label"].to_list())):
            sub = ok.filter(pl.col("label") == label).sort("rate")
            out[label] = list(zip(sub["rate"].to_list(), sub["slo_attainment"].to_list()))
    for label, g in sweep.goodput.items():
        if label not in out and g.get("curve"):
            curve = sorted((float(c["rate"]), float(c["attainment"])) for c in g["curve"])
            out[label] = curve
    return out


def _reference_rate(sweep: SweepData) -> float | None:
    """The rate at which each series' point is shown in the per-run figures.

    The highest rate run for every series at which at least one series still meets the target
    attainment (where policies start to differ); without attainment data, the highest common rate.
    """
    pts = sweep.points.filter(pl.col("rate").is_not_null()) if sweep.points.height else sweep.points
    if pts.height == 0:
        return None
    by_label = {lab: set(pts.filter(pl.col("label") == lab)["rate"].to_list()) for lab in set(pts["label"].to_list())}
    common = set.intersection(*by_label.values())
    if not common:
        return None
    target = attainment_target(sweep)
    curves = attainment_curves(sweep)
    if target is not None and curves:
        meets = [r for r in common if any(a >= target for c in curves.values() for rr, a in c if rr == r)]
        return max(meets) if meets else min(common)
    return max(common)


def _detail_points(sweep: SweepData) -> list[tuple[str, str, float | None]]:
    """(label, point id, rate) of the point that stands for each series."""
    pts = sweep.points
    if pts.height == 0:
        return []
    rate = sweep.reference_rate
    out = []
    for label in sorted(set(pts["label"].to_list())):
        sub = pts.filter(pl.col("label") == label)
        if rate is not None:
            sub = sub.filter(pl.col("rate") == rate)
        elif sub["rate"].null_count() < sub.height:
            sub = sub.filter(pl.col("rate") == sub["rate"].max())
        if sub.height:
            row = sub.sort("point").row(0, named=True)
            out.append((label, row["point"], row["rate"]))
    return out


def load_inputs(inputs: list[Path]) -> ReportData:
    """Classifies and reads every input; for sweeps, also reads one point per series."""
    if not inputs:
        raise ValueError("no inputs: give run directories or a sweep directory")
    kinds = [classify(Path(p)) for p in inputs]
    run_dirs = [d for k, d in kinds if k == "run"]
    sweep_dirs = [d for k, d in kinds if k == "sweep"]
    notes: list[str] = []
    runs = [load_run(d, lab) for d, lab in zip(run_dirs, _run_labels(run_dirs))]
    for r in runs:
        if r.summary.get("stopped"):
            notes.append(f"{r.path}: this run stopped part way ({r.summary['stopped']}); its figures show what happened before it stopped, "
                         "and requests it never finished are 'unfinished' in requests.parquet")
    sweep_names = _unique_names(sweep_dirs)
    several = len(sweep_dirs) > 1 or bool(run_dirs)
    sweeps = []
    for d, name in zip(sweep_dirs, sweep_names):
        s = load_sweep(d, name if several else None)
        s.reference_rate = _reference_rate(s)
        sweeps.append(s)
        detail = _detail_points(s)
        if len(detail) > MAX_DETAIL_RUNS:
            notes.append(f"{d}: {len(detail)} series; the per-run figures show the first {MAX_DETAIL_RUNS}.")
            detail = detail[:MAX_DETAIL_RUNS]
        for label, point, rate in detail:
            pdir = d / "points" / point
            if not (pdir / "summary.json").exists():
                continue
            note = f"point {point}" + (f" at {rate:.4g} req/s" if rate is not None and not math.isnan(rate) else "")
            runs.append(load_run(pdir, label, note))
    empty = [s for s in sweeps if s.points.height == 0 and not s.goodput]
    if not runs and len(empty) == len(sweeps):
        raise ValueError(f"nothing to report: {', '.join(str(s.path) for s in empty)} has no finished point yet "
                         "(a sweep stopped before its first point keeps its settings: run the same sweep command again to resume)")
    for s in empty:
        notes.append(f"{s.path}: no finished point yet; it has no figures")
    return ReportData(runs=runs, sweeps=sweeps, notes=notes)
