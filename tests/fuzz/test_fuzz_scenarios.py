"""Random small scenarios (every section, hostile values included) through ``fleetwise.simulate``:
each ends in a clean fleetwise error or a result whose invariants all hold."""

from __future__ import annotations

from hypothesis import given

from fuzz_scenarios import scenarios
from fuzz_settings import fuzz_settings
from fuzz_worker import assert_clean
from fuzz_fixtures import worker  # noqa: F401  (the module's sandboxed worker fixture)


@fuzz_settings(max_examples=120)
@given(sc=scenarios())
def test_random_scenarios_fail_cleanly_or_hold_invariants(worker, sc):
    """A generated scenario either raises a FleetwiseError or simulates with every invariant."""
    assert_clean(worker.call({"op": "simulate", "scenario": sc}, timeout=20), sc)
