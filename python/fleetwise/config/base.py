"""The base class every configuration model derives from."""

import types
import typing

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _leaves(annotation):
    """The types a field of ``annotation`` takes, through ``Annotated`` and unions (a ``Literal``:
    its values' types); a generic such as ``list[float]`` is one leaf."""
    todo = [annotation]
    while todo:
        a = todo.pop()
        origin = typing.get_origin(a)
        if origin is typing.Annotated:
            todo.append(typing.get_args(a)[0])
        elif origin in (typing.Union, types.UnionType):
            todo.extend(typing.get_args(a))
        elif origin is typing.Literal:
            yield from (type(v) for v in typing.get_args(a))
        else:
            yield a


def _refuses_bool(annotation) -> bool:
    """Whether a field of ``annotation`` takes numbers but not booleans (pydantic's lax mode would
    read ``true`` as 1 there)."""
    leaves = set(_leaves(annotation))
    return bool(leaves & {int, float}) and not (leaves & {bool, typing.Any, object})


def _list_refuses_bool(annotation) -> bool:
    """Whether a field of ``annotation`` takes a list (or tuple) of numbers whose items are not
    booleans (pydantic's lax mode would read ``[true, 0.5]`` as ``[1.0, 0.5]``)."""
    return any(typing.get_origin(a) in (list, tuple) and typing.get_args(a) and _refuses_bool(typing.get_args(a)[0]) for a in _leaves(annotation))


class GivenBoolean:
    """A ``true``/``false`` given where a number is expected: no number validates it, so the error
    names the field and quotes what was written."""

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return f"{str(self.value).lower()}, a boolean"


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown fields.

    Every scenario section derives from it so that a misspelt key is an error naming the field path,
    never a silently ignored value, and a float field given NaN or infinity is an error too.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data):
        """``true``/``false`` where a number is expected, alone or as an item of a list of numbers,
        is an error, not 1 or 0."""
        if isinstance(data, dict):
            refusing = cls.__dict__.get("_bool_refusing_fields")
            if refusing is None:
                refusing = frozenset(n for n, f in cls.model_fields.items() if _refuses_bool(f.annotation))
                setattr(cls, "_bool_refusing_fields", refusing)
            in_lists = cls.__dict__.get("_bool_refusing_list_fields")
            if in_lists is None:
                in_lists = frozenset(n for n, f in cls.model_fields.items() if _list_refuses_bool(f.annotation))
                setattr(cls, "_bool_refusing_list_fields", in_lists)
            if any(isinstance(data.get(n), bool) for n in refusing):
                data = {k: GivenBoolean(v) if k in refusing and isinstance(v, bool) else v for k, v in data.items()}
            listed = [n for n in in_lists if isinstance(data.get(n), (list, tuple)) and any(isinstance(x, bool) for x in data[n])]
            if listed:
                data = {**data, **{n: [GivenBoolean(x) if isinstance(x, bool) else x for x in data[n]] for n in listed}}
        return data


class PolicyRef(StrictModel):
    """A policy object by registered name or ``package.module:attr``, with constructor parameters."""

    name: str
    """Registered name or ``package.module:attr``."""
    params: dict[str, typing.Any] = Field(default_factory=dict)
    """Keyword arguments for its constructor."""


class FieldError(ValueError):
    """A validator's error about a field below the one it validates: ``path`` (``1.kv_link``) is
    appended to the validated field's path in the message (``cluster.pools.1.kv_link: ...``)."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
