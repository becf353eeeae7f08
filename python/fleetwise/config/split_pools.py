"""What the pools of a prefill/decode split must agree on (Splitwise, DistServe): a decode pool
continues the KV its prefill pools send, so it serves their model in their KV format and speculates
with their proposer, and the transfer settings are the sender's. Checked for every scenario (and so
for every point of a sweep's grid before any runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from fleetwise.config.base import FieldError

if TYPE_CHECKING:
    from fleetwise.config.scenario import PoolConfig

TRANSFER_SETTINGS = ("kv_link", "kv_transfer", "kv_transfer_latency")
"""Settings of the pool that sends the KV, which govern the whole transfer."""


def proposer(pool: "PoolConfig") -> str:
    """The proposer a pool speculates with, as a scenario names it (``draft llama-3-8b``, ``eagle``), or ``none``."""
    spec = pool.speculative
    if spec is None:
        return "none"
    return spec.method if spec.draft_model is None else f"{spec.method} {spec.draft_model}"


def _agreements(pool: "PoolConfig") -> dict[str, tuple[str, str]]:
    """What a decode pool shares with its prefill pools: field path -> (value, what it means)."""
    return {
        "model": (pool.model, "the model whose KV it continues"),
        "quantization.kv_cache": (pool.quantization.kv_cache, "the KV cache format it receives"),
        "speculative": (proposer(pool), "the proposer whose KV of the prompt it receives (vLLM's KV connector refuses a pair whose EAGLE / MTP / draft setups differ)"),
    }


def check_split_pools(pools: Sequence["PoolConfig"]) -> None:
    """Raises ``FieldError`` (naming the decode pool's field) when a decode pool has no prefill pool,
    serves another model or KV format or speculates with another proposer than a prefill pool, or
    sets a transfer setting that the prefill pools' value overrides."""
    senders = [p for p in pools if p.role == "prefill"]
    for i, pool in enumerate(pools):
        if pool.role != "decode":
            continue
        if not senders and any(p.role == "mixed" for p in pools):  # (all decode: the core says none takes arrivals)
            raise FieldError(f"{i}.role", f"decode pool {pool.name!r} has no prefill pool to receive KV from (the other pools are mixed: they decode their own requests)")
        if not senders:
            continue
        mine = _agreements(pool)
        for sender in senders:
            for path, (theirs, meaning) in _agreements(sender).items():
                if mine[path][0] != theirs:
                    raise FieldError(f"{i}.{path}", f"decode pool {pool.name!r} has {mine[path][0]} but prefill pool {sender.name!r} has {theirs}: "
                                                    f"they must agree on {meaning}")
        for name in TRANSFER_SETTINGS:
            other = next((s for s in senders if getattr(s, name) != getattr(pool, name)), None)
            if name in pool.model_fields_set and other is not None:
                raise FieldError(f"{i}.{name}", f"decode pool {pool.name!r} sets {getattr(pool, name)}, which is not used: the pool that sends the KV "
                                                f"decides its transfers, and prefill pool {other.name!r} says {getattr(other, name)}; set {name} on "
                                                "the prefill pool (it governs the whole transfer) and leave it out of the decode pool")
