"""The sweep's results on disk: one row file per finished point, merged into ``points.parquet``.

Every finished point's row is written atomically (to a temporary name, then renamed) as soon as the
point finishes, so an interrupted sweep keeps everything that finished and a rerun skips it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl


class SweepStore:
    """Reads and writes a sweep directory."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.rows = self.dir / "rows"
        self.rows.mkdir(parents=True, exist_ok=True)

    def write_manifest(self, manifest: dict) -> None:
        """Writes ``sweep.json`` (scenario, grid, overrides); refuses to mix two different sweeps."""
        from fleetwise.errors import ConfigError

        path = self.dir / "sweep.json"
        if path.exists():
            old = json.loads(path.read_text())
            if {k: old.get(k) for k in ("grid", "overrides", "scenario_file")} != {k: manifest.get(k) for k in ("grid", "overrides", "scenario_file")}:
                raise ConfigError(f"{self.dir}: holds a different sweep (see its sweep.json); choose another -o directory")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        os.replace(tmp, path)

    def done(self) -> set[str]:
        """Ids of the points already finished."""
        return {p.stem for p in self.rows.glob("*.parquet")}

    def add(self, row: dict) -> None:
        """Saves one finished point's row and refreshes ``points.parquet``."""
        tmp = self.rows / f".{row['point']}.tmp"
        pl.DataFrame([row]).write_parquet(tmp)
        os.replace(tmp, self.rows / f"{row['point']}.parquet")
        self.merge()

    def merge(self) -> pl.DataFrame:
        """Rewrites ``points.parquet`` from the row files (atomically) and returns it."""
        files = sorted(self.rows.glob("*.parquet"))
        frame = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()
        tmp = self.dir / ".points.tmp"
        frame.write_parquet(tmp)
        os.replace(tmp, self.dir / "points.parquet")
        return frame
