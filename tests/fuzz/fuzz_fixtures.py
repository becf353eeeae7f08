"""The fuzz suite's fixture: one sandboxed worker process per test module (imported by each test
module: a second conftest.py would shadow tests/conftest.py, which the other tests import by name)."""

from __future__ import annotations

import pytest

from fuzz_worker import SandboxWorker


@pytest.fixture(scope="module")
def worker():
    """A ``SandboxWorker`` shared by the module's cases; its child is killed at the end."""
    w = SandboxWorker()
    yield w
    w.close()
