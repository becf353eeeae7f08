"""Why requests were rejected, most common reasons first."""

from __future__ import annotations

import re
from typing import TypedDict


class RejectionCount(TypedDict):
    """One entry of the summary's ``rejections``."""

    reason: str
    count: int


def rejection_reasons(reasons: list[str | None], limit: int = 5) -> list[RejectionCount]:
    """The most common reasons requests were rejected: ``[{"reason", "count"}]``, most frequent
    first (reasons differing only in their numbers count together; the first one seen is shown)."""
    groups: dict[str, list] = {}
    for r in reasons:
        if r is None:
            continue
        g = groups.setdefault(re.sub(r"\d+", "N", r), [r, 0])
        g[1] += 1
    ranked = sorted(groups.values(), key=lambda g: -g[1])
    return [{"reason": r, "count": n} for r, n in ranked[:limit]]
