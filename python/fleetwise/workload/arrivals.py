"""Synthetic arrival processes.

Every generator returns the arrival times, in integer nanoseconds, of ``n`` requests as a
non-decreasing int64 array. Times are computed in floating-point nanoseconds and rounded once at the
end (rounding is monotonic, so the order is kept and the rounding error stays within 0.5 ns instead
of accumulating). The first request arrives after the first gap, not at 0.

The non-homogeneous processes (``diurnal``, ``ramp``) are generated exactly by time rescaling: if
``E_1 < E_2 < ...`` are the arrival times of a unit-rate Poisson process and ``Lambda(t)`` is the
integral of the rate from 0 to ``t``, then ``Lambda^-1(E_i)`` are the arrival times of the
non-homogeneous process. This uses exactly ``n`` exponential draws, so a seed gives the same
requests whatever the rate parameters.
"""

from __future__ import annotations

import math

import numpy as np

from fleetwise.config.limits import MAX_TIME_NS
from fleetwise.workload.config import (
    DiurnalArrivals,
    GammaArrivals,
    OnOffArrivals,
    PoissonArrivals,
    RampArrivals,
)

_NS = 1e9


def _check(n: int, **positive: float) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for name, value in positive.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")


def _to_ns(times_ns: np.ndarray, cause: str = "the rate is far too low") -> np.ndarray:
    """Float nanoseconds rounded to int64; ``ConfigError`` when they are not finite or pass
    ``MAX_TIME_NS`` (``cause``, by default a rate far too low for the number of requests),
    instead of wrapping around."""
    if times_ns.size and not (np.isfinite(times_ns).all() and times_ns.max() <= MAX_TIME_NS):
        from fleetwise.errors import ConfigError

        finite = np.isfinite(times_ns).all()  # NaN (0 * inf) and inf both mean "beyond any clock"
        last = float(times_ns.max()) / _NS if finite else math.inf
        raise ConfigError(
            f"workload.arrivals: the generated arrival times reach {last:.3g} s, past the "
            f"{MAX_TIME_NS / _NS:.3g} s the simulator's clock allows: {cause} for "
            f"{times_ns.size} requests"
        )
    return np.rint(times_ns).astype(np.int64)


def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times, in integer nanoseconds, of ``n`` requests of a Poisson process.

    The times are the cumulative sum of ``n`` exponential gaps with mean ``1 / rate`` seconds, so
    the first request arrives after the first gap (not at 0). They are rounded to the nearest
    nanosecond and are non-decreasing. Returns an int64 array of length ``n``.
    """
    _check(n, rate=rate)
    gaps_ns = rng.exponential(scale=_NS / rate, size=n)
    # Rounding after the cumulative sum (not per gap) keeps the error bounded at 0.5 ns per arrival
    # instead of letting it accumulate; rint is monotonic, so the order is kept.
    return _to_ns(np.cumsum(gaps_ns))


def gamma_arrivals(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (int64 ns) of ``n`` requests whose gaps are independent Gamma variables with
    mean ``1 / rate`` seconds and coefficient of variation ``cv`` (shape ``1 / cv**2``, scale
    ``cv**2 / rate``). ``cv = 1`` is a Poisson process."""
    _check(n, rate=rate, cv=cv)
    shape = 1.0 / cv**2
    # A tiny rate times a tiny shape underflows to 0: an infinite scale then (not a
    # ZeroDivisionError), whose arrivals _to_ns reports as past the clock.
    scale_ns = _NS / (rate * shape) if rate * shape > 0 else math.inf
    with np.errstate(over="ignore", invalid="ignore"):
        gaps_ns = rng.gamma(shape=shape, scale=scale_ns, size=n)
        return _to_ns(np.cumsum(gaps_ns))


