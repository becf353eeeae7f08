"""Routers shaped like llm-d's endpoint picker: profiles of filters, weighted scorers and a picker.

A router answers ``route(request, endpoints) -> RouteDecision``. :class:`ProfileRouter` builds one
from parts: each :class:`Profile` filters the endpoints, scores the survivors (each scorer returns a
value in [0, 1] per endpoint; scores add up by weight) and picks one. With a ``prefill`` and a
``decode`` profile it disaggregates, as llm-d's P/D profile handler does: the decode profile picks
the endpoint that generates; when the prompt's uncached part exceeds ``pd_threshold`` tokens, the
prefill profile picks the endpoint that computes the prompt and hands over its KV cache.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from fleetwise.policy.decisions import RouteDecision
from fleetwise.policy.views import EndpointView, RequestView


@runtime_checkable
class Router(Protocol):
    """Chooses the endpoint (or prefill/decode pair) for each request."""

    def route(self, request: RequestView, endpoints: Sequence[EndpointView]) -> RouteDecision:
        """Where ``request`` goes; ``endpoints`` are every endpoint the router may use, in a fixed order."""
        ...


@runtime_checkable
class Filter(Protocol):
    """Drops endpoints that must not serve a request."""

    def filter(self, request: RequestView, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        """The endpoints kept, in their given order."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Rates endpoints for a request, higher is better, each in [0, 1]."""

    def score(self, request: RequestView, endpoints: Sequence[EndpointView]) -> list[float]:
        """One score per endpoint, aligned with ``endpoints``."""
        ...


@runtime_checkable
class Picker(Protocol):
    """Chooses one endpoint from the scored survivors."""

    def pick(self, request: RequestView, endpoints: Sequence[EndpointView], scores: Sequence[float]) -> EndpointView:
        """The chosen endpoint."""
        ...


def _param_error(name: str, why: str):
    """A ConfigError about router parameter ``name`` (its ``param`` attribute names it, for the CLI)."""
    from fleetwise.errors import ConfigError

    e = ConfigError(f"router parameter {name} {why}")
    e.param = name
    return e


