"""The reference model's router: which instance an arriving request goes to."""

from __future__ import annotations

from reference.instance import ReferenceInstance
from reference.requests import ReferenceRequest


class ReferenceRouter:
    """Chooses an instance for each arriving request: ``round-robin`` or
    ``least-outstanding-tokens`` (fewest outstanding tokens, lowest index on ties)."""

    def __init__(self, kind: str, instances: list[ReferenceInstance]) -> None:
        """A router of ``kind`` over ``instances``; ``random`` is not modelled (it draws from the
        core's own random stream), so it raises ValueError."""
        if kind not in ("round-robin", "least-outstanding-tokens"):
            raise ValueError(f"the reference model does not reproduce the {kind!r} router")
        self.kind = kind
        self.instances = instances
        self._next = 0

    def route(self, req: ReferenceRequest) -> ReferenceInstance:
        """The instance that gets ``req``."""
        if self.kind == "round-robin":
            inst = self.instances[self._next]
            self._next = (self._next + 1) % len(self.instances)
            return inst
        return min(self.instances, key=lambda inst: (inst.outstanding_tokens, inst.index))
