"""Helpers shared by the trace-reader tests (test_trace_formats, test_length_files,
test_trace_selection): sample and real trace paths, a file writer and a trace-replay config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetwise.workload import WorkloadConfig

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TRACES = REPO / "traces"


def shared_trace(name: str) -> Path:
    """A real trace file from $FLEETWISE_SHARED_TRACES or ../shared/traces; skip when absent."""
    override = os.environ.get("FLEETWISE_SHARED_TRACES")
    path = (Path(override) if override else REPO.parent / "shared" / "traces") / name
    if not path.is_file():
        pytest.skip(f"real trace {path} not available (set FLEETWISE_SHARED_TRACES)")
    return path


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def trace_config(path: Path | str, fmt: str, **options) -> WorkloadConfig:
    """A trace-replay workload config."""
    arrivals = {"kind": "trace", "path": str(path), "format": fmt, **options}
    requests = arrivals.pop("requests", None)
    return WorkloadConfig.model_validate({"arrivals": arrivals, "requests": requests})
