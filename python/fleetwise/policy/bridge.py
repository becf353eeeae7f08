"""Bridges between the Rust core and Python policies: the core's rows (``_core.RequestRow``,
``_core.LoadRow``: named fields) in, views to the policy, answers by name out.

The core calls these once per routing decision and once per scheduled iteration (the only Python
on the per-event path, and only when a user's own policy is configured); their cost is measured
by ``benchmarks/bench_python_policy.py``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from operator import attrgetter, index as as_index

from fleetwise.policy.decisions import RouteDecision, StepPlan
from fleetwise.policy.views import EndpointView, RequestView, StepView
from fleetwise.policy.watchdog import CallClock

_U32 = 2**32 - 1

MAX_PREEMPTIONS = 1000
"""Preemptions of one request after which a scheduler policy's plans are taken to livelock."""


class PolicyAnswerError(ValueError):
    """A policy returned something that is not the decision its interface promises."""


def checked_count(value, what: str, low: int = 1, allow_none: bool = False):
    """``value`` as an int in ``low..=u32 max`` (None passes when allowed), else PolicyAnswerError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PolicyAnswerError(f"{what} must be an int{' or None' if allow_none else ''}, got {_short(value)}")
    value = int(value)
    if not low <= value <= _U32:
        raise PolicyAnswerError(f"{what} must be in {low}..={_U32}, got {value}")
    return value


class RouterBridge:
    """Calls a Router for the simulator. ``roles[i]`` and ``names[i]`` describe instance ``i``;
    ``entry`` and ``decoders`` list the instances that take arrivals and that only decode."""

    def __init__(self, policy, names: Sequence[str], roles: Sequence[str], block_tokens: int, label: str = "the router policy", clock: CallClock | None = None):
        self.policy = policy
        self.label = label
        self.clock = clock or CallClock()
        self._what = f"{label}: route()"
        self.names, self.roles = list(names), list(roles)
        self.entry = [i for i, r in enumerate(roles) if r != "decode"]
        self.decoders = [i for i, r in enumerate(roles) if r == "decode"]
        self.position = {inst: ("entry", k) for k, inst in enumerate(self.entry)}
        self.position.update({inst: ("decode", k) for k, inst in enumerate(self.decoders)})
        self.block_tokens = block_tokens
        self.count = 0

    def _endpoints(self, entry_loads, decode_loads) -> "Endpoints":
        return Endpoints(self, entry_loads, decode_loads)

    def route(self, row, entry_loads, decode_loads) -> dict:
        """Routes one request (the core's ``RequestRow`` and ``LoadTable``s of the entry and decode
        instances): returns ``{"entry": position, "decode": position or None}`` for the core."""
        req = RequestView(id=self.count, prompt_tokens=row.prompt_tokens, max_output_tokens=row.max_output_tokens, arrival=row.arrival, prefix_hashes=tuple(row.prefix_hashes))
        self.count += 1
        endpoints = self._endpoints(entry_loads, decode_loads)
        clock = self.clock
        clock.calls += 1
        clock.busy = self._what
        try:
            d = self.policy.route(req, endpoints)
            # Checking the answer may run the policy's own code (the __hash__ or __index__ of what
            # it returned): still under the per-call time limit.
            return self._answer(d, req.id)
        finally:
            clock.busy = None

    def _answer(self, d, request_id) -> dict:
        """The core's answer for the policy's decision ``d`` on request ``request_id``, checked."""
        if not isinstance(d, RouteDecision):
            raise PolicyAnswerError(f"must return a RouteDecision, got {_short(d)}")
        if type(d.instance) is not int or not (d.prefill is None or type(d.prefill) is int):
            checked_count(d.instance, f"request {request_id}: RouteDecision.instance", low=0)
            checked_count(d.prefill, f"request {request_id}: RouteDecision.prefill", low=0, allow_none=True)
        kind, pos = self.position.get(d.instance, (None, None))
        if d.prefill is None:
            if kind != "entry":
                raise PolicyAnswerError(f"sent request {request_id} to instance {d.instance} without a prefill instance; it must be one of the serving (mixed or prefill) instances {self.entry}")
            return {"entry": pos, "decode": None}
        pkind, ppos = self.position.get(d.prefill, (None, None))
        if pkind != "entry" or self.roles[d.prefill] != "prefill":
            raise PolicyAnswerError(f"chose prefill instance {d.prefill} for request {request_id}; prefill instances are {[i for i in self.entry if self.roles[i] == 'prefill']}")
        if kind != "decode":
            raise PolicyAnswerError(f"chose instance {d.instance} to decode request {request_id} after a separate prefill; decode instances are {self.decoders}")
        return {"entry": ppos, "decode": pos}


class Endpoints(Sequence):
    """The endpoints a router sees, instance by instance, as a read-only sequence whose views are
    built when read: a call costs the same on 4 instances or 1,024 unless the policy reads them all
    (iterating builds every view at once, as a list would)."""

    __slots__ = ("_bridge", "_entry", "_decode", "_views", "_all")

    def __init__(self, bridge: RouterBridge, entry_loads, decode_loads):
        self._bridge, self._entry, self._decode = bridge, entry_loads, decode_loads
        self._views: dict[int, EndpointView] = {}
        self._all: list[EndpointView] | None = None

    def __len__(self) -> int:
        return len(self._bridge.roles)

    def _view(self, i: int) -> EndpointView:
        if self._all is not None:
            return self._all[i]
        view = self._views.get(i)
        if view is None:
            b = self._bridge
            kind, pos = b.position[i]
            load = (self._entry if kind == "entry" else self._decode)[pos]
            view = self._views[i] = endpoint_view(i, b.names[i], b.roles[i], load)
        return view

    def _every(self) -> list[EndpointView]:
        if self._all is None:
            b = self._bridge
            if b.decoders:
                loads = [None] * len(b.roles)
                for inst, load in zip(b.entry, self._entry):
                    loads[inst] = load
                for inst, load in zip(b.decoders, self._decode):
                    loads[inst] = load
            else:
                loads = self._entry
            names, roles = b.names, b.roles
            every = [endpoint_view(i, names[i], roles[i], load) for i, load in enumerate(loads)]
            for i, view in self._views.items():  # the views already handed out stay the same objects
                every[i] = view
            self._all = every
        return self._all

    def __getitem__(self, index):
        n = len(self._bridge.roles)
        if isinstance(index, slice):
            return self._every()[index]
        i = as_index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"endpoint {index} of {n}")
        return self._view(i)

    def __iter__(self):
        return iter(self._every())

    def __repr__(self) -> str:
        return f"Endpoints({self._every()!r})"


def endpoint_view(index: int, name: str, role: str, load) -> EndpointView:
    """The view of instance ``index`` from the core's ``LoadRow``."""
    total = load.kv_total_blocks
    return EndpointView(index, name, role, load.outstanding_tokens, load.waiting, load.running, load.kv_used_blocks / total if total else 0.0, load.cached_prefix_tokens)


