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
        or comments) and of the files it names (engine profiles, ``hf_config`` files, traces: any
        string value naming a file, relative to the scenario's directory or the current one): a
        sweep directory records it, so that a rerun after the scenario or one of those files
        changed is refused instead of resuming points of the old one. Files over 1 GiB count by
        size and modification time."""
        import hashlib
        import json

        h = hashlib.sha1(json.dumps(self._data, sort_keys=True, default=str).encode())
        for path in sorted(set(_named_files(self._data, self.base_dir))):  # none named: the hash of the content alone
            h.update(b"\0" + str(path).encode() + b"\0")
            size = path.stat().st_size
            if size > 1 << 30:
                h.update(f"{size}:{path.stat().st_mtime_ns}".encode())
                continue
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    def load(self, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
        """The validated scenario with ``overrides`` (``PATH=VALUE`` strings) applied on top."""
        from fleetwise.config.load import apply_override, scenario_from_dict

        data = copy.deepcopy(self._data)
        for assignment in overrides:
            apply_override(data, assignment, self.source)
        return scenario_from_dict(data, self.source, self.base_dir)


def _named_files(data, base_dir: Path | None):
    """The regular files that string values in ``data`` name (path-like strings only: with a ``/``
    or a file extension), tried against ``base_dir`` and then the current directory."""
    if isinstance(data, dict):
        for v in data.values():
            yield from _named_files(v, base_dir)
    elif isinstance(data, list):
        for v in data:
            yield from _named_files(v, base_dir)
    elif isinstance(data, str) and 0 < len(data) < 4096 and ("/" in data or Path(data).suffix):
        try:
            raw = Path(data).expanduser()
            for candidate in ([raw] if raw.is_absolute() else [*([base_dir / raw] if base_dir else []), Path.cwd() / raw]):
                if candidate.is_file():
                    yield candidate.resolve()
                    break
        except (OSError, ValueError):  # a name the OS refuses is no file
            return
