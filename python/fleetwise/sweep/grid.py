"""Expanding ``--grid path=v1,v2`` options into the points of a sweep."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

RATE_PATH = "workload.arrivals.rate"


@dataclass(frozen=True)
class Point:
    """One point of a sweep: the overrides it applies to the base scenario."""

    assignments: tuple[tuple[str, object], ...]
    """(dotted path, value) pairs, in grid order."""

    @property
    def id(self) -> str:
        """A stable identifier: the same assignments always give the same id (this is what resume keys on)."""
        canon = json.dumps([[p, v] for p, v in self.assignments], sort_keys=True, default=str)
        return hashlib.sha1(canon.encode()).hexdigest()[:12]

    def overrides(self) -> list[str]:
        """The assignments as ``--set`` strings."""
        return [f"{p}={json.dumps(v)}" for p, v in self.assignments]  # JSON is YAML: a string stays a string ('null', 'yes')

    @property
    def label(self) -> str:
        """The point's series label: its non-rate assignments, or ``all``."""
        parts = [f"{p}={v}" for p, v in self.assignments if p != RATE_PATH]
        return ", ".join(parts) if parts else "all"

    @property
    def rate(self) -> float | None:
        """The arrival rate this point sets, if it sets one."""
        for p, v in self.assignments:
            if p == RATE_PATH:
                return float(v)
        return None


def parse_grid(options: list[str]) -> list[tuple[str, list]]:
    """Parses ``path=v1,v2,...`` options; values are YAML scalars (numbers, booleans, strings),
    read with the guards of ``--set`` (invalid YAML, nesting and size are ConfigErrors)."""
    from fleetwise.config.yaml_input import parse_yaml
    from fleetwise.errors import ConfigError

    grid = []
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--grid {opt!r}: expected PATH=V1,V2,... e.g. workload.arrivals.rate=4,8,16")
        path, raw = opt.split("=", 1)
        values = [parse_yaml(v.strip(), f"--grid {path.strip()}: value {v.strip()[:40]!r}") for v in raw.split(",") if v.strip() != ""]
        if not values:
            raise ConfigError(f"--grid {opt!r}: no values")
        if any(p == path.strip() for p, _ in grid):
            raise ConfigError(f"--grid {path.strip()} given twice")
        for i, v in enumerate(values):
            if any(v == w and isinstance(v, bool) == isinstance(w, bool) for w in values[:i]):
                raise ConfigError(f"--grid {path.strip()}: the value {v!r} is given twice (the same point twice)")
        grid.append((path.strip(), values))
    return grid


def expand(grid: list[tuple[str, list]]) -> list[Point]:
    """Every combination of the grid's values, the last path varying fastest."""
    if not grid:
        return [Point(())]
    paths = [p for p, _ in grid]
    return [Point(tuple(zip(paths, combo))) for combo in itertools.product(*(v for _, v in grid))]
