"""A design study: named cluster designs built from one base scenario, each provisioned within the
power (iso-power) or the cost (iso-cost) of a reference design, compared by their throughput under
the same SLOs (Splitwise's cluster-design evaluation; docs/splitwise-designs.md).

The study file names the base scenario (relative to the study file), the SLO targets and the
attainment they need, the reference design, and each design as ``--set``-style overrides of the
base scenario plus the budgets it claims to meet. Loading checks every design's overrides against
the scenario schema and every design's watts and dollars per hour against its budgets, so a study
that is not what it claims to be is refused before any simulation runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator

from fleetwise.config.base import StrictModel
from fleetwise.config.limits import MAX_YAML_BYTES

PROVISIONINGS = ("iso-power", "iso-cost")
"""The budgets a design can be provisioned under: the reference design's watts, or its dollars per hour."""
BUDGET_FIELD = {"iso-power": "watts", "iso-cost": "dollars_per_hour"}
"""The priced quantity (``fleetwise.sweep.placement.price``) each provisioning bounds."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class DesignConfig(StrictModel):
    """One cluster design: how it differs from the base scenario, and the budgets it is provisioned under."""

    provisioning: list[Literal["iso-power", "iso-cost"]] = Field(min_length=1)
    """The budgets this design must fit: ``iso-power`` (at most the reference design's watts, at
    TDP or the power cap) and/or ``iso-cost`` (at most its dollars per hour)."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the base scenario, ``PATH: VALUE`` as ``--set PATH=VALUE`` (e.g.
    ``cluster.pools: [...]``); empty: the base scenario as it is."""
    description: str = Field(default="", max_length=1000)
    """What the design is (shown in the docs' table; free text)."""

    def overrides(self) -> list[str]:
        """The design's ``set`` as ``--set`` strings (values as JSON, which the overrides read as YAML)."""
        return [f"{path}={json.dumps(value)}" for path, value in self.set.items()]


class DesignStudy(StrictModel):
    """A set of cluster designs compared under the same SLOs and budgets."""

    name: str = Field(min_length=1, max_length=64)
    """The study's name; it names the default output directory (sweeps/<name>)."""
    scenario: str = Field(min_length=1, max_length=4096)
    """The base scenario file, relative to the study file."""
    slo: dict[Literal["ttft", "tpot", "e2e", "scheduling_delay"], float] = Field(min_length=1)
    """Latency targets, seconds, that a request must all meet (DistServe's goodput definition)."""
    attainment: float = Field(default=0.9, gt=0, le=1)
    """Fraction of requests that must meet every target at the design's throughput."""
    designs: dict[str, DesignConfig] = Field(min_length=1)
    """The designs, by name (letters, digits, ``.``, ``_``, ``-``; they name output directories)."""
    reference: str
    """The design whose watts and dollars per hour are the iso-power and iso-cost budgets."""
    low: float = Field(default=1.0, gt=0, le=1e6)
    """Lowest arrival rate the throughput search tries, requests per second."""
    tolerance: float = Field(default=0.03, ge=0.001, le=0.5)
    """Relative width at which the throughput search's bisection stops."""

    _source: str = PrivateAttr(default="<study>")
    _base_dir: Path = PrivateAttr(default=Path("."))

    @field_validator("slo", mode="before")
    @classmethod
    def _targets_are_numbers(cls, v: Any) -> Any:
        """A target is a number as YAML writes one: ``true`` (read as 1 s) and ``"0.5"`` are not."""
        if isinstance(v, dict):
            for name, seconds in v.items():
                if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                    raise ValueError(f"{name}: {seconds!r} is not a number of seconds")
        return v

    @field_validator("slo")
    @classmethod
    def _targets_positive(cls, v: dict[str, float]) -> dict[str, float]:
        """Every SLO target is a positive, finite number of seconds."""
        for name, seconds in v.items():
            if not seconds > 0:
                raise ValueError(f"{name}: {seconds} is not a positive number of seconds")
        return v

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, v: str) -> str:
        """The study's name names an output directory, so it is one plain file name."""
        if not _NAME.match(v):
            raise ValueError("must be letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit")
        return v

    @field_validator("designs")
    @classmethod
    def _design_names_are_plain(cls, v: dict[str, DesignConfig]) -> dict[str, DesignConfig]:
        """Design names name output directories, so each is one plain file name."""
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"{name!r}: a design name must be letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit")
        return v

    @field_validator("reference")
    @classmethod
    def _reference_is_a_design(cls, v: str, info: ValidationInfo) -> str:
        """The reference names one of the designs (checked when the designs themselves are valid)."""
        designs = info.data.get("designs")
        if designs is not None and v not in designs:
            raise ValueError(f"{v!r} is not a design; allowed: {', '.join(designs)}")
        return v

    @property
    def source(self) -> str:
        """The study file it was loaded from."""
        return self._source

    @property
    def scenario_path(self) -> Path:
        """The base scenario file, resolved against the study file's directory."""
        p = Path(self.scenario)
        return p if p.is_absolute() else self._base_dir / p


