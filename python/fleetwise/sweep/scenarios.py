"""A sweep's base scenario, read and parsed once; each point's scenario is a copy with its overrides.

Parsing the scenario's YAML costs milliseconds (PyYAML in Python, with the nesting checks of
``fleetwise.config.yaml_input``); a sweep of 10,000 points that parsed the file for every point, once
to validate it up front and once more to run it, spent minutes of its driver's time doing so.
``BaseScenario`` reads and parses the file once, applies the sweep's ``--set`` overrides, and builds
every point's scenario from a deep copy of that data (YAML aliases stay shared, as in a fresh parse),
so a point costs only its own overrides and validation — with exactly the scenario, and the errors,
that ``load_scenario(path, [*base_overrides, *point_overrides])`` gives.

It pickles small (the parsed data, not the file), so worker processes and Ray tasks receive it whole
and read no file to build a point's scenario.
"""

from __future__ import annotations

import copy
from pathlib import Path

from fleetwise.config.scenario import Scenario


class BaseScenario:
    """The scenario file ``path`` with the overrides ``base_overrides`` applied, not yet validated.

    ``load(overrides)`` validates one point's scenario. Raises ConfigError naming the file when it
    cannot be read or parsed, or when a base override does not apply.
    """

    def __init__(self, path: str | Path, base_overrides: list[str] | tuple[str, ...] = ()):
        from fleetwise.config.load import apply_override, read_scenario_file

        data, self.source, self.base_dir = read_scenario_file(path)
        for assignment in base_overrides:
            apply_override(data, assignment, self.source)
        self._data = data

    def fingerprint(self) -> str:
        """A hash of the scenario's content with the base overrides applied (not of its formatting
        or comments): a sweep directory records it, so that a rerun after the file changed is
        refused instead of resuming points of the old scenario. Files the scenario names (traces)
        are not part of it."""
        import hashlib
        import json

        return hashlib.sha1(json.dumps(self._data, sort_keys=True, default=str).encode()).hexdigest()

    def load(self, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
        """The validated scenario with ``overrides`` (``PATH=VALUE`` strings) applied on top."""
        from fleetwise.config.load import apply_override, scenario_from_dict

        data = copy.deepcopy(self._data)
        for assignment in overrides:
            apply_override(data, assignment, self.source)
        return scenario_from_dict(data, self.source, self.base_dir)
