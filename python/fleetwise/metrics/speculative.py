"""Speculative decoding metrics, as vLLM's ``spec_decode`` counters report them: drafts, draft and
accepted tokens, the acceptance rate, the mean acceptance length and the per-position rates; with
acceptance classes, the acceptance rate of each class."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import polars as pl


class _SpeculativeRequired(TypedDict):
    """The entries of ``SpeculativeSummary`` every speculating run has."""

    num_drafts: int
    """Sequence-steps that proposed draft tokens (vLLM's ``num_drafts``)."""
    num_draft_tokens: int
    """Draft tokens proposed."""
    num_accepted_tokens: int
    """Draft tokens accepted."""
    acceptance_rate: float | None
    """Accepted / proposed draft tokens."""
    mean_acceptance_length: float | None
    """Tokens a sequence-step emits on average: 1 + accepted / drafts (vLLM's mean acceptance length)."""
    per_position_acceptance_rate: list[float | None]
    """Accepted / proposed draft tokens at each position (position 1 first)."""
    lookahead_denied: int
    """Decodes that proposed fewer tokens than they could because their KV lookahead did not fit."""


class SpeculativeSummary(_SpeculativeRequired, total=False):
    """The summary's ``speculative`` entry, over every speculating instance; with acceptance
    classes, the classes' counters too."""

    per_class_draft_tokens: list[int]
    """Draft tokens proposed (verified) by the requests of each acceptance class."""
    per_class_acceptance_rate: list[float | None]
    """Accepted / proposed draft tokens of each acceptance class."""


def speculative_columns(stats: dict | None) -> dict:
    """An instance's speculative decoding counters as ``spec_*`` columns (per-position ones as lists)."""
    if stats is None:
        return {}
    return {f"spec_{k}": v for k, v in stats.items()}


def speculative_summary(instances: pl.DataFrame) -> SpeculativeSummary | None:
    """Speculative decoding counters summed over the speculating instances; None without any."""
    if "spec_drafts" not in instances.columns:
        return None
    x = instances.filter(pl.col("spec_drafts").is_not_null())
    if x.height == 0:
        return None
    drafts, proposed, accepted = (int(x[c].sum()) for c in ("spec_drafts", "spec_draft_tokens", "spec_accepted_tokens"))
    per_accepted = _sum_lists(x["spec_accepted_per_position"].to_list())
    summary: SpeculativeSummary = {
        "num_drafts": drafts,
        "num_draft_tokens": proposed,
        "num_accepted_tokens": accepted,
        "acceptance_rate": accepted / proposed if proposed else None,
        "mean_acceptance_length": 1.0 + accepted / drafts if drafts else None,
        # vLLM's: accepted at position i over all drafts (its SpecDecodingLogging and Prometheus
        # counters), not over the drafts that reached position i (a shorter draft near the end of
        # an output, or one the KV lookahead cut, proposes fewer positions).
        "per_position_acceptance_rate": [a / drafts if drafts else None for a in per_accepted],
        "lookahead_denied": int(x["spec_lookahead_denied"].sum()),
    }
    if "spec_draft_tokens_per_class" in x.columns:
        drafted = _sum_lists([row for row in x["spec_draft_tokens_per_class"].to_list() if row is not None])
        accepted_by_class = _sum_lists([row for row in x["spec_accepted_per_class"].to_list() if row is not None])
        summary["per_class_draft_tokens"] = drafted
        summary["per_class_acceptance_rate"] = [a / d if d else None for a, d in zip(accepted_by_class, drafted)]
    return summary


def _sum_lists(rows: list[list[int]]) -> list[int]:
    """Element-wise sums of per-position counters (pools may speculate different lengths)."""
    out: list[int] = []
    for row in rows:
        out += [0] * (len(row) - len(out))
        for i, v in enumerate(row):
            out[i] += v
    return out


def acceptance_class_column(scenario, pool: pl.Series, given: dict[int, np.ndarray] | None = None) -> pl.Series | None:
    """Each request's acceptance class in the pool that decoded it (``pool``: the compact
    table's Enum of pool names) as an Enum of the classes' labels, as the core assigns it (the
    class ``given`` names for the pool's index, ``given_class_codes``, else drawn); null for
    requests of pools without classes; None when no pool has acceptance classes."""
    from fleetwise._core import acceptance_classes
    from fleetwise.request_table import _enum_by_index
    from fleetwise.workload.acceptance_classes import class_labels

    pools = {p.name: (i, p.speculative.acceptance_classes) for i, p in enumerate(scenario.cluster.pools) if p.speculative is not None and p.speculative.acceptance_classes}
    if not pools:
        return None
    labels = list(dict.fromkeys(label for _, classes in pools.values() for label in class_labels(classes)))
    codes = pool.to_physical().to_numpy()
    categories = list(pool.dtype.categories)
    index = np.full(len(pool), len(labels), dtype=np.uint32)
    for name, (p, classes) in pools.items():
        of_pool = codes == categories.index(name)
        drawn = acceptance_classes(scenario.seed, [c.share for c in classes], len(pool), (given or {}).get(p))
        to_label = np.array([labels.index(label) for label in class_labels(classes)], dtype=np.uint32)
        index[of_pool] = to_label[drawn[of_pool]]
    return _enum_by_index(index, labels, labels)
