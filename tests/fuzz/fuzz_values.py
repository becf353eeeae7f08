"""Hypothesis strategies for single values, and the injection of hostile values into a document.

Generated documents (scenarios, ``--set`` targets) are built from sane values, then
``inject_hostile`` replaces zero, one or two of their numeric leaves by a hostile value: one a
careless or malicious user could type (zero, negatives, NaN, infinities, the edges of float64 and
int64, the wrong type). Injecting few values keeps most cases past validation, so that the hostile
value reaches the simulator.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

HOSTILE_FLOATS = [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e300, -1e300, 1e-300, 5e-324, 1e9, 1e-9, 2.0**63, 1e19, 1e29]
"""Floats at the edges: zero, signs, non-finite, extremes of float64, int64 overflow."""

HOSTILE_INTS = [0, -1, 7, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30]
"""Integers at the edges of int32, float64's exact range, int64 and u64, and beyond."""

WRONG_TYPES = [None, "abc", "", [], {}, True, "1e3", [1, 2], 1.5]
"""Values of the wrong type for a number field."""

SIZE_FIELDS = {"requests", "count", "groups"}
"""Fields whose large valid values mean a large simulation (slow, not wrong): they get only
invalid hostile values."""

HOSTILE_SIZES = [0, -1, 2**64, 10**30, 1e29, math.nan, math.inf, 1.5, "3", None]
"""Hostile values for ``SIZE_FIELDS``: all invalid."""


def float_field(lo: float, hi: float) -> st.SearchStrategy:
    """A sane float in ``[lo, hi]``."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def int_field(lo: int, hi: int) -> st.SearchStrategy:
    """A sane int in ``[lo, hi]``."""
    return st.integers(lo, hi)


def numeric_leaves(doc, path=()) -> list[tuple]:
    """The paths (tuples of keys and indices) of every int or float leaf of ``doc``."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in numeric_leaves(v, (*path, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in numeric_leaves(v, (*path, i))]
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return [path]
    return []


def set_at(doc, path: tuple, value) -> None:
    """Sets the leaf at ``path`` of ``doc`` in place."""
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@st.composite
def inject_hostile(draw, doc, most: int = 2):
    """``doc`` with up to ``most`` numeric leaves replaced by hostile values (in place)."""
    leaves = numeric_leaves(doc)
    if not leaves:
        return doc
    for _ in range(draw(st.integers(0, most))):
        path = draw(st.sampled_from(leaves))
        pool = HOSTILE_SIZES if path[-1] in SIZE_FIELDS else HOSTILE_FLOATS + HOSTILE_INTS + WRONG_TYPES
        set_at(doc, path, draw(st.sampled_from(pool)))
    return doc
