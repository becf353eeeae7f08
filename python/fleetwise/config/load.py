"""Loading scenarios from YAML, with ``--set path=value`` overrides and readable errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fleetwise.config.base import FieldError
from fleetwise.config.scenario import Scenario
from fleetwise.config.limits import MAX_YAML_BYTES
from fleetwise.config.workload_fit import check_workload_fits
from fleetwise.config.yaml_input import check_shape, decode_text, load_yaml, parse_yaml, short_repr


def _fail(msg: str):
    from fleetwise.errors import ConfigError

    raise ConfigError(msg)


def apply_override(data: dict, assignment: str, source: str) -> None:
    """Applies one ``a.b.0.c=value`` assignment to ``data`` in place; the value is parsed as YAML."""
    if "=" not in assignment:
        _fail(f"--set {assignment!r}: expected PATH=VALUE, e.g. cluster.pools.0.count=8")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    if not all(k.strip() for k in keys):
        _fail(f"--set {assignment!r}: the path {path.strip()!r} has an empty part; expected PATH=VALUE, e.g. cluster.pools.0.count=8")
    try:
        value = load_yaml(raw, f"--set {path}")
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not (key.isascii() and key.isdigit()) or int(key) >= len(node):
                _fail(f"--set {path}: {where}: index {key!r} out of range (list has {len(node)} items) in {source}")
            key = int(key)
        elif not isinstance(node, dict):
            _fail(f"--set {path}: {'.'.join(keys[:depth])} is a value, not a section, in {source}")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found by following ``loc`` from ``model`` (best effort)."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                # A discriminated-union tag (e.g. 'vllm') names the member class.
                continue
            current = field.annotation
        # Unwrap Optional / list / Annotated / Union to the first model class inside.
        seen = 0
        while not (isinstance(current, type) and issubclass(current, BaseModel)) and seen < 6:
            args = typing.get_args(current)
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if models:
                current = models[0] if len(models) == 1 else current
                if len(models) > 1:
                    break
            elif args:
                current = args[0]
            else:
                break
            seen += 1
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _kinds_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """The ``kind`` values the discriminated union at ``loc`` allows (best effort; [] if unknown)."""
    import typing

    names = [p for p in loc if not isinstance(p, int)]
    owner = _model_at(root, tuple(loc[: max(i for i, p in enumerate(loc) if not isinstance(p, int))])) if names else None
    field = owner.model_fields.get(names[-1]) if owner is not None else None
    kinds, todo = [], [field.annotation] if field is not None else []
    while todo:
        a = todo.pop(0)
        if isinstance(a, type) and issubclass(a, BaseModel):
            kind = a.model_fields.get("kind")
            if kind is not None and typing.get_origin(kind.annotation) is typing.Literal:
                kinds.extend(str(v) for v in typing.get_args(kind.annotation))
        else:
            todo.extend(typing.get_args(a))
    return kinds


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel] = Scenario) -> str:
    """One line per problem: ``file: field.path: message (allowed: ...)``; ``root`` is the model
    that was validated (it lists the allowed fields of a misspelt key)."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        shown = [p for i, p in enumerate(loc) if not (i and isinstance(p, str) and p in _kinds_at(root, loc[:i]))]  # no union tags
        path = ".".join(str(p) if len(str(p)) <= 80 else str(p)[:80] + "..." for p in shown) or "(top level)"
        msg = e["msg"]
        if e["type"] == "value_error":
            error = e.get("ctx", {}).get("error")
            msg = str(error) if error is not None else msg.removeprefix("Value error, ")
            if isinstance(error, FieldError):
                path = f"{path}.{error.path}" if loc else error.path
        if e["type"] == "extra_forbidden":
            owner = _model_at(root, loc[:-1])
            if owner is not None:
                msg += f"; allowed fields: {', '.join(owner.model_fields)}"
        elif e["type"] == "union_tag_not_found":
            kinds = _kinds_at(root, loc)
            msg = "a 'kind' is required" + (f"; allowed: {', '.join(repr(k) for k in kinds)}" if kinds else "") + f" (got {short_repr(e.get('input'))})"
        elif e["type"] == "union_tag_invalid":
            expected = e.get("ctx", {}).get("expected_tags")
            if expected:
                msg = f"unknown kind {short_repr(e['input'].get('kind'))}; allowed: {expected}" if isinstance(e.get("input"), dict) else msg
        elif "input" in e and e["type"] not in ("missing", "value_error", "assertion_error"):
            # A validator's own message names the values it checked; others get the input quoted.
            msg += f" (got {short_repr(e['input'])})"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def scenario_from_dict(data: dict, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validates a scenario given as a dict; errors name ``source`` and the field path."""
    if not isinstance(data, dict):
        _fail(f"{source}: the scenario must be a mapping, got {type(data).__name__}")
    check_shape(data, source)
    try:
        scenario = Scenario.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        _fail(format_validation_error(err, source))
    scenario._source = source
    scenario._base_dir = str(base_dir) if base_dir is not None else None
    check_workload_fits(scenario)
    return scenario


def load_scenario(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Reads a YAML scenario, applies ``path=value`` overrides and validates it."""
    data, source, base_dir = read_scenario_file(path)
    for assignment in overrides:
        apply_override(data, assignment, source)
    return scenario_from_dict(data, source, base_dir)


def read_scenario_file(path: str | Path) -> tuple[dict, str, Path]:
    """A scenario file's parsed YAML (not yet validated), the name errors give it, and the
    directory its relative paths resolve against; ConfigError naming the file when it cannot be read."""
    from fleetwise.paths import path_kind, resolved

    p = Path(path)
    kind = path_kind(p, "scenario file")
    if kind == "dir":
        _fail(f"{p}: is a directory, not a scenario file")
    if kind != "file":
        _fail(f"{p}: scenario file not found" if kind is None else f"{p}: not a regular file (a pipe, device or socket); give a scenario file")
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            _fail(f"{p}: {size} bytes; a scenario file may have at most {MAX_YAML_BYTES}")
        raw = p.read_bytes()
    except OSError as exc:
        _fail(f"{p}: cannot read the scenario file: {exc.strerror or exc}")
    data = parse_yaml(decode_text(raw, str(p)), str(p))
    if data is None:
        data = {}
    return data, str(p), resolved(p, "scenario file").parent


def as_scenario(scenario) -> Scenario:
    """Accepts a ``Scenario``, a dict or a YAML path and returns the validated ``Scenario``."""
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, dict):
        return scenario_from_dict(scenario)
    return load_scenario(scenario)
