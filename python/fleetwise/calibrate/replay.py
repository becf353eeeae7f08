"""Replaying a deployment's request log on a scenario's cluster: the scenario gives the cluster,
pools and policies, the log gives exactly the requests (arrival times, prompt and output lengths),
replacing the scenario's workload section."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from fleetwise.config.scenario import PoolConfig, Scenario
from fleetwise.requestlog import RequestLog

PLACEHOLDER_WORKLOAD = {"arrivals": {"kind": "poisson", "rate": 1.0}, "lengths": {"kind": "constant", "prompt": 1, "output": 1}, "requests": 1}
"""The workload put in place of a scenario file's own: never run (the log replaces it), it only
lets the rest of the scenario validate."""


def load_replay_scenario(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Read a scenario file to replay a log on. Its ``workload:`` section is replaced (and may be
    left out): the log gives the requests; everything else is read and validated as ``fleetwise
    run`` does, ``overrides`` (``path=value``) applied. Raises ``ConfigError`` naming the file and
    field."""
    from fleetwise.config.load import load_scenario

    return load_scenario(path, (*overrides, f"workload={_flow(PLACEHOLDER_WORKLOAD)}"))


def _flow(value: Mapping) -> str:
    """``value`` as one-line YAML (for a ``--set`` override)."""
    import yaml

    return yaml.safe_dump(dict(value), default_flow_style=True, width=10**6).strip()


def pool_index(scenario: Scenario, pool: str | None) -> int:
    """The index of pool ``pool`` (``None``: the only pool). Raises ``ConfigError`` naming the pools
    when it is not there or when ``None`` is ambiguous."""
    from fleetwise.errors import ConfigError

    names = [p.name for p in scenario.cluster.pools]
    if pool is None:
        if len(names) > 1:
            raise ConfigError(f"{scenario.source or '<scenario>'}: the scenario has pools {', '.join(names)}; name one with --pool")
        return 0
    if pool not in names:
        raise ConfigError(f"{scenario.source or '<scenario>'}: no pool {pool!r}; pools: {', '.join(names)}")
    return names.index(pool)


def resolved_calibration(scenario: Scenario, index: int) -> dict:
    """The absolute cost-model factors pool ``index`` runs with (its GPU's, engine's and its own
    ``calibration:`` override resolved), as a dict of the ``Calibration`` fields."""
    from fleetwise.cluster import resolve_pool

    return dict(resolve_pool(scenario, index, scenario.cluster.pools[index])["calibration"])


def with_calibration(scenario: Scenario, index: int, values: Mapping[str, float]) -> Scenario:
    """A copy of ``scenario`` whose pool ``index`` has ``values`` added to its ``calibration:``
    override (absolute factors; the others keep their resolved values)."""
    from fleetwise.catalog import CalibrationOverride

    pool: PoolConfig = scenario.cluster.pools[index]
    current = pool.calibration.model_dump(exclude_none=True) if pool.calibration is not None else {}
    override = CalibrationOverride.model_validate({**current, **values})
    pools = list(scenario.cluster.pools)
    pools[index] = pool.model_copy(update={"calibration": override})
    copy = scenario.model_copy(update={"cluster": scenario.cluster.model_copy(update={"pools": pools})})
    copy._source, copy._base_dir = scenario._source, scenario._base_dir
    return copy


def replay(scenario: Scenario, log: RequestLog):
    """Simulate exactly the log's requests on ``scenario``'s cluster; returns the ``Result``."""
    from fleetwise.simulate import simulate

    return simulate(scenario, workload=log.to_workload())
