"""Fitting a pool's cost-model factors to a deployment's request log (``fleetwise calibrate
--requests``).

The log's requests are replayed on the scenario (``replay.py``) with trial values of a few absolute
calibration factors of one pool, and the factors that bring the simulated TTFT, TPOT and ITL
percentiles closest to the measured ones are kept. The loss is the root mean square of
``log(simulated / measured)`` over p50, p90 and p99 of TTFT, TPOT and, when the log has it, ITL.

The search is a deterministic coordinate descent: for each parameter in turn (in ``PARAMETERS``
order), a grid of ``GRID_POINTS`` values spread evenly in log space over its current bracket, then
a golden-section refinement around the best grid point; each sweep narrows the brackets by
``NARROWING``; it stops after ``MAX_SWEEPS`` sweeps or when a sweep improves the loss by less than
``TOLERANCE``. No derivatives (a simulation is piecewise constant in its factors at fine scale).

The fitted parameters are a list: adding one is one ``FitParameter`` line (any ``Calibration``
field that is a positive number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from fleetwise.calibrate.comparison import LogComparison, compare
from fleetwise.calibrate.replay import pool_index, replay, resolved_calibration, with_calibration
from fleetwise.config.scenario import Scenario
from fleetwise.requestlog import RequestLog


@dataclass(frozen=True)
class FitParameter:
    """One absolute calibration factor the fit may move, within ``[low, high]``."""

    name: str
    """A ``Calibration`` field (docs/cost-model.md)."""
    low: float
    """Smallest value tried (> 0: the search runs in log space)."""
    high: float
    """Largest value tried."""


PARAMETERS: tuple[FitParameter, ...] = (
    FitParameter("iteration_overhead", 1e-5, 5e-2),  # per-step CPU/scheduler time, s
    FitParameter("elementwise_memory", 0.02, 1.0),  # kernel fusion: bandwidth fraction of norms, RoPE, activations
    FitParameter("attention_compute", 0.02, 1.0),  # attention backend: FLOP/s fraction
    FitParameter("layer_overhead", 1e-7, 1e-3),  # launch overhead per layer per iteration, s
    FitParameter("attention_memory", 0.05, 1.0),  # attention backend: bandwidth fraction of decode KV reads
)
"""The parameters fitted by default, in search order."""
OPTIONAL_PARAMETERS: tuple[FitParameter, ...] = (
    FitParameter("seq_overhead", 1e-7, 1e-3),  # per-sequence CPU time per step (vLLM's scheduler and output path), s
    FitParameter("token_overhead", 1e-9, 1e-4),  # per-token CPU time per step (input preparation), s
    FitParameter("moe_layer_overhead", 1e-7, 1e-3),  # fused-MoE layer's fixed cost, s
    FitParameter("moe_dispatch_memory", 0.02, 1.0),  # MoE dispatch and combine: bandwidth fraction of moving token-expert pairs
)
"""Parameters fitted only when named with ``--param`` (engine-profile terms, docs/engines.md)."""
MOE_ONLY = ("moe_layer_overhead", "moe_dispatch_memory")
"""Parameters that only a model with expert (MoE) layers spends time on."""
UNSET_MEANS = {"elementwise_memory": "memory", "attention_memory": "memory", "moe_dispatch_memory": "elementwise_memory"}
"""Factors that, left unset, take another factor's value (``Calibration``): a fit starts there."""
FIT_METRICS = ("ttft", "tpot", "itl")
"""Metrics the loss compares by default (ITL only when the log has it)."""
FIT_STATISTICS = ("p50", "p90", "p99")
"""Statistics of each metric the loss compares."""
GRID_POINTS = 7
"""Values tried on each parameter's bracket before refining."""
GOLDEN_STEPS = 12
"""Golden-section steps around the best grid value."""
NARROWING = 4.0
"""Factor each sweep narrows a parameter's bracket (in log space) by."""
MAX_SWEEPS = 3
"""Sweeps over all parameters at most."""
TOLERANCE = 1e-3
"""A sweep improving the loss by less than this ends the search."""


