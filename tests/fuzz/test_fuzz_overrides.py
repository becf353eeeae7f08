"""Random ``--set PATH=VALUE`` overrides applied by ``load_scenario`` (the CLI's loader) to a tiny
scenario: each ends in a clean fleetwise error or a result whose invariants all hold."""

from __future__ import annotations

from hypothesis import given

from fuzz_overrides import override_lists, override_request
from fuzz_settings import fuzz_settings
from fuzz_worker import assert_clean
from fuzz_fixtures import worker  # noqa: F401  (the module's sandboxed worker fixture)


@fuzz_settings(max_examples=100)
@given(overrides=override_lists())
def test_overrides_fail_cleanly_or_hold_invariants(worker, overrides):
    """Overrides raise a FleetwiseError or give a scenario that simulates with every invariant."""
    assert_clean(worker.call(override_request(overrides), timeout=20), overrides)
