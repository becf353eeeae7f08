"""Decode choice policies: where a prefilled request's KV goes in a disaggregated cluster.

After a prefill instance computes a request's prompt (and first token), its KV cache moves to a
decode instance. The policy sees the request and the decode instances (their loads) and answers
the decode instances to try, best first; the engine takes the first that can reserve the request's
KV blocks, and when none can, the request waits and is offered again when a decode instance frees
room. ``preferred`` is the decode instance the router chose, if it chose one (a ``RouteDecision``
with a ``prefill``).
"""

from __future__ import annotations

import numbers
from typing import Protocol, Sequence, runtime_checkable

from fleetwise.policy.views import EndpointView, RequestView


@runtime_checkable
class DecodeChoice(Protocol):
    """Chooses the decode instances a prefilled request's KV may go to."""

    def choose(self, request: RequestView, decoders: Sequence[EndpointView], preferred: int | None) -> Sequence[int] | int:
        """The ``index`` of each decode endpoint to try for ``request``, best first (an int: that
        one only). ``decoders`` lists every decode instance, lowest index first; their
        ``outstanding_tokens`` include the tokens of handoffs already in flight to them."""
        ...


class FewestOutstandingTokens:
    """The router's pick first, then the fewest outstanding tokens, lowest index on ties (the
    simulator's built-in choice; results are byte-identical)."""

    def choose(self, request, decoders, preferred):
        """Every decode instance, least loaded first, the router's pick before all."""
        order = [d.index for d in sorted(decoders, key=lambda d: (d.outstanding_tokens, d.index))]
        if preferred is not None and preferred in order:
            order.remove(preferred)
            order.insert(0, preferred)
        return order


class DecodeChoiceBridge:
    """Calls a DecodeChoice for the core: rows in, views to the policy, checked instance indices
    out. ``names[i]`` and ``roles[i]`` describe instance ``i``; ``label`` names the policy in
    messages; ``clock`` notes each call (for the per-call time limit)."""

    def __init__(self, policy, names: Sequence[str], roles: Sequence[str], label: str = "the decode choice policy", clock=None):
        from fleetwise.policy.watchdog import CallClock

        self.policy = policy
        self.names, self.roles = list(names), list(roles)
        self.label = label
        self.clock = clock or CallClock()
        self._what = f"{label}: choose()"

    def choose(self, row, decoders: Sequence[int], loads, preferred: int | None) -> list[int]:
        """One handoff: the core's ``RequestRow``, the decode instances and their ``LoadRow``s, the
        router's pick; returns the instances to try."""
        from fleetwise.policy.bridge import endpoint_view, request_view

        req = request_view(row, with_hashes=True)
        views = [endpoint_view(inst, self.names[inst], self.roles[inst], load) for inst, load in zip(decoders, loads)]
        clock = self.clock
        clock.calls += 1
        clock.busy = self._what
        try:
            answer = self.policy.choose(req, views, preferred)
            # Checking the answer may run the policy's own code (what it returned is iterated and
            # hashed): still under the per-call time limit.
            return checked_choice(answer, req.id, decoders)
        finally:
            clock.busy = None


def checked_choice(answer, request_id, decoders: Sequence[int]) -> list[int]:
    """A decode choice's ``answer`` for request ``request_id`` as a list of instance indices, each
    one of ``decoders`` and none twice; PolicyAnswerError saying what is wrong otherwise."""
    from fleetwise.policy.bridge import PolicyAnswerError

    if isinstance(answer, EndpointView):  # a named tuple: it would be read as a list of its fields
        raise PolicyAnswerError(f"must return decode instance indices, got an EndpointView for request {request_id}; return its .index (or a list of them)")
    order = [answer] if isinstance(answer, numbers.Integral) and not isinstance(answer, bool) else answer
    if not isinstance(order, (list, tuple, range)) or not order:
        raise PolicyAnswerError(f"must return a decode instance index or a non-empty list of them for request {request_id}, got {answer!r}"[:300])
    allowed = set(decoders)
    bad = [i for i in order if isinstance(i, bool) or not isinstance(i, numbers.Integral) or int(i) not in allowed]
    if bad:
        raise PolicyAnswerError(f"chose {bad[:5]!r} for request {request_id}; the decode instances are {list(decoders)}"[:300])
    order = [int(i) for i in order]
    if len(set(order)) != len(order):
        raise PolicyAnswerError(f"named a decode instance twice for request {request_id}: {order}"[:300])
    return order
