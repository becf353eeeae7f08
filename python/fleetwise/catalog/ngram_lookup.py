"""``NgramLookup``: what a serving engine's CPU n-gram (prompt lookup) proposer costs per step,
an engine profile's ``cpu_step.ngram_lookup`` and a calibration's ``ngram_lookup``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fleetwise.config.base import StrictModel

_Seconds = Annotated[float, Field(ge=0)]
"""Seconds, at least 0."""


class NgramLookup(StrictModel):
    """An n-gram (prompt lookup) proposer's CPU time per step over ``n`` decoding sequences whose
    contexts hold ``tokens`` tokens: ``base + per_seq n + per_seq_squared n^2 + per_context_token
    tokens`` (vLLM's ``NgramProposer``: ``calibration/vllm-cpu/ngram_lookup.csv``)."""

    base: _Seconds = 0.0
    """Seconds per step."""
    per_seq: _Seconds = 0.0
    """Seconds per sequence looked up."""
    per_seq_squared: _Seconds = 0.0
    """Seconds per pair of sequences (vLLM 0.32 gathers the drafts with a list membership test)."""
    per_context_token: _Seconds = 0.0
    """Seconds per context token scanned (the lookup reads each whole context)."""
