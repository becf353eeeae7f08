"""Writing a log fit as an engine profile file (the format of docs/calibration.md, "Engine profile
files"): ``based_on`` the pool's engine, ``per_gpu`` absolute factors for the fitted GPU, and the
record of what it was fitted from and how well it fits."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleetwise.calibrate.comparison import LogComparison
from fleetwise.calibrate.log_fit import LogFit
from fleetwise.requestlog import RequestLog


def _rounded(x: float | None, digits: int = 4) -> float | None:
    """``x`` to ``digits`` significant digits (``None`` stays)."""
    return None if x is None else float(f"{x:.{digits}g}")


def residuals(comparison: LogComparison) -> dict[str, dict[str, float | None]]:
    """Relative errors as ``{metric: {statistic: error}}``, 4 significant digits."""
    out: dict[str, dict[str, float | None]] = {}
    for row in comparison.rows:
        out.setdefault(row.metric, {})[row.statistic] = _rounded(row.error)
    return out


def engine_profile(fit: LogFit, log: RequestLog, scenario_path: str | Path, select: dict[str, str] | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The profile as a dict: ``based_on`` (the pool's engine; ``vllm`` when the scenario names
    none), ``per_gpu: {gpu: factors}`` (the fitted values plus the factors the pool's own
    ``calibration:`` sets, so that the profile reproduces what was fitted), ``fitted_from`` and
    ``residuals`` (relative errors per metric after the fit). ``select`` (the log's row selection)
    and ``overrides`` (the scenario's ``--set`` values) are recorded when given."""
    pool = fit.scenario.cluster.pools[[p.name for p in fit.scenario.cluster.pools].index(fit.pool)]
    engine = fit.scenario.cluster.engine_of(pool)
    factors = pool.calibration.model_dump(exclude_none=True) if pool.calibration is not None else {}
    factors.update({k: _rounded(v, 6) for k, v in fit.fitted.items()})
    return {
        "based_on": str(engine),
        "per_gpu": {fit.gpu: factors},
        "fitted_from": {
            "log": str(log.path),
            "log_format": log.format,
            **({"select": dict(select)} if select else {}),
            "scenario": str(scenario_path),
            **({"scenario_overrides": list(overrides)} if overrides else {}),
            "pool": fit.pool,
            "n_requests": len(log),
            "parameters": list(fit.fitted),
            "metrics": list(fit.metrics),
            "start": {k: _rounded(v, 6) for k, v in fit.start.items()},
            "loss_before": _rounded(fit.loss_before),
            "loss_after": _rounded(fit.loss_after),
            "errors_before": residuals(fit.before),
            "errors_after": residuals(fit.after),
            "replays": fit.evaluations,
        },
        "residuals": residuals(fit.after),
    }


def write_profile(profile: dict, path: str | Path) -> Path:
    """Write ``profile`` as YAML with a header saying what it is; ``ConfigError`` naming the path
    when it cannot be written."""
    from fleetwise.errors import ConfigError

    path = Path(path)
    src = profile["fitted_from"]
    options = "".join(f" --select {k}={v}" for k, v in src.get("select", {}).items())
    options += "".join(f" --set {o}" for o in src.get("scenario_overrides", ()))
    header = (f"# Engine profile fitted by `fleetwise calibrate --requests {src['log']} --scenario {src['scenario']}"
              f" --pool {src['pool']}{options}`\n# on {src['n_requests']} requests; residuals: relative errors "
              "(simulated / measured - 1) after the fit.\n")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + yaml.safe_dump(profile, sort_keys=False))
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the profile: {e.strerror or e}") from None
    return path