def load_design_study(path: str | Path) -> DesignStudy:
    """Reads and validates a design-study file, then checks that every design builds a valid
    scenario and fits its budgets (``check_budgets``). Errors are ``ConfigError`` naming the file
    and the field path."""
    from fleetwise.config.load import format_validation_error
    from fleetwise.config.yaml_input import decode_text, parse_yaml
    from fleetwise.errors import ConfigError

    from fleetwise.paths import path_kind, resolved

    p = Path(path)
    kind = path_kind(p, "design-study file")
    if kind != "file":
        raise ConfigError({None: f"{p}: design-study file not found", "dir": f"{p}: is a directory, not a design-study file"}.get(
            kind, f"{p}: not a regular file (a pipe, device or socket); give a design-study file"))
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the design-study file: {exc.strerror or exc}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: {len(raw)} bytes; a design-study file may have at most {MAX_YAML_BYTES}")
    data = parse_yaml(decode_text(raw, str(p)), str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a design study must be a mapping with name, scenario, slo, reference and designs")
    try:
        study = DesignStudy.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(p), DesignStudy)) from None
    study._source = str(p)
    study._base_dir = resolved(p, "design-study file").parent
    if path_kind(study.scenario_path, f"{p}: scenario:") != "file":
        raise ConfigError(f"{p}: scenario: {study.scenario!r}: no such scenario file ({study.scenario_path})")
    check_budgets(study)
    return study


def design_scenarios(study: DesignStudy) -> dict:
    """Each design's validated ``Scenario`` (the base with its overrides), by name; an override the
    schema refuses is a ``ConfigError`` naming the study file and ``designs.NAME.set``."""
    from fleetwise.config.load import load_scenario
    from fleetwise.errors import ConfigError

    out = {}
    for name, design in study.designs.items():
        try:
            out[name] = load_scenario(study.scenario_path, design.overrides())
        except ConfigError as err:
            raise ConfigError(f"{study.source}: designs.{name}.set: {err}") from None
    return out


def check_budgets(study: DesignStudy) -> dict[str, dict]:
    """Prices every design (GPUs, dollars per hour, watts) and refuses, with a ``ConfigError``
    naming the study file and ``designs.NAME.provisioning``, one that exceeds a budget it claims.
    Returns the prices by design name."""
    from fleetwise.errors import ConfigError
    from fleetwise.sweep.placement import price

    prices = {name: price(sc) for name, sc in design_scenarios(study).items()}
    ref = prices[study.reference]
    for name, design in study.designs.items():
        for prov in design.provisioning:
            field = BUDGET_FIELD[prov]
            if prices[name][field] > ref[field] * (1 + 1e-9):
                unit = "W" if field == "watts" else "$/h"
                raise ConfigError(f"{study.source}: designs.{name}.provisioning: {prov} allows at most the reference "
                                  f"{study.reference}'s {ref[field]:.6g} {unit}; this design needs {prices[name][field]:.6g} {unit}")
    return prices
