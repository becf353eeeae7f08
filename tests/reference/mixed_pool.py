"""Splitwise's mixed pool in the reference model, written from the rules in the core's
``rust/core/src/sim/mixed_pool.rs`` docs (and docs/seed-systems.md):

* prompt pool overloaded (every prefill instance has at least ``prompt_overload_tokens`` prompt
  tokens queued or in prefill): an arriving request, routed as usual, goes instead to a decode
  instance already in the mixed pool whose own prompts are below the threshold (fewest outstanding
  tokens, lowest index), else to one not in it (same order), unless none qualifies or it would
  reject the request;
* token pool overloaded (every decode instance has at least ``token_overload_tokens`` outstanding
  tokens): a request whose prefill ends keeps decoding on its prefill instance, and layer-wise
  transfers are not started early;
* an instance joins the mixed pool with its first foreign request (a prompt on a decode instance,
  a kept decode on a prefill instance) and leaves it at the end of the first iteration after which
  none is left (a prompt is done at its first token, a decode when it finishes).
"""

from __future__ import annotations

from reference.instance import ReferenceInstance
from reference.requests import ReferenceRequest


class ReferenceMixedPool:
    """The mixed pool's decisions and bookkeeping over ``instances``."""

    def __init__(self, config: dict, instances: list[ReferenceInstance]) -> None:
        """The mixed pool ``config`` (the core config's ``mixed_pool``) over ``instances``."""
        self.prompt_threshold = config.get("prompt_overload_tokens")
        self.token_threshold = config.get("token_overload_tokens")
        self.instances = instances
        self.prefill = [i for i in instances if i.role == "prefill"]
        self.decode = [i for i in instances if i.role == "decode"]
        self.foreign: dict[int, list[ReferenceRequest]] = {i.index: [] for i in instances}
        self.since = {i.index: 0 for i in instances}
        self.role_switches = {i.index: 0 for i in instances}
        self.mixed_ns = {i.index: 0 for i in instances}
        self.service: dict[int, str] = {}

    def _take(self, inst: ReferenceInstance, req: ReferenceRequest, service: str) -> None:
        if not self.foreign[inst.index]:
            self.role_switches[inst.index] += 1
            self.since[inst.index] = inst.env.now
        self.foreign[inst.index].append(req)
        self.service[req.index] = service

    def _pending_prompt_tokens(self, inst: ReferenceInstance) -> int:
        live = [r for r in self.foreign[inst.index] if r.status != "finished"]
        if inst.role == "decode":
            return sum(r.prompt for r in live if r.generated == 0)
        return max(0, inst.outstanding_tokens - sum(r.prompt + r.generated for r in live))

    def prompt_target(self, req: ReferenceRequest) -> ReferenceInstance | None:
        """The decode instance that takes arriving ``req`` because the prompt pool is overloaded."""
        t = self.prompt_threshold
        if t is None or any(self._pending_prompt_tokens(p) < t for p in self.prefill):
            return None
        key = lambda d: (d.outstanding_tokens, d.index)  # noqa: E731
        joined = [d for d in self.decode if self.foreign[d.index] and self._pending_prompt_tokens(d) < t]
        fresh = [d for d in self.decode if not self.foreign[d.index]]
        pool = joined or fresh
        if not pool:
            return None
        target = min(pool, key=key)
        if target.rejects(req):
            return None
        self._take(target, req, "prompt_on_token_instance")
        return target

    def token_overloaded(self) -> bool:
        """Whether every decode instance has at least the token threshold's outstanding tokens."""
        t = self.token_threshold
        return t is not None and all(d.outstanding_tokens >= t for d in self.decode)

    def keeps_decode(self, req: ReferenceRequest) -> bool:
        """``req``'s prefill ended: keeps it decoding on its prefill instance if the token pool is
        overloaded (True), else leaves it to the handoff (False)."""
        if not self.token_overloaded():
            return False
        inst = self.instances[req.instance]
        inst.accept(req, req.blocks)
        self._take(inst, req, "decode_on_prompt_instance")
        return True

    def iteration_ended(self, inst: ReferenceInstance) -> None:
        """Drops ``inst``'s foreign requests that are done; with none left it leaves the pool."""
        foreign = self.foreign[inst.index]
        if not foreign:
            return
        decode = inst.role == "decode"
        foreign[:] = [r for r in foreign if r.status != "finished" and not (decode and r.generated > 0)]
        if not foreign:
            self.mixed_ns[inst.index] += inst.env.now - self.since[inst.index]
