"""The outcome of a simulation: per-request table, per-instance facts and the summary."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import polars as pl


class Result:
    """What ``fleetwise.simulate`` returns.

    ``requests`` has one row per request: times in integer ns (exact) and derived latencies in
    seconds; ``instances`` one row per instance; ``iterations`` one row per iteration when asked
    for; ``summary`` the metrics of ``fleetwise.metrics.summarize``.

    The request table is built when first read (about 190 bytes a request; a 10M-request run
    holds only its compact columns until then): ``scan_requests()`` queries it without building
    it, and ``write`` streams it to Parquet.
    """

    __slots__ = ("_requests", "instances", "summary", "iterations")

    def __init__(self, requests: pl.DataFrame | pl.LazyFrame, instances: pl.DataFrame, summary: dict, iterations: pl.DataFrame | None = None):
        self._requests = requests
        self.instances = instances
        """One row per instance."""
        self.summary = summary
        """The run's metrics (summary.json)."""
        self.iterations = iterations
        """One row per iteration when the run recorded them, else None."""

    @property
    def requests(self) -> pl.DataFrame:
        """The per-request table (docs/semantics.md), built on first read and kept."""
        if isinstance(self._requests, pl.LazyFrame):
            self._requests = self._requests.collect()
        return self._requests

    def scan_requests(self) -> pl.LazyFrame:
        """The per-request table as a LazyFrame: a query computes only the columns it reads."""
        return self._requests.lazy()

    def write(self, directory: str | Path, vllm_bench_detailed: bool = False) -> Path:
        """Writes requests.parquet, instances.parquet, summary.json, vllm-bench.json (the summary in
        ``vllm bench serve``'s result format, ``fleetwise.metrics.vllm_bench``; with
        ``vllm_bench_detailed`` also its per-request lists) and iterations.parquet if recorded."""
        from fleetwise.metrics.vllm_bench import vllm_bench_result

        d = ensure_output_dir(directory)
        remove_run_files(d)
        try:
            if isinstance(self._requests, pl.LazyFrame):  # streamed: never the whole table in memory
                self._requests.sink_parquet(d / "requests.parquet")
            else:
                self._requests.write_parquet(d / "requests.parquet")
            self.instances.write_parquet(d / "instances.parquet")
            if self.iterations is not None:
                self.iterations.write_parquet(d / "iterations.parquet")
            (d / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
            bench = vllm_bench_result(self._requests, self.summary, detailed=vllm_bench_detailed)
            (d / "vllm-bench.json").write_text(json.dumps(bench, indent=2, allow_nan=False) + "\n")
        except (OSError, pl.exceptions.PolarsError) as e:  # polars reports a full disk as a ComputeError
            from fleetwise.errors import ConfigError

            reason = (e.strerror if isinstance(e, OSError) else None) or str(e).strip().splitlines()[0][:200]
            raise ConfigError(f"{d}: cannot write the results: {reason}") from None
        return d


def check_output_dir(path: str | Path, option: str = "-o") -> Path:
    """Checks, leaving nothing behind, that ``path`` is or can become a writable directory.

    Raises ConfigError naming the path when it exists and is not a directory (``-o /dev/null``),
    when a file is in the way of creating it, or when its nearest existing directory is not writable.
    """
    from fleetwise.errors import ConfigError

    if str(path).strip() == "":
        raise ConfigError(f"output path is empty; give a directory with {option}")
    from fleetwise.paths import path_kind

    d = Path(path)
    if path_kind(d, option) not in (None, "dir"):
        raise ConfigError(f"output path {d} exists and is not a directory; give a directory (or a new path) with {option}")
    parent = d
    while path_kind(parent, option) is None and parent != parent.parent:
        parent = parent.parent
    if path_kind(parent, option) != "dir":
        raise ConfigError(f"output path {d}: {parent} is in the way (it exists and is not a directory); give another {option}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output path {d}: {parent} is not writable; give another {option}")
    try:  # access() says yes to root everywhere: try a directory there, removed at once
        os.rmdir(tempfile.mkdtemp(prefix=".fleetwise-check-", dir=parent))
    except OSError as e:
        raise ConfigError(f"output path {d}: cannot create a directory in {parent}: {e.strerror or e}; give another {option}") from None
    return d


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same resolved path, or links of one file (an output
    that is an input would overwrite it)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop before Python 3.13
        return False


def check_output_file(path: str | Path, option: str = "-o") -> Path:
    """Checks, leaving nothing behind, that a file can be written at ``path`` (it is not a
    directory, and its directory is or can become a writable one); ConfigError naming it and the
    command's ``option`` if not."""
    from fleetwise.errors import ConfigError

    from fleetwise.paths import path_kind

    f = Path(path)
    if path_kind(f, option) == "dir":
        raise ConfigError(f"output file {f} is a directory; give a file path")
    check_output_dir(f.parent, option)
    return f


def ensure_output_dir(path: str | Path) -> Path:
    """Creates the output directory ``path`` (and its parents) after ``check_output_dir``; returns it.

    Raises ConfigError naming the path when it is not, or cannot become, a writable directory.
    """
    from fleetwise.errors import ConfigError

    d = check_output_dir(path)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"output path {d} exists and is not a directory; give a directory (or a new path) with -o") from None
    except OSError as e:
        raise ConfigError(f"output path {d}: cannot create the directory: {e.strerror or e}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {d} is not writable; give another -o")
    return d


RUN_FILES = ("summary.json", "requests.parquet", "instances.parquet", "iterations.parquet", "vllm-bench.json")
"""The files of a run directory, ``summary.json`` (what marks a directory as a run) first."""


def remove_run_files(d: Path) -> None:
    """Deletes an earlier run's files from ``d`` before a run writes there (all of them: a file this
    run does not write, e.g. iterations.parquet without ``--iterations``, would otherwise be read
    as this run's by ``report``), ``summary.json`` first so that a half-replaced directory is not
    taken for a run. Raises ConfigError naming a file it cannot delete."""
    from fleetwise.errors import ConfigError

    for name in RUN_FILES:
        try:
            (d / name).unlink(missing_ok=True)
        except OSError as e:
            raise ConfigError(f"{d / name}: cannot replace an earlier run's file: {e.strerror or e}") from None


def write_stopped(directory: str | Path, requests: pl.DataFrame, scenario: str, reason: str) -> Path:
    """Writes what a run that stopped part way kept: requests.parquet (finished requests with their
    times; the others with status ``unfinished`` or ``rejected``) and a summary.json that says why it
    stopped and counts the requests, with no metrics (they would describe a cut-off run)."""
    d = ensure_output_dir(directory)
    remove_run_files(d)
    requests.write_parquet(d / "requests.parquet")
    counts = requests["status"].value_counts()
    by_status = dict(zip(counts["status"].to_list(), counts["count"].to_list()))
    summary = {"scenario": scenario, "stopped": reason, "requests": requests.height, "finished": by_status.get("finished", 0), "rejected": by_status.get("rejected", 0), "unfinished": by_status.get("unfinished", 0)}
    (d / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return d
