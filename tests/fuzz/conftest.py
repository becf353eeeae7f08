"""Fixtures of the fuzz suite: one sandboxed worker process per test module."""

from __future__ import annotations

import pytest

from fuzz_worker import SandboxWorker


@pytest.fixture(scope="module")
def worker():
    """A ``SandboxWorker`` shared by the module's cases; its child is killed at the end."""
    w = SandboxWorker()
    yield w
    w.close()
