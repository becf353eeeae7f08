"""The n-gram lookup fit: vLLM's measured CPU time of its n-gram proposer per step
(``calibration/vllm-cpu/ngram_lookup.csv``, written by ``tools/fidelity/measure_vllm_ngram.py``)
fitted as

    ngram_lookup = base + per_seq * num_seqs + per_seq_squared * num_seqs^2 + per_context_token * context_tokens

(``context_tokens`` summed over the batch) by least squares on relative error, coefficients kept
non-negative (``cpu_step_fit``'s solver). The lookup scans every sequence's whole context (a
Knuth-Morris-Pratt pass over its reversed tokens: the per-token term); gathering its results
tests each request for membership in the list of looked-up ones (the quadratic term, vLLM 0.32).
``cpu_step_fit`` writes it into ``cpu_step.yaml`` as ``ngram_lookup``. Lab tooling, not part of
the fleetwise package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tools.fidelity.cpu_step_fit import _nonneg_relative_lstsq

TERMS = ("base", "per_seq", "per_seq_squared", "per_context_token")
"""Fit terms: constant, per sequence looked up, per pair of sequences, per context token scanned."""


def design(df: pl.DataFrame) -> np.ndarray:
    """The regression matrix of :data:`TERMS` for the points in ``df``."""
    seqs = df["num_seqs"].to_numpy().astype(float)
    tokens = seqs * df["context_tokens"].to_numpy().astype(float)
    return np.column_stack([np.ones(df.height), seqs, seqs * seqs, tokens])


def fit(path: Path) -> dict:
    """The lookup's coefficients (seconds, 4 significant digits) and their residuals over every
    point of ``path`` (matching and non-matching contexts alike)."""
    df = pl.read_csv(path)
    y = df["lookup_median_us"].to_numpy() * 1e-6
    x = design(df)
    coef = [float(f"{c:.4g}") for c in _nonneg_relative_lstsq(x, y)]
    rel = np.abs((x @ np.array(coef) - y) / y)
    return {
        "what": "NgramProposer.propose(): the KMP lookup over each decoding request's context (numba, one thread) and gathering the drafts",
        **dict(zip(TERMS, coef)),
        "residuals": {"median_rel": round(float(np.median(rel)), 4), "max_rel": round(float(np.max(rel)), 4), "points": int(df.height)},
    }
