"""The base class every configuration model derives from."""

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown fields.

    Every scenario section derives from it so that a misspelt key is an error naming the field path,
    never a silently ignored value, and a float field given NaN or infinity is an error too.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


class PolicyRef(StrictModel):
    """A policy object by registered name or ``package.module:attr``, with constructor parameters."""

    name: str
    """Registered name or ``package.module:attr``."""
    params: dict = Field(default_factory=dict)
    """Keyword arguments for its constructor."""
