"""A goodput search's ``goodput.json`` as the report reads it: each result's fields checked, so a
malformed file is an error naming it and the field rather than a traceback."""

from __future__ import annotations

import json
from pathlib import Path


def _shown(value) -> str:
    """A JSON value as an error message shows it: ``null``, ``"x"``, ``[1, 2]`` (shortened)."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_goodput_entry(path: Path, where: str, entry) -> dict:
    """One goodput result (``fleetwise goodput``'s goodput.json, or one of its ``labels``) with the
    fields the report reads checked; a ValueError naming the file and the field when one is malformed."""
    at = f"{where}: " if where else ""
    pre = f"{where}." if where else ""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {at}must be an object (a goodput result: goodput_rate, slo, curve, ...), got {_shown(entry)}")
    slo = entry.get("slo")
    if slo is not None and not isinstance(slo, dict):
        raise ValueError(f"{path}: {pre}slo: must be an object of metric -> seconds (e.g. {{\"ttft\": 0.5}}) or null, got {_shown(slo)}")
    for key in ("goodput_rate", "goodput_per_gpu"):  # drawn as bars: a number when present
        if key in entry and not _is_number(entry[key]):
            raise ValueError(f"{path}: {pre}{key}: must be a number, got {_shown(entry[key])}")
    for key in ("attainment_target", "gpus"):  # shown where present
        if entry.get(key) is not None and not _is_number(entry[key]):
            raise ValueError(f"{path}: {pre}{key}: must be a number or null, got {_shown(entry[key])}")
    curve = entry.get("curve")
    if curve is None:
        return entry
    if not isinstance(curve, list):
        raise ValueError(f"{path}: {pre}curve: must be a list of {{\"rate\": number, \"attainment\": number}} points, got {_shown(curve)}")
    for k, point in enumerate(curve):
        if not isinstance(point, dict):
            raise ValueError(f"{path}: {pre}curve[{k}]: must be an object {{\"rate\": number, \"attainment\": number}}, got {_shown(point)}")
        for key in ("rate", "attainment"):
            if key not in point:
                raise ValueError(f"{path}: {pre}curve[{k}]: missing {key!r} (each point is {{\"rate\": number, \"attainment\": number}})")
            if not _is_number(point[key]):
                raise ValueError(f"{path}: {pre}curve[{k}].{key}: must be a number, got {_shown(point[key])}")
    return entry


def normalise_goodput(raw: dict, default_label: str, path: Path | None = None) -> dict[str, dict]:
    """Series label -> goodput result: the ``labels`` of a multi-series goodput.json, else the file
    itself under ``default_label``; every result checked (a ValueError naming ``path`` and the field)."""
    path = path if path is not None else Path("goodput.json")
    if "labels" in raw:
        labels = raw["labels"]
        if not isinstance(labels, dict):
            raise ValueError(f"{path}: labels: must be an object of series label -> goodput result, got {_shown(labels)}")
        return {str(k): _check_goodput_entry(path, f"labels.{k}", v) for k, v in labels.items()}
    return {default_label: _check_goodput_entry(path, "", raw)}
