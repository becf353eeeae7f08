"""Fitting length distributions to observed token counts."""

from __future__ import annotations

import numpy as np


def fit_lognormal(values: np.ndarray | list) -> tuple[float, float]:
    """The maximum-likelihood log-normal fit of positive ``values``: ``(median, sigma)``, where
    ``median = exp(mean(log values))`` and ``sigma`` is the standard deviation of ``log values``
    (divided by n, the maximum-likelihood estimate).

    Raises ``ValueError`` for an empty input or a value that is not a positive finite number.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("fit_lognormal needs a non-empty 1-D array of values")
    if not np.all(np.isfinite(x) & (x > 0)):
        bad = x[~(np.isfinite(x) & (x > 0))][0]
        raise ValueError(f"fit_lognormal needs positive finite values, got {bad}")
    logs = np.log(x)
    return float(np.exp(logs.mean())), float(logs.std())
