"""Hostile router and batch-scheduler policies for the fuzz suite, driven by a JSON script.

A scenario names them as ``fuzz_policies:ScriptedRouter`` / ``fuzz_policies:ScriptedScheduler``
with ``params: {script: [...]}``; each call takes the next action of the script (cycling), so that
hypothesis can draw sequences of valid, wrong and raising answers. The engine must apply the valid
ones and turn every other into a clean ``PolicyError`` (or finish with every invariant).
"""

from __future__ import annotations

import random

from fleetwise.policy import RouteDecision, StepPlan


def _literal(name: str):
    """A wrong answer by name."""
    return {"none": None, "int": 1, "str": "0", "float": 0.5, "nan": float("nan"), "list": [0], "dict": {"instance": 0}, "tuple": (0, None)}[name]


class _Raise(Exception):
    """Raised on purpose by a scripted policy."""


def _act_raise(name: str):
    raise {"value": ValueError("scripted"), "key": KeyError("scripted"), "recursion": RecursionError("scripted"), "custom": _Raise("scripted"), "memory": MemoryError("scripted"), "zero": ZeroDivisionError("scripted")}[name]


class ScriptedRouter:
    """A router whose answers follow ``script``: ``["valid"]`` (a random endpoint of a role that can
    take the request), ``["index", i]`` (instance ``i`` as given), ``["pair", d, p]`` (decode ``d``
    with prefill ``p``), ``["raise", kind]``, ``["return", kind]`` (a non-decision)."""

    def __init__(self, script: list, seed: int = 0):
        """Keeps the script and a seeded random stream."""
        self.script = script or [["valid"]]
        self.rng = random.Random(seed)
        self.calls = 0

    def route(self, request, endpoints):
        """The next scripted answer."""
        action = self.script[self.calls % len(self.script)]
        self.calls += 1
        kind = action[0]
        if kind == "valid":
            serving = [e for e in endpoints if e.role == "mixed"]
            if serving:
                return RouteDecision(self.rng.choice(serving).index)
            decode = [e for e in endpoints if e.role == "decode"]
            prefill = [e for e in endpoints if e.role == "prefill"]
            return RouteDecision(self.rng.choice(decode).index, self.rng.choice(prefill).index)
        if kind == "index":
            return RouteDecision(action[1])
        if kind == "pair":
            return RouteDecision(action[1], action[2])
        if kind == "raise":
            _act_raise(action[1])
        return _literal(action[1])


def _order(kind: str, requests, rng: random.Random):
    ids = [r.id for r in requests]
    if kind == "none":
        return None
    if kind == "reversed":
        return ids[::-1]
    if kind == "unknown":
        return [10**9, -1] + ids
    if kind == "duplicates":
        return ids + ids
    if kind == "strings":
        return [str(i) for i in ids]
    if kind == "shortest":
        return [r.id for r in sorted(requests, key=lambda r: (r.pending_tokens, r.arrival))]
    if kind == "generator":
        return (i for i in ids)
    return []


class _DuckPlan:
    """Not a StepPlan, but with its attributes (possibly invalid values)."""

    def __init__(self, token_budget, max_num_seqs):
        self.token_budget, self.max_num_seqs = token_budget, max_num_seqs
        self.running_order = self.waiting_order = self.victim_order = self.max_prefill_chunk = None


class ScriptedScheduler:
    """A batch scheduler whose plans follow ``script``: ``["plan", budget, seqs, waiting, victims,
    chunk]`` (orders by name: none, reversed, unknown, duplicates, strings, shortest, empty,
    generator; the running order is of the waiting order's kind), ``["duck", budget, seqs]`` (a look-alike object), ``["raise", kind]`` or
    ``["return", kind]``."""

    def __init__(self, script: list, seed: int = 0):
        """Keeps the script and a seeded random stream."""
        self.script = script or [["plan", 512, 16, "none", "none", None]]
        self.rng = random.Random(seed)
        self.calls = 0

    def plan(self, step):
        """The next scripted plan."""
        action = self.script[self.calls % len(self.script)]
        self.calls += 1
        kind = action[0]
        if kind == "plan":
            _, budget, seqs, waiting, victims, chunk = action
            return StepPlan(token_budget=budget, max_num_seqs=seqs, waiting_order=_order(waiting, step.waiting, self.rng), victim_order=_order(victims, step.running, self.rng), running_order=_order(waiting, step.running, self.rng), max_prefill_chunk=chunk)
        if kind == "duck":
            return _DuckPlan(action[1], action[2])
        if kind == "raise":
            _act_raise(action[1])
        return _literal(action[1])
