"""Shared fixtures: small scenarios and a CLI runner that reports exit codes like a shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TRACES = Path(os.environ.get("FLEETWISE_SHARED_TRACES", REPO.parent / "shared" / "traces"))


def small_scenario(**over) -> dict:
    """A small two-instance scenario as a dict; keyword arguments replace top-level sections."""
    sc = {
        "name": "small",
        "seed": 3,
        "cluster": {
            "pools": [{"name": "main", "count": 2, "gpu": "h100-sxm", "model": "llama-3-8b", "scheduler": {"kind": "vllm", "max_num_seqs": 64}}],
            "router": {"kind": "least-outstanding-tokens"},
        },
        "workload": {
            "arrivals": {"kind": "poisson", "rate": 20.0},
            "lengths": {"kind": "lognormal", "prompt_median": 800, "prompt_sigma": 0.8, "prompt_max": 4000, "output_median": 120, "output_sigma": 0.8, "output_max": 1000},
            "requests": 600,
        },
    }
    sc.update(over)
    return sc


def tiny_gpu(memory_gb: float = 17.5) -> dict:
    """A user-defined H100-like GPU with little memory, so that the KV cache is small."""
    return {
        "tiny": {
            "description": "H100 rates, small memory",
            "peak_flops": 989.4e12,
            "memory_bytes": memory_gb * 1e9,
            "memory_bandwidth": 3.35e12,
            "link_bandwidth": 450e9,
            "calibration": {"gemm_compute": 0.78, "attention_compute": 0.55, "memory": 0.8, "collective": 0.75, "iteration_overhead": 1.5e-3},
        }
    }


def docs_table_row(page: str, first_cell: str, where=lambda cells: True) -> list[str]:
    """The stripped cells of the first table row of ``docs/<page>`` whose first cell is
    ``first_cell`` (and for which ``where(cells)`` holds): for tests that recompute a page's numbers."""
    for line in (REPO / "docs" / page).read_text().splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell and where(cells):
            return cells
    raise AssertionError(f"no table row {first_cell!r} in docs/{page}")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs ``python -m fleetwise ARGS`` and returns the completed process (text mode)."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "fleetwise", *args], capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=300)


@pytest.fixture
def write_yaml(tmp_path):
    """Writes a dict as YAML into the test's temp dir and returns the path."""
    import yaml

    def _write(data: dict, name: str = "scenario.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return p

    return _write