def loss(comparison: LogComparison, metrics: Sequence[str] = FIT_METRICS) -> float:
    """The fit's loss: RMS of ``log(simulated / measured)`` over ``metrics`` x ``FIT_STATISTICS``
    (those the log has); infinite when a compared value is missing (nothing finished)."""
    terms = []
    for row in comparison.rows:
        if row.metric in metrics and row.statistic in FIT_STATISTICS:
            if row.error is None or row.error <= -1:
                return math.inf
            terms.append(math.log1p(row.error) ** 2)
    return math.sqrt(sum(terms) / len(terms)) if terms else math.inf


@dataclass
class LogFit:
    """The outcome of fitting one pool to one log."""

    pool: str
    """The fitted pool."""
    gpu: str
    """Its GPU."""
    start: dict[str, float]
    """The parameters' values before the fit (the pool's resolved factors)."""
    fitted: dict[str, float]
    """The parameters' fitted values."""
    before: LogComparison
    """The comparison with the starting values."""
    after: LogComparison
    """The comparison with the fitted values."""
    loss_before: float
    """``loss(before)``."""
    loss_after: float
    """``loss(after)``."""
    evaluations: int
    """Replays run."""
    metrics: tuple[str, ...]
    """The metrics the loss compared."""
    scenario: Scenario = field(repr=False)
    """The scenario with the fitted values in the pool's ``calibration:``."""


def fit_log(scenario: Scenario, log: RequestLog, pool: str | None = None, parameters: Sequence[FitParameter] = PARAMETERS,
            metrics: Sequence[str] = FIT_METRICS) -> LogFit:
    """Fit ``parameters`` of pool ``pool`` (``None``: the only pool) so that replaying ``log`` on
    ``scenario`` matches its measured percentiles of ``metrics`` (module docstring; e.g. only
    ``("tpot", "itl")`` when the measured TTFT includes front-end time the model does not have).
    Deterministic: the same inputs give the same values. Raises ``ConfigError`` for an unknown
    metric, and for a log that cannot determine the fit (fewer requests than parameters; no output
    of two or more tokens when TPOT or ITL is fitted), and for a parameter the pool's model cannot
    spend time on (``check_parameters``)."""
    from fleetwise.calibrate.comparison import METRICS
    from fleetwise.errors import ConfigError

    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(f"fit metrics {', '.join(unknown) or '(none)'}: allowed: {', '.join(METRICS)}")
    n, names = log.frame.height, ", ".join(p.name for p in parameters)
    if n < len(parameters):
        raise ConfigError(f"{log.path}: {n} request(s) cannot determine {len(parameters)} parameters ({names}); "
                          "a log needs at least one request per parameter (hundreds to fit well)")
    if set(metrics) - {"ttft"} and int(log.frame["output_tokens"].max()) < 2:
        raise ConfigError(f"{log.path}: no request generated two or more tokens, so the log has no TPOT or ITL to fit; "
                          "use a log with longer outputs, or fit TTFT alone (--metric ttft) with the parameters it depends on")
    index = pool_index(scenario, pool)
    check_parameters(scenario, index, parameters)
    base = resolved_calibration(scenario, index)
    start = {p.name: float(_effective(base, p.name)) for p in parameters}
    cache: dict[tuple, tuple[float, LogComparison]] = {}

    def evaluate(values: dict[str, float]) -> float:
        key = tuple(round(values[p.name], 15) for p in parameters)
        if key not in cache:
            comparison = compare(log, replay(with_calibration(scenario, index, values), log))
            cache[key] = (loss(comparison, metrics), comparison)
        return cache[key][0]

    current = dict(start)
    best = evaluate(current)
    before_loss, before = cache[tuple(round(current[p.name], 15) for p in parameters)]
    zero = [f"{r.metric} {r.statistic}" for r in before.rows if r.metric in metrics and r.statistic in FIT_STATISTICS and r.measured_s == 0]
    if zero:  # log(simulated / 0): every loss is infinite and the search would keep its start
        raise ConfigError(f"{log.path}: the log's {', '.join(zero)} is 0 s, which no simulated value can be compared with; "
                          "fit other metrics (--metric) or use a log whose latencies were measured")

    width = {p.name: math.log(p.high / p.low) for p in parameters}
    for _ in range(MAX_SWEEPS):
        sweep_start = best
        for p in parameters:
            best, current = _search(p, current, width[p.name], best, evaluate)
            width[p.name] /= NARROWING
        if sweep_start - best < TOLERANCE:
            break
    after_loss, after = cache[tuple(round(current[p.name], 15) for p in parameters)]
    if not math.isfinite(after_loss):  # nothing to compare anywhere in the search: no profile from it
        raise ConfigError(f"{log.path}: no parameter values tried let the replay finish a request to compare with the log "
                          f"({after.finished} of {after.requests} finished, {after.rejected} rejected); check that the scenario's pool can serve the log's requests")
    gpu = scenario.cluster.pools[index].gpu
    return LogFit(pool=scenario.cluster.pools[index].name, gpu=gpu, start=start, fitted=current, before=before,
                  after=after, loss_before=before_loss, loss_after=after_loss, evaluations=len(cache), metrics=tuple(metrics),
                  scenario=with_calibration(scenario, index, current))


