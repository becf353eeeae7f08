"""Router and batch-scheduler policies that answer with random, wrong or raising decisions: each
run ends in a clean fleetwise error (a PolicyError for the policy's fault) or a result whose
invariants all hold — never a hang, a crash or a lost request."""

from __future__ import annotations

from hypothesis import given

from fuzz_policy_cases import policy_cases, policy_request
from fuzz_settings import fuzz_settings
from fuzz_worker import assert_clean
from fuzz_fixtures import worker  # noqa: F401  (the module's sandboxed worker fixture)


@fuzz_settings(max_examples=60)
@given(sc=policy_cases())
def test_hostile_policies_fail_cleanly_or_hold_invariants(worker, sc):
    """A scripted hostile policy ends in a PolicyError (or a ConfigError) or a run with every
    invariant; a request the policy starves is a PolicyError naming it, not a SimulationError."""
    outcome = worker.call(policy_request(sc), timeout=20)
    assert_clean(outcome, sc)
    if outcome["outcome"] == "error":
        assert outcome["type"] in ("PolicyError", "ConfigError", "CapacityError"), f"{sc}: {outcome['type']}: {outcome['message'][:500]}"
