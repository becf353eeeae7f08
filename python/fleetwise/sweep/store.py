"""The sweep's results on disk: one row file per finished point, merged into ``points.parquet``.

The store only ever adds files while a sweep runs: recording a finished point costs the same at the
ten-thousandth point as at the first (nothing already saved is read or rewritten), and the table of
all points, ``points.parquet``, is built once, when the sweep ends or is interrupted (``merge``),
from the row files in point-id order — so it does not depend on the order points finished in.

Every finished point is durable as soon as it finishes: its run directory is written under a
temporary name and renamed into place, then its row is written to a unique temporary file, flushed
to disk (fsync) and renamed to ``rows/<id>.parquet``. A row file therefore only exists for a point
whose results are complete, so an interrupted sweep (Ctrl-C, ``kill -9``, a crash) keeps everything
that finished and a rerun computes only the points without a (readable) row file.

One sweep at a time writes a directory: the store holds an exclusive lock (``flock``) on
``sweep.lock`` while it is open; a second sweep into the same directory is refused with the pid
of the one holding it. The kernel drops the lock when its holder dies, however it dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

import polars as pl

LOCK_FILE = "sweep.lock"
"""The file a running sweep holds locked (and writes its pid into)."""

MANIFEST_KEYS = ("grid", "overrides", "scenario_file", "scenario_sha1")
"""The fields of ``sweep.json`` that must match for a rerun to resume (rather than mix) a sweep;
``scenario_sha1`` only where both runs recorded it (sweeps from before it was recorded resume)."""


@contextlib.contextmanager
def saving(what: Path):
    """Within the block (which only writes), a failure to write (disk full, read-only file system:
    an OSError, the error polars raises for it, or ``Result.write``'s ConfigError) is a ConfigError
    naming ``what`` and saying that the points saved so far are kept."""
    from fleetwise.errors import ConfigError

    try:
        yield
    except (OSError, pl.exceptions.PolarsError, ConfigError) as e:  # ConfigError: Result.write's, for the same
        reason = str(e.strerror if isinstance(e, OSError) and e.strerror else e).strip().splitlines()
        raise ConfigError(f"{what}: cannot write ({reason[0][:200] if reason else type(e).__name__}; is the disk full?); "
                          "the points saved before are kept: free space and run the same command again to resume") from None


def lock_directory(directory: Path, name: str, what: str, then: str):
    """Holds ``directory``'s lock file ``name`` (and writes this pid into it) for as long as the
    returned file stays open: another ``what`` (a sweep, a compare) writing there is refused with a
    ConfigError naming its pid (``then``: what to do once it ends). On a file system without locks
    nothing is refused."""
    import fcntl

    from fleetwise.errors import ConfigError

    path = directory / name
    try:
        f = open(path, "a+")
    except OSError as e:
        raise ConfigError(f"{directory}: cannot open {name} in the {what} directory: {e.strerror or e}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise ConfigError(f"{directory}: another {what} (pid {holder}) is writing to this directory; wait for it to finish "
                          f"({then}) or choose another -o directory") from None
    except OSError:  # a file system without locks: nothing is refused
        pass
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def temp_name(final: Path) -> Path:
    """A temporary name next to ``final`` that no other process or sweep uses."""
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_row(directory: Path, row: dict) -> Path:
    """Saves one finished point's row durably as ``directory/rows/<id>.parquet`` (temp, fsync, rename)."""
    rows = Path(directory) / "rows"
    rows.mkdir(parents=True, exist_ok=True)
    final = rows / f"{row['point']}.parquet"
    tmp = temp_name(final)
    try:
        pl.DataFrame([row]).write_parquet(tmp)
        _fsync_file(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(rows)
    return final


def publish_dir(tmp: Path, final: Path) -> None:
    """Flushes every file of the finished directory ``tmp`` and renames it to ``final`` (replacing a stale one)."""
    for f in tmp.iterdir():
        if f.is_file():
            _fsync_file(f)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


class SweepStore:
    """Reads and writes a sweep directory; holds the directory's lock until ``close()``.

    Use it as a context manager, or call ``close()``; a second store on the same directory (from
    any process) while this one is open raises ConfigError naming the holder's pid.
    """

    def __init__(self, directory: Path):
        from fleetwise.result import ensure_output_dir

        self.dir = ensure_output_dir(directory)
        self.rows = self.dir / "rows"
        self._cache: dict[str, tuple[tuple[int, int], pl.DataFrame]] = {}
        self._lock = self._acquire_lock()
        for sub in (self.rows, self.dir / "points"):
            try:
                sub.mkdir(exist_ok=True)  # FileExistsError when a file is in the way
            except OSError as e:
                self.close()
                from fleetwise.errors import ConfigError

                raise ConfigError(f"{sub}: cannot create the sweep's {sub.name} directory: {e.strerror or e}") from None
        self._remove_leftovers()

    def _acquire_lock(self):
        return lock_directory(self.dir, LOCK_FILE, "sweep", "then run this command again to add or resume points")

    def close(self) -> None:
        """Releases the directory's lock (the kernel also releases it when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "SweepStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _remove_leftovers(self) -> None:
        """Deletes temporary files and directories that an interrupted sweep left behind."""
        for parent in (self.dir, self.rows, self.dir / "points"):
            if parent.is_dir():
                for p in parent.glob(".*.tmp"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def write_manifest(self, manifest: dict) -> None:
        """Writes ``sweep.json`` (scenario, grid, overrides); refuses to mix two different sweeps."""
        from fleetwise.errors import ConfigError

        path = self.dir / "sweep.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"{path}: unreadable ({e}); delete it or choose another -o directory") from None
            if not isinstance(old, dict):
                raise ConfigError(f"{path}: expected a JSON object, got {type(old).__name__}; delete it or choose another -o directory")
            # Compared as JSON text, so that a grid value 4 is not taken for 4.0 (they are different point ids).
            canon = lambda m, k: json.dumps(json.loads(json.dumps(m.get(k), default=str)), sort_keys=True)  # noqa: E731
            differ = [k for k in MANIFEST_KEYS if canon(old, k) != canon(manifest, k)
                      and not (k == "scenario_sha1" and (old.get(k) is None or manifest.get(k) is None))]
            if differ:
                what = ("the scenario's content (with --set) or a file it names has changed since it ran" if differ == ["scenario_sha1"]
                        else f"its {', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'}")
                raise ConfigError(f"{self.dir}: holds a different sweep: {what} (see its sweep.json); its points would mix with these: "
                                  "choose another -o directory")
        tmp = temp_name(path)
        try:
            tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _read_rows(self) -> tuple[dict[str, pl.DataFrame], list[Path]]:
        """Readable row files by point id, and the paths of unreadable (truncated, corrupt) ones."""
        good: dict[str, pl.DataFrame] = {}
        bad: list[Path] = []
        for f in sorted(self.rows.glob("*.parquet")):
            try:
                st = f.stat()
                key = (st.st_mtime_ns, st.st_size)
                cached = self._cache.get(f.name)
                if cached is None or cached[0] != key:
                    cached = (key, pl.read_parquet(f))
                    self._cache[f.name] = cached
                good[f.stem] = cached[1]
            except FileNotFoundError:
                continue
            except BaseException as e:  # polars raises several kinds for a damaged file, even a PanicException
                if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                    raise
                bad.append(f)
        return good, bad

    def done(self) -> set[str]:
        """Ids of the points already finished: a readable row file and the point's run directory
        with a readable ``summary.json``."""
        return {k for k in self._read_rows()[0] if self._summary_readable(k)}

    def _summary_readable(self, point_id: str) -> bool:
        """Whether ``points/<id>/summary.json`` exists and holds a JSON object (not truncated)."""
        try:
            return isinstance(json.loads((self.dir / "points" / point_id / "summary.json").read_bytes()), dict)
        except (OSError, ValueError):
            return False

    def forget(self, point_id: str) -> None:
        """Makes a point count as missing (its row file goes), so that the next run recomputes it."""
        (self.rows / f"{point_id}.parquet").unlink(missing_ok=True)
        self._cache.pop(f"{point_id}.parquet", None)

    def discard_corrupt(self) -> dict[str, Path]:
        """Deletes unreadable row files, and the row files of points whose ``summary.json`` is
        unreadable (their points count as missing, so they are recomputed); returns the unreadable
        file of each such point, by id."""
        good, bad = self._read_rows()
        for f in bad:
            f.unlink(missing_ok=True)
            self._cache.pop(f.name, None)
        damaged = {k: self.dir / "points" / k / "summary.json" for k in good
                   if (self.dir / "points" / k).exists() and not self._summary_readable(k)}
        for k in damaged:
            self.forget(k)
        return {**{f.stem: f for f in bad}, **damaged}

    def add(self, row: dict) -> None:
        """Records one finished point: saves its row unless its worker already did. O(1): it reads
        no other point's file and leaves ``points.parquet`` to ``merge()``, which the sweep calls
        once at its end (and on Ctrl-C); a rerun rebuilds it after any other interruption."""
        if not (self.rows / f"{row['point']}.parquet").exists():
            write_row(self.dir, row)

    def merge(self, ids: "set[str] | None" = None) -> pl.DataFrame:
        """Rewrites ``points.parquet`` from the readable row files (atomically) and returns it; with
        ``ids``, only the rows of those points (a sweep's own: never a stray row file's)."""
        good, _ = self._read_rows()
        frames = [good[k] for k in sorted(good) if ids is None or k in ids]
        frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
        final = self.dir / "points.parquet"
        tmp = temp_name(final)
        try:
            with saving(final):
                frame.write_parquet(tmp)
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return frame
