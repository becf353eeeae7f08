"""A workload's named acceptance classes (``Workload.acceptance_class``, a trace's
``acceptance_class`` column) mapped to each speculating pool's ``speculative.acceptance_classes``:
the class index of each request in each pool, as the core takes it."""

from __future__ import annotations

import numpy as np
import polars as pl

DRAWN = 255
"""A request's entry that names no class: the core draws it by the classes' shares (the core's
``DRAWN_CLASS``)."""


def class_labels(classes) -> list[str]:
    """The labels of a pool's acceptance classes: each class's name, or ``class i`` (0-based)."""
    return [c.name or f"class {i}" for i, c in enumerate(classes)]


def given_class_codes(scenario, names: pl.Series | None, where: str = "workload.acceptance_class") -> dict[int, np.ndarray]:
    """For each pool (by index) with ``acceptance_classes``, the class index of each request
    whose ``names`` entry labels one of them (``class_labels``), ``DRAWN`` (255) for a null; empty
    without ``names`` or without such pools. Raises ``ConfigError`` naming ``where`` (the
    column's source), the first request (0-based, in arrival order) whose name is not a class of
    a pool, that pool and its classes."""
    from fleetwise.errors import ConfigError

    if names is None:
        return {}
    codes: dict[int, np.ndarray] = {}
    for p, pool in enumerate(scenario.cluster.pools):
        spec = pool.speculative
        if spec is None or not spec.acceptance_classes:
            continue
        labels = class_labels(spec.acceptance_classes)
        mapped = names.replace_strict(labels, list(range(len(labels))), default=None, return_dtype=pl.Int32)
        unknown = (mapped.is_null() & names.is_not_null()).arg_true()
        if len(unknown):
            r = int(unknown[0])
            raise ConfigError(
                f"{where}: request {r} (0-based, in arrival order) is in class "
                f"{names[r]!r}, which pool {pool.name!r} does not have (its acceptance_classes: "
                f"{', '.join(labels)}); name one of them, or leave it null to draw the class by share"
            )
        codes[p] = mapped.fill_null(DRAWN).cast(pl.UInt8).to_numpy()
    return codes
