"""Per-request latencies as vLLM's ``bench serve`` defines them, and the inter-token latency.

TTFT = first token - arrival; E2E = last token - arrival; TPOT = (E2E - TTFT) / (output - 1) for
requests with more than one output token; ITL = gaps between consecutive tokens of a request
(percentiles from the core's streaming sketch, relative error 0.5%).
"""

from __future__ import annotations

import numpy as np

from fleetwise.metrics.distribution import Distribution


def request_latencies(arrival_ns: np.ndarray, first_token_ns: np.ndarray, completion_ns: np.ndarray, finished: np.ndarray,
                      output_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TTFT, TPOT, E2E) of each request, seconds; NaN where a request did not finish (TPOT also
    where it has one output token)."""
    ttft = np.where(finished, (first_token_ns - arrival_ns) * 1e-9, np.nan)
    e2e = np.where(finished, (completion_ns - arrival_ns) * 1e-9, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(finished & (output_tokens > 1), (e2e - ttft) / (output_tokens - 1), np.nan)
    return ttft, tpot, e2e


def itl_distribution(itl: dict) -> Distribution:
    """The summary's ITL entry from the core's sketch (``mean``, ``p50``, ``p90``, ``p99``)."""
    return {"mean": itl["mean"], "p50": itl["p50"], "p90": itl["p90"], "p99": itl["p99"]}