def check_parameters(scenario: Scenario, index: int, parameters: Sequence[FitParameter]) -> None:
    """``ConfigError`` naming a parameter that cannot change pool ``index``'s simulated times, so a
    fit of it would report a value no log determined: a MoE-only one (``MOE_ONLY``) on a model
    without expert layers (nor a draft model with them)."""
    from fleetwise.catalog import lookup
    from fleetwise.errors import ConfigError

    pool = scenario.cluster.pools[index]
    model = lookup("model", pool.model, scenario.models, f"cluster.pools.{index}.model")
    has_experts = model.moe_layers > 0
    spec = getattr(pool, "speculative", None)
    draft = getattr(spec, "draft_model", None) if spec is not None else None
    if draft and not has_experts:
        has_experts = lookup("model", draft, scenario.models, f"cluster.pools.{index}.speculative.draft_model").moe_layers > 0
    moe = [p.name for p in parameters if p.name in MOE_ONLY]
    if moe and not has_experts:
        raise ConfigError(f"--param {', '.join(moe)}: pool {pool.name}'s model {pool.model} has no expert (MoE) layers, so "
                          f"{'it' if len(moe) == 1 else 'they'} cannot change the simulated latencies; fit "
                          f"{'it' if len(moe) == 1 else 'them'} on a MoE model's log, or leave {'it' if len(moe) == 1 else 'them'} out")


def _effective(calibration: dict, name: str) -> float:
    """The value factor ``name`` has in ``calibration`` (an unset one's stand-in, or 0)."""
    value = calibration.get(name)
    while value is None and name in UNSET_MEANS:
        name = UNSET_MEANS[name]
        value = calibration.get(name)
    return value or 0.0


def _search(p: FitParameter, current: dict[str, float], width: float, best: float, evaluate) -> tuple[float, dict[str, float]]:
    """Minimise over parameter ``p`` alone: a log-spaced grid over a bracket of ``width`` (log
    units) around its value, clipped to its bounds, then golden-section around the best grid
    point. Returns the best loss and values (the current ones when nothing is better)."""
    lo_b, hi_b = math.log(p.low), math.log(p.high)
    x0 = min(max(math.log(max(current[p.name], p.low)), lo_b), hi_b)
    lo, hi = max(lo_b, x0 - width / 2), min(hi_b, x0 + width / 2)
    if hi - lo < 1e-12:
        return best, current

    def at(x: float) -> float:
        return evaluate({**current, p.name: math.exp(x)})

    step = (hi - lo) / (GRID_POINTS - 1)
    grid = [lo + i * step for i in range(GRID_POINTS)]
    losses = [at(x) for x in grid]
    i = min(range(GRID_POINTS), key=lambda k: (losses[k], k))
    a, b = max(lo, grid[i] - step), min(hi, grid[i] + step)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = at(c), at(d)
    for _ in range(GOLDEN_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = at(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = at(d)
    candidates = [(losses[i], grid[i]), (fc, c), (fd, d)]
    value, x = min(candidates, key=lambda t: t[0])
    if value < best:
        return value, {**current, p.name: math.exp(x)}
    return best, current
