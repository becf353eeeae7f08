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


def parse_grid(options: list[str], fixed: list[str] | tuple[str, ...] = ()) -> list[tuple[str, list]]:
    """Parses ``path=v1,v2,...`` options; values are YAML scalars (numbers, booleans, strings),
    read with the guards of ``--set`` (invalid YAML, nesting and size are ConfigErrors). A path
    that one of ``fixed`` (the command's ``--set PATH=VALUE`` options) also sets is refused: the
    grid's values would silently replace it at every point."""
    from fleetwise.config.yaml_input import parse_yaml
    from fleetwise.errors import ConfigError

    set_paths = {o.split("=", 1)[0].strip(): o for o in fixed if "=" in o}
    grid = []
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--grid {opt!r}: expected PATH=V1,V2,... e.g. workload.arrivals.rate=4,8,16")
        path, raw = opt.split("=", 1)
        if not path.strip():
            raise ConfigError(f"--grid {opt[:80]!r}: no path before '='; expected PATH=V1,V2,... e.g. workload.arrivals.rate=4,8,16")
        parts = [v.strip() for v in raw.split(",")]
        if not any(parts):
            raise ConfigError(f"--grid {opt[:80]!r}: no values")
        if "" in parts:  # 1,,2 or a trailing comma: a value left out by mistake, or meant as an empty string
            raise ConfigError(f"--grid {path.strip()}: an empty value between commas in {raw[:80]!r}; remove the extra comma")
        values = [parse_yaml(v, f"--grid {path.strip()}: value {v[:40]!r}") for v in parts]
        if any(p == path.strip() for p, _ in grid):
            raise ConfigError(f"--grid {path.strip()} given twice")
        if path.strip() in set_paths:
            raise ConfigError(f"--grid {path.strip()}: --set {set_paths[path.strip()][:80]} sets it too, and the grid's values would replace it "
                              "at every point; give it in one of them")
        for i, v in enumerate(values):
            if any(v == w and isinstance(v, bool) == isinstance(w, bool) for w in values[:i]):
                raise ConfigError(f"--grid {path.strip()}: the value {v!r} is given twice (the same point twice)")
        grid.append((path.strip(), values))
    return grid


MAX_POINTS = 100_000
"""The most points one sweep grid may have (10,000 points of 20k requests each run in about 20
minutes on two cores); a larger product is refused before it is expanded."""


def expand(grid: list[tuple[str, list]]) -> list[Point]:
    """Every combination of the grid's values, the last path varying fastest; ``ConfigError``
    naming each path's number of values when there are more than ``MAX_POINTS``."""
    if not grid:
        return [Point(())]
    total = 1
    for _, values in grid:
        total *= len(values)
    if total > MAX_POINTS:
        from fleetwise.errors import ConfigError

        dims = " x ".join(f"{len(v)} ({p})" for p, v in grid)
        raise ConfigError(f"--grid: {dims} = {total:,} points; a sweep may have at most {MAX_POINTS:,}: narrow the grid or split the sweep")
    paths = [p for p, _ in grid]
    return [Point(tuple(zip(paths, combo))) for combo in itertools.product(*(v for _, v in grid))]