def _number(name: str, value, least: float = 0.0) -> float:
    """``value`` as a finite number of at least ``least``; ConfigError naming the parameter otherwise
    (a boolean or text is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < least:
        raise _param_error(name, f"must be a finite number >= {least:g}, got {value!r}")
    return float(value)


def _whole(name: str, value, least: int = 0) -> int:
    """``value`` as a whole number of at least ``least`` (``256.0`` is read as 256); ConfigError otherwise."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer())
            or value < least):
        raise _param_error(name, f"must be a whole number >= {least}, got {value!r}")
    return int(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise _param_error(name, f"must be true or false, got {value!r}")
    return value


def _lower_is_better(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [(hi - v) / (hi - lo) for v in values]


class RoleFilter:
    """Keeps endpoints of the given roles (``prefill``, ``decode``, ``mixed``)."""

    def __init__(self, *roles: str):
        self.roles = frozenset(roles)

    def filter(self, request, endpoints):
        """Endpoints whose role is one of ``roles``."""
        return [e for e in endpoints if e.role in self.roles]


class QueueFilter:
    """Keeps endpoints with at most ``max_waiting`` queued requests, or all if none qualifies."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting

    def filter(self, request, endpoints):
        """The lightly queued endpoints (or every endpoint when all are busy)."""
        kept = [e for e in endpoints if e.waiting <= self.max_waiting]
        return kept or list(endpoints)


class LoadScorer:
    """Fewer outstanding tokens score higher (min-max normalised)."""

    def score(self, request, endpoints):
        """1 for the least loaded endpoint, 0 for the most loaded."""
        return _lower_is_better([e.outstanding_tokens for e in endpoints])


class QueueScorer:
    """Fewer waiting requests score higher (llm-d's queue scorer)."""

    def score(self, request, endpoints):
        """1 for the shortest queue, 0 for the longest."""
        return _lower_is_better([e.waiting for e in endpoints])


class KvUsageScorer:
    """More free KV cache scores higher (llm-d's KV-cache utilisation scorer)."""

    def score(self, request, endpoints):
        """``1 - kv_usage`` per endpoint."""
        return [1.0 - min(max(e.kv_usage, 0.0), 1.0) for e in endpoints]


class PrefixScorer:
    """The fraction of the prompt an endpoint has cached (llm-d's prefix-cache scorer)."""

    def score(self, request, endpoints):
        """``cached_prefix_tokens / prompt_tokens`` per endpoint."""
        n = max(request.prompt_tokens, 1)
        return [min(e.cached_prefix_tokens / n, 1.0) for e in endpoints]


class MaxScorePicker:
    """The highest score; ties go to the first endpoint in order."""

    def pick(self, request, endpoints, scores):
        """The first endpoint with the highest score."""
        best = max(range(len(endpoints)), key=lambda i: (scores[i], -i))
        return endpoints[best]


class RandomPicker:
    """Uniformly random among the highest scores, from its own seeded generator."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def pick(self, request, endpoints, scores):
        """A random endpoint among those with the top score."""
        top = max(scores)
        return self.rng.choice([e for e, s in zip(endpoints, scores) if s == top])


class RoundRobinPicker:
    """Cycles through the endpoints it is offered, ignoring scores."""

    def __init__(self) -> None:
        self.next = 0

    def pick(self, request, endpoints, scores):
        """The next endpoint in turn."""
        e = endpoints[self.next % len(endpoints)]
        self.next = (self.next % len(endpoints)) + 1
        return e


@dataclass
class Profile:
    """One scheduling profile: filters, then weighted scorers, then a picker."""

    filters: list = field(default_factory=list)
    scorers: list = field(default_factory=list)
    """``(scorer, weight)`` pairs."""
    picker: object = field(default_factory=MaxScorePicker)

    def run(self, request: RequestView, endpoints: Sequence[EndpointView]) -> EndpointView | None:
        """The endpoint this profile picks, or None when the filters leave none."""
        kept = list(endpoints)
        for f in self.filters:
            kept = f.filter(request, kept)
            if not kept:
                return None
        total = [0.0] * len(kept)
        for scorer, weight in self.scorers:
            for i, s in enumerate(scorer.score(request, kept)):
                total[i] += weight * s
        return self.picker.pick(request, kept, total)


class ProfileRouter:
    """A router made of profiles: ``default`` alone, or ``prefill`` and ``decode`` for disaggregation."""

    def __init__(self, profiles: dict[str, Profile], pd_threshold: int = 0, decode_may_prefill: bool = False):
        if "default" not in profiles and not {"prefill", "decode"} <= profiles.keys():
            raise ValueError("profiles need a 'default' profile, or both 'prefill' and 'decode'")
        self.profiles = profiles
        self.pd_threshold = _whole("pd_threshold", pd_threshold)
        self.decode_may_prefill = _flag("decode_may_prefill", decode_may_prefill)

    @property
    def disaggregated(self) -> bool:
        """Whether it routes to prefill/decode pairs (has a decode profile)."""
        return "decode" in self.profiles

    def route(self, request: RequestView, endpoints: Sequence[EndpointView]) -> RouteDecision:
        """Runs the profiles: the default one, or decode then (for long uncached prompts) prefill."""
        if "decode" in self.profiles:
            decode = self.profiles["decode"].run(request, endpoints)
            if decode is None:
                raise LookupError("the decode profile's filters left no endpoint")
            uncached = request.prompt_tokens - decode.cached_prefix_tokens
            local_ok = decode.role == "mixed" or self.decode_may_prefill
            if uncached > self.pd_threshold or not local_ok:
                prefill = self.profiles["prefill"].run(request, endpoints)
                if prefill is not None:
                    return RouteDecision(instance=decode.index, prefill=prefill.index)
            if decode.role == "decode" and "default" in self.profiles:
                fallback = self.profiles["default"].run(request, endpoints)
                if fallback is not None:
                    return RouteDecision(instance=fallback.index)
            return RouteDecision(instance=decode.index)
        chosen = self.profiles["default"].run(request, endpoints)
        if chosen is None:
            raise LookupError("the default profile's filters left no endpoint")
        return RouteDecision(instance=chosen.index)


def round_robin() -> ProfileRouter:
    """Cycles through serving endpoints (prefill-only and decode-only ones excluded)."""
    return ProfileRouter({"default": Profile(filters=[RoleFilter("mixed")], picker=RoundRobinPicker())})


def least_outstanding_tokens() -> ProfileRouter:
    """The endpoint with the fewest outstanding tokens, first on ties (the simulator's built-in)."""
    return ProfileRouter({"default": Profile(filters=[RoleFilter("mixed")], scorers=[(LoadScorer(), 1.0)])})


def cache_aware(prefix_weight: float = 2.0, load_weight: float = 1.0) -> ProfileRouter:
    """Prefix hits weighed against load, as llm-d's default profile weighs its scorers. Both weights
    are finite numbers >= 0 (ConfigError otherwise)."""
    prefix_weight, load_weight = _number("prefix_weight", prefix_weight), _number("load_weight", load_weight)
    return ProfileRouter({"default": Profile(filters=[RoleFilter("mixed")], scorers=[(PrefixScorer(), prefix_weight), (LoadScorer(), load_weight)])})


def disaggregated(pd_threshold: int = 0, decode_may_prefill: bool = False) -> ProfileRouter:
    """Prefill/decode disaggregation: least-loaded decode endpoint, least-loaded prefill endpoint for
    prompts whose uncached part exceeds ``pd_threshold`` tokens (shorter ones prefill where they decode).
    ``pd_threshold`` is a whole number >= 0 and ``decode_may_prefill`` a boolean (ConfigError otherwise)."""
    return ProfileRouter(
        {
            "decode": Profile(filters=[RoleFilter("decode")], scorers=[(PrefixScorer(), 1.0), (LoadScorer(), 1.0)]),
            "prefill": Profile(filters=[RoleFilter("prefill")], scorers=[(LoadScorer(), 1.0)]),
        },
        pd_threshold=pd_threshold,
        decode_may_prefill=decode_may_prefill,
    )