def onoff_arrivals(
    n: int, rate: float, on_s: float, off_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Arrival times (int64 ns) of ``n`` requests arriving as a Poisson process at ``rate`` during
    on periods ``[k (on_s + off_s), k (on_s + off_s) + on_s)`` (``k = 0, 1, ...``) and never during
    the off periods between them.

    A Poisson process is drawn in "on time" (the clock that runs only during on periods) and each
    arrival is shifted by the off periods that precede it.
    """
    _check(n, rate=rate, on_s=on_s)
    if not (np.isfinite(off_s) and off_s >= 0):
        raise ValueError(f"off_s must be a finite number >= 0, got {off_s}")
    on_time_ns = np.cumsum(rng.exponential(scale=_NS / rate, size=n))
    on_ns = on_s * _NS
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _to_ns
        completed = np.floor(on_time_ns / on_ns)
        times_ns = on_time_ns + completed * off_s * _NS
    return _to_ns(times_ns, "the rate is far too low, or on_s far too short for off_s,")


def diurnal_rate(t_s: np.ndarray | float, cfg: DiurnalArrivals) -> np.ndarray | float:
    """The rate, requests per second, of a diurnal process at time ``t_s`` (seconds)."""
    angle = 2 * np.pi * (np.asarray(t_s) + cfg.phase_s) / cfg.period_s
    return cfg.mean_rate * (1 + cfg.amplitude * np.sin(angle))


def diurnal_arrivals(n: int, cfg: DiurnalArrivals, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (int64 ns) of ``n`` requests of a Poisson process with rate
    ``mean_rate * (1 + amplitude * sin(2 pi (t + phase_s) / period_s))``.

    The cumulative rate is ``Lambda(t) = m t + (m a T / 2 pi) (cos(2 pi phase / T) -
    cos(2 pi (t + phase) / T))``; it is increasing (``a <= 1``) and within ``m a T / pi`` of
    ``m t``, so each unit-rate arrival ``E`` is inverted by bisection on ``[E/m - aT/pi, E/m +
    aT/pi]`` to well below a nanosecond.
    """
    _check(n, mean_rate=cfg.mean_rate, period_s=cfg.period_s)
    unit = np.cumsum(rng.exponential(size=n))
    m, a, period, phase = cfg.mean_rate, cfg.amplitude, cfg.period_s, cfg.phase_s
    if a == 0 or n == 0:
        return _to_ns(unit / m * _NS)
    omega = 2 * np.pi / period
    offset = np.cos(omega * phase)

    def cumulative(t: np.ndarray) -> np.ndarray:
        """Lambda(t), the expected number of arrivals in [0, t]."""
        return m * t + m * a / omega * (offset - np.cos(omega * (t + phase)))

    spread = a * period / np.pi
    lo = np.maximum(unit / m - spread, 0.0)
    hi = unit / m + spread
    # Halve the bracket until it is below 1e-11 s (or float64 resolution stops the progress).
    iterations = max(1, min(200, math.ceil(math.log2(2 * spread / 1e-11))))
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = cumulative(mid) < unit
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    # hi is non-decreasing in unit up to float rounding; enforce it exactly.
    return _to_ns(np.maximum.accumulate(hi * _NS))


def ramp_rate(t_s: np.ndarray | float, cfg: RampArrivals) -> np.ndarray | float:
    """The rate, requests per second, of a ramp process at time ``t_s`` (seconds)."""
    t = np.minimum(np.asarray(t_s, dtype=float), cfg.duration_s)
    return cfg.start_rate + (cfg.end_rate - cfg.start_rate) * t / cfg.duration_s


def ramp_arrivals(n: int, cfg: RampArrivals, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (int64 ns) of ``n`` requests of a Poisson process whose rate goes linearly
    from ``start_rate`` to ``end_rate`` over ``duration_s`` and then stays at ``end_rate``.

    With ``r0``, ``r1``, ``D`` and slope ``k = (r1 - r0) / D``, the cumulative rate is
    ``r0 t + k t^2 / 2`` up to ``D`` (where it reaches ``D (r0 + r1) / 2``) and grows by ``r1`` per
    second after; it is inverted in closed form, ``t = 2E / (r0 + sqrt(r0^2 + 2kE))`` on the ramp
    (a form that is stable for either sign of ``k``).
    """
    _check(n, end_rate=cfg.end_rate, duration_s=cfg.duration_s)
    r0, r1, duration = cfg.start_rate, cfg.end_rate, cfg.duration_s
    if not (np.isfinite(r0) and r0 >= 0):
        raise ValueError(f"start_rate must be a finite number >= 0, got {r0}")
    unit = np.cumsum(rng.exponential(size=n))
    slope = (r1 - r0) / duration
    ramp_total = duration * (r0 + r1) / 2
    on_ramp = unit <= ramp_total
    e = np.where(on_ramp, unit, 0.0)
    root = np.sqrt(np.maximum(r0 * r0 + 2 * slope * e, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ramp = np.where(e > 0, 2 * e / (r0 + root), 0.0)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _to_ns
        t_after = duration + (unit - ramp_total) / r1
        times = np.where(on_ramp, t_ramp, t_after)
        times_ns = np.maximum.accumulate(times * _NS) if n else times
    return _to_ns(times_ns, "end_rate is far too low")


def generate_arrivals(
    cfg: PoissonArrivals | GammaArrivals | OnOffArrivals | DiurnalArrivals | RampArrivals,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Arrival times (int64 ns, non-decreasing) of ``n`` requests of the synthetic process
    ``cfg``, drawn from ``rng``."""
    if isinstance(cfg, PoissonArrivals):
        return poisson_arrivals(n, cfg.rate, rng)
    if isinstance(cfg, GammaArrivals):
        return gamma_arrivals(n, cfg.rate, cfg.cv, rng)
    if isinstance(cfg, OnOffArrivals):
        return onoff_arrivals(n, cfg.rate, cfg.on_s, cfg.off_s, rng)
    if isinstance(cfg, DiurnalArrivals):
        return diurnal_arrivals(n, cfg, rng)
    if isinstance(cfg, RampArrivals):
        return ramp_arrivals(n, cfg, rng)
    raise TypeError(f"unknown arrival process {type(cfg).__name__}")
