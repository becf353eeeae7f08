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


def _agreements(pool: "PoolConfig") -> dict[str, tuple[str, str]]:
    """What a decode pool shares with its prefill pools: field path -> (value, what it means)."""
    return {
        "model": (pool.model, "the model whose KV it continues"),
        "quantization.kv_cache": (pool.quantization.kv_cache, "the KV cache format it receives"),
        "speculative": ("none" if pool.speculative is None else pool.speculative.proposer, "the proposer whose KV of the prompt it receives (vLLM's KV connector refuses a pair whose EAGLE / MTP / draft setups differ)"),
    }


def check_split_pools(pools: Sequence["PoolConfig"]) -> None:
    """Raises ``FieldError`` (naming the pool's field) when no pool takes arrivals, a prefill pool has
    no decode pool or a decode pool no prefill pool, or a decode pool serves another model or KV
    format or speculates with another proposer than a prefill pool, or sets a transfer setting that
    the prefill pools' value overrides."""
    if pools and all(p.role == "decode" for p in pools):
        raise FieldError("0.role", "every pool has role decode: some pool must take arrivals (role prefill or mixed)")
    senders = [p for p in pools if p.role == "prefill"]
    receivers = [i for i, p in enumerate(pools) if p.role == "decode"]
    if senders and not receivers:
        first = next(i for i, p in enumerate(pools) if p.role == "prefill")
        raise FieldError(f"{first}.role", f"prefill pool {senders[0].name!r} has no decode pool to send its KV to: a pool has role prefill but none has role decode")
    for i in receivers:
        pool = pools[i]
        if not senders:
            raise FieldError(f"{i}.role", f"decode pool {pool.name!r} has no prefill pool to receive KV from (the other pools are mixed: they decode their own requests)")
        mine = _agreements(pool)
        for sender in senders:
            for path, (theirs, meaning) in _agreements(sender).items():
                if mine[path][0] != theirs:
                    raise FieldError(f"{i}.{path}", f"decode pool {pool.name!r} has {mine[path][0]} but prefill pool {sender.name!r} has {theirs}: "
                                                    f"they must agree on {meaning}")
        for name in TRANSFER_SETTINGS:
            if name not in pool.model_fields_set:
                continue
            other = next((s for s in senders if getattr(s, name) != getattr(pool, name)), None)
            if other is not None:
                raise FieldError(f"{i}.{name}", f"decode pool {pool.name!r} sets {getattr(pool, name)}, which is not used: the pool that sends the KV "
                                                f"decides its transfers, and prefill pool {other.name!r} says {getattr(other, name)}; set {name} on "
                                                "the prefill pool (it governs the whole transfer) and leave it out of the decode pool")
