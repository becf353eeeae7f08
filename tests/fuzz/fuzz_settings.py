"""Hypothesis settings of the fuzz suite: deterministic (derandomized, no example database) and
bounded, so the whole suite runs in CI within about a minute."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz_settings(max_examples: int) -> settings:
    """Settings for one fuzz test drawing ``max_examples`` examples."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
