"""Option helpers shared by the commands: float options that refuse NaN and infinity by name."""

from __future__ import annotations

import math
from typing import Any, Callable

import typer

from fleetwise.cli.format import shorten_values


def _bounds(min: float | None, max: float | None) -> str:
    """The allowed range in words: ``0.001 to 86400``, ``>= 1e-06`` or ``<= 1``."""
    if min is not None and max is not None:
        return f"{min:g} to {max:g}"
    return f">= {min:g}" if min is not None else f"<= {max:g}"


def finite_float(min: float | None = None, max: float | None = None) -> Callable[[Any], float]:
    """A typer ``parser`` for a float option: the value as a float, or ``typer.BadParameter``
    (exit 2, the option named by typer) when it is not a number, not finite (``nan``, ``inf``:
    a range check would call NaN "out of range" or let it through), or outside ``min``..``max``."""
    allowed = "" if min is None and max is None else f"; allowed: {_bounds(min, max)}"

    def parse(value: Any) -> float:
        shown = shorten_values(repr(str(value)))
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{shown} is not a number{allowed}") from None
        if not math.isfinite(x):
            raise typer.BadParameter(f"{shown} is not a finite number{allowed}")
        if (min is not None and x < min) or (max is not None and x > max):
            raise typer.BadParameter(f"{shown} is out of range{allowed}")
        return x

    return parse


def float_option(default: Any, *param_decls: str, min: float | None = None, max: float | None = None, **kwargs: Any) -> Any:
    """``typer.Option`` for a float: refuses NaN and infinity, and values outside ``min``..``max``
    (shown in ``--help`` as usual), with a message naming the option and what is allowed."""
    return typer.Option(default, *param_decls, min=min, max=max, parser=finite_float(min, max), **kwargs)
