"""Fitting length distributions to observed token counts."""

from __future__ import annotations

import numpy as np


def fit_lognormal(values: np.ndarray | list) -> tuple[float, float]:
    """The maximum-likelihood log-normal fit of positive ``values``: ``(median, sigma)``, where
    ``median = exp(mean(log values))`` and ``sigma`` is the standard deviation of ``log values``
    (divided by n, the maximum-likelihood estimate).

    Raises ``ValueError`` for an empty input or a value that is not a positive finite number.
    """
    raw = np.asarray(values)
    if isinstance(values, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in values):
        raise ValueError("fit_lognormal needs numbers, got a boolean")
    if raw.dtype.kind not in "iuf":  # booleans, strings, objects: not numbers (numpy would convert them)
        raise ValueError(f"fit_lognormal needs numbers, got an array of {raw.dtype}")
    x = raw.astype(np.float64, copy=False)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("fit_lognormal needs a non-empty 1-D array of values")
    if not np.all(np.isfinite(x) & (x > 0)):
        bad = x[~(np.isfinite(x) & (x > 0))][0]
        raise ValueError(f"fit_lognormal needs positive finite values, got {bad}")
    logs = np.log(x)
    return float(np.exp(logs.mean())), float(logs.std())
