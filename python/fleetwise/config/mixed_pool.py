"""Splitwise's mixed pool: when prompt (prefill) and token (decode) machines take work of the
other kind (docs/seed-systems.md, "Splitwise's mixed pool")."""

from __future__ import annotations

from pydantic import Field, model_validator

from fleetwise.config.base import StrictModel

MAX_OVERLOAD_TOKENS = 2**63 - 1
"""The largest threshold accepted (a threshold this large is never reached)."""


class MixedPoolConfig(StrictModel):
    """When machines move into Splitwise's mixed pool (Patel et al., ISCA 2024, section IV-C).

    A cluster with prefill (prompt) and decode (token) pools keeps them fixed unless overloaded:
    when every prefill instance has at least ``prompt_overload_tokens`` prompt tokens queued or in
    prefill, new prompts run on decode instances with mixed batching (which then decode them, no KV
    transfer); when every decode instance has at least ``token_overload_tokens`` outstanding tokens,
    prefilled requests keep decoding on their prefill instance. A machine returns to its own pool
    once it has no work of the other kind left. A threshold left unset never triggers.
    """

    prompt_overload_tokens: int | None = Field(default=None, ge=1, le=MAX_OVERLOAD_TOKENS)
    """The prompt pool is overloaded when every prefill instance has at least this many prompt
    tokens queued or in prefill; new prompts then go to decode (token) instances."""
    token_overload_tokens: int | None = Field(default=None, ge=1, le=MAX_OVERLOAD_TOKENS)
    """The token pool is overloaded when every decode instance has at least this many outstanding
    tokens (the context of its requests); prefilled requests then keep decoding on their prefill
    instance."""

    @model_validator(mode="after")
    def _a_threshold_is_set(self) -> MixedPoolConfig:
        """Refuses a mixed pool that could never trigger."""
        if self.prompt_overload_tokens is None and self.token_overload_tokens is None:
            raise ValueError("set prompt_overload_tokens, token_overload_tokens or both")
        return self