def _short(value) -> str:
    """``repr(value)``, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def is_known_id(request_id, known: dict) -> bool:
    """Whether ``request_id`` is a key of ``known``; an unhashable id is not."""
    try:
        return request_id in known
    except TypeError:  # an unhashable id names no request
        return False


_REQUEST_FIELDS = attrgetter("id", "prompt_tokens", "max_output_tokens", "computed_tokens", "generated_tokens", "cached_tokens", "arrival", "preemptions")
"""A ``RequestRow``'s fields in ``RequestView``'s order, read in one call (a step may build hundreds)."""


def request_view(row, id=None, with_hashes: bool = False) -> RequestView:
    """A view from the core's ``RequestRow`` (``id`` in place of the core's index when given; its
    prefix hashes only when asked for: the scheduler's rows have none)."""
    fields = _REQUEST_FIELDS(row)
    if id is not None:
        fields = (id,) + fields[1:]
    return RequestView(*fields, tuple(row.prefix_hashes)) if with_hashes else RequestView(*fields)


def _scheduler_view(row) -> RequestView:
    """A scheduler's view of a ``RequestRow``: the core's own index as its id, no prefix hashes."""
    return RequestView(*_REQUEST_FIELDS(row))


class SchedulerBridge:
    """Calls a BatchScheduler for the core. ``ids`` maps the core's request indices to the ids the
    policy sees (the simulator's own indices when None)."""

    def __init__(self, policy, ids: Sequence | None = None, label: str = "the scheduler policy", clock: CallClock | None = None):
        self.policy = policy
        self.ids = ids
        self.back: dict = {}
        """The policy's ids back to the core's indices (an id reused after its request finished: the newest)."""
        self._mapped = 0
        self.label = label
        self.clock = clock or CallClock()
        self._what = f"{label}: plan()"

    def plan(self, waiting_rows, running_rows, free, total, block_size, step, now=0.0) -> dict:
        """Plans one iteration from the core's ``RequestRow``s and KV counts: returns the plan's
        fields by name for the core, orders as core request indices."""
        for row in waiting_rows[:4] if waiting_rows else ():  # the requests preempted last wait at the front
            if row.preemptions >= MAX_PREEMPTIONS:
                raise PolicyAnswerError(f"request {row.id if self.ids is None else self.ids[row.id]} has been preempted {row.preemptions} times: the plans livelock (its victim_order keeps preempting the same requests) and it would never finish")
        ids, make = self.ids, _scheduler_view
        if ids is not None:
            make = lambda r: request_view(r, ids[r.id])  # noqa: E731
            for i in range(self._mapped, len(ids)):  # the requests added since the last step
                self.back[ids[i]] = i
            self._mapped = len(ids)
        view = StepView.from_rows(make, waiting_rows, running_rows, free, total, block_size, step, now)
        clock = self.clock
        clock.calls += 1
        clock.busy = self._what
        try:
            p = self.policy.plan(view)
            # Checking the plan may run the policy's own code (the __hash__ or __eq__ of the ids
            # it returned): still under the per-call time limit.
            return self._answer(p, waiting_rows, running_rows)
        finally:
            clock.busy = None

    def _answer(self, p, waiting_rows, running_rows) -> dict:
        """The core's answer for the policy's plan ``p``, checked against the queued rows."""
        if not isinstance(p, StepPlan):
            raise PolicyAnswerError(f"must return a StepPlan, got {_short(p)}")
        budget, seqs, chunk = p.token_budget, p.max_num_seqs, p.max_prefill_chunk
        if not (type(budget) is int and type(seqs) is int and 0 < budget <= _U32 and 0 < seqs <= _U32 and (chunk is None or (type(chunk) is int and 0 < chunk <= _U32))):
            budget, seqs, chunk = checked_count(budget, "token_budget"), checked_count(seqs, "max_num_seqs"), checked_count(chunk, "max_prefill_chunk", allow_none=True)
        answer = {"token_budget": budget, "max_num_seqs": seqs, "running_order": None, "waiting_order": None, "victim_order": None, "max_prefill_chunk": chunk}
        if p.running_order is None and p.waiting_order is None and p.victim_order is None:
            return answer
        # The ids the engine knows, from its own rows: a policy may have changed the view. Each
        # order names requests of its own queue only (the engine would skip the others unseen).
        ids = self.ids
        waiting = {(r.id if ids is None else ids[r.id]): None for r in waiting_rows}
        running = {(r.id if ids is None else ids[r.id]): None for r in running_rows}
        known = {**waiting, **running}
        answer["running_order"] = self._order(p.running_order, known, "running_order", running, "running")
        answer["waiting_order"] = self._order(p.waiting_order, known, "waiting_order", waiting, "waiting")
        answer["victim_order"] = self._order(p.victim_order, known, "victim_order", running, "running")
        return answer

    def _order(self, order, known: dict, name: str, queue: dict, queue_name: str):
        order = checked_order(order, known, name, queue, queue_name)
        if order is None:
            return None
        # 1.0 or True is not request 1 (they hash alike): ids are the views' ids, ints or names.
        odd = [i for i in order if isinstance(i, (bool, float)) or (self.ids is None and not isinstance(i, numbers.Integral))]
        if odd:
            raise PolicyAnswerError(f"{name} must list request ids (the views' id), got {_short(odd[:5])}")
        if self.ids is None:
            return [int(i) for i in order]
        return [self.back[i] for i in order]


