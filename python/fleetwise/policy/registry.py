"""Policies registered by name, so scenarios and CLIs can name them.

``@register("router", "my-router")`` on a class or factory makes ``create("router", "my-router",
**params)`` build it. A name of the form ``package.module:attr`` imports ``attr`` instead, so a
scenario can point at a user's policy without any registration.
"""

from __future__ import annotations

import importlib
from typing import Callable

from fleetwise.errors import ConfigError

KINDS = ("router", "scheduler", "prefix-cache", "expert-cache")
_REGISTRY: dict[str, dict[str, Callable]] = {k: {} for k in KINDS}


def register(kind: str, name: str) -> Callable:
    """Decorator registering a policy class or factory under ``name`` for ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown policy kind {kind!r}; allowed: {', '.join(KINDS)}")

    def deco(factory: Callable) -> Callable:
        _REGISTRY[kind][name] = factory
        return factory

    return deco


def names(kind: str) -> list[str]:
    """Registered names of ``kind``, sorted."""
    return sorted(_REGISTRY[kind])


def resolve(kind: str, name: str) -> Callable:
    """The factory registered as ``name``, or imported from ``module:attr``."""
    if kind not in KINDS:
        raise ConfigError(f"unknown policy kind {kind!r}; allowed: {', '.join(KINDS)}")
    if name in _REGISTRY[kind]:
        return _REGISTRY[kind][name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"policy {name!r}: cannot import it ({e})") from None
        return obj
    raise ConfigError(f"unknown {kind} policy {name!r}; registered: {', '.join(names(kind)) or 'none'}, or give module:attr")


def create(kind: str, name: str, **params):
    """A new policy object: ``name`` resolved for ``kind`` and called with ``params``."""
    factory = resolve(kind, name)
    try:
        return factory(**params)
    except TypeError as e:
        raise ConfigError(f"{kind} policy {name!r}: bad parameters {sorted(params)} ({e})") from None


def _register_builtins() -> None:
    from fleetwise.policy import expert_cache, prefix_cache, router, scheduler

    register("router", "round-robin")(router.round_robin)
    register("router", "least-outstanding-tokens")(router.least_outstanding_tokens)
    register("router", "cache-aware")(router.cache_aware)
    register("router", "disaggregated")(router.disaggregated)
    register("scheduler", "fcfs")(scheduler.Fcfs)
    register("scheduler", "shortest-prompt-first")(scheduler.ShortestPromptFirst)
    register("scheduler", "decode-budget")(scheduler.DecodeBudget)
    register("prefix-cache", "lru")(prefix_cache.LruPrefixCache)
    register("prefix-cache", "lfu")(prefix_cache.LfuPrefixCache)
    register("expert-cache", "lru")(expert_cache.LruExpertCache)
    register("expert-cache", "lfu")(expert_cache.LfuExpertCache)
    register("expert-cache", "static")(expert_cache.StaticExpertCache)


_register_builtins()
