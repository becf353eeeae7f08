"""User-defined hardware and models outside a scenario: a file of ``gpus:``, ``models:``, ``pims:``
and ``storage:`` sections (the scenario's own schema), or a whole scenario file whose sections are read.
``fleetwise estimate --specs FILE`` uses it."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from fleetwise.catalog import GpuSpec, ModelSpec, PimSpec, StorageSpec
from fleetwise.config.base import StrictModel
from fleetwise.config.limits import MAX_YAML_BYTES
from fleetwise.config.yaml_input import decode_text, parse_yaml
from fleetwise.errors import ConfigError


SECTIONS = ("gpus", "models", "pims", "storage")
"""The sections of a specs file that are read (a scenario's sections of the same names)."""


class Specs(StrictModel):
    """The user-defined entries of a specs file (unknown top-level keys of a scenario are ignored)."""

    gpus: dict[str, GpuSpec] = {}
    """GPUs by name (a scenario's ``gpus:`` schema)."""
    models: dict[str, ModelSpec] = {}
    """Models by name (a scenario's ``models:`` schema)."""
    pims: dict[str, PimSpec] = {}
    """PIM devices by name (a scenario's ``pims:`` schema)."""
    storage: dict[str, StorageSpec] = {}
    """Flash drives by name (a scenario's ``storage:`` schema)."""


def load_specs(path: str | Path) -> Specs:
    """Reads the ``gpus``, ``models``, ``pims`` and ``storage`` sections of ``path``; a ConfigError
    names the file and the field path of anything wrong."""
    from fleetwise.config.load import format_validation_error

    from fleetwise.paths import path_kind, resolved

    p = Path(path)
    kind = path_kind(p, "--specs")
    if kind == "dir":
        raise ConfigError(f"{p}: is a directory; --specs takes a YAML file")
    if kind != "file":
        raise ConfigError(f"{p}: specs file not found" if kind is None else f"{p}: not a regular file (a pipe, device or socket); --specs takes a YAML file")
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{p}: over {MAX_YAML_BYTES} bytes")
        data = parse_yaml(decode_text(p.read_bytes(), str(p)), str(p))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a specs file is a mapping with gpus:, models:, pims: and/or storage: sections")
    picked = {k: data[k] for k in SECTIONS if k in data}
    if not picked:
        raise ConfigError(f"{p}: no gpus:, models:, pims: or storage: section to read")
    try:
        return Specs.model_validate(picked, context={"base_dir": resolved(p, "--specs").parent})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(p), Specs)) from None