def checked_order(order, known, name: str, queue=None, queue_name: str = "") -> list | None:
    """A plan's ``order`` (named ``name``) as a list, checked: None, or a list, tuple or range of
    ids in ``known`` (a dict or set of the queued requests' ids), none twice, and when ``queue``
    (the ids of the order's own queue, called ``queue_name``) is given, all in it; PolicyAnswerError
    saying what is wrong otherwise (a string, a generator or an array is not an order)."""
    if order is None:
        return None
    if not isinstance(order, (list, tuple, range)):
        raise PolicyAnswerError(f"{name} must be a list or tuple of request ids (or None), got {_short(order)}")
    unknown = [i for i in order if not is_known_id(i, known)]
    if unknown:
        raise PolicyAnswerError(f"{name} names requests that are neither waiting nor running: {_short(unknown[:5])}")
    if queue is not None:
        stray = [i for i in order if not is_known_id(i, queue)]
        if stray:
            raise PolicyAnswerError(f"{name} names requests that are not {queue_name}: {_short(stray[:5])} (an order lists requests of its own queue only; the engine would skip the others)")
    if len(set(order)) != len(order):  # as check-policy says: a request is served once per step
        seen: set = set()
        twice = [i for i in order if i in seen or seen.add(i)]
        raise PolicyAnswerError(f"{name} lists a request twice: {_short(twice[:5])}")
    return list(order)
