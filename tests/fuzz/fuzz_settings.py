"""Hypothesis settings of the fuzz suite: deterministic (derandomized, no example database) and
bounded, so the whole suite runs in CI within about a minute.

Shrinking is off by default: a failing case may hang until its timeout, and shrinking would repeat
it hundreds of times. Set ``FLEETWISE_FUZZ_SHRINK=1`` to shrink a failure to a minimal case
locally (or use ``tests/fuzz/explore.py`` to group many failures by kind).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

SHRINK = os.environ.get("FLEETWISE_FUZZ_SHRINK") == "1"
"""Whether failures are shrunk (``FLEETWISE_FUZZ_SHRINK=1``)."""


def fuzz_settings(max_examples: int) -> settings:
    """Settings for one fuzz test drawing ``max_examples`` examples."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
