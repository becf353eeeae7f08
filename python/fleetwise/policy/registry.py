"""Policies registered by name, so scenarios and CLIs can name them.

``@register("router", "my-router")`` on a class or factory makes ``create("router", "my-router",
**params)`` build it. A name of the form ``package.module:attr`` imports ``attr`` instead, so a
scenario can point at a user's policy without any registration.
"""

from __future__ import annotations

import importlib
from typing import Callable

from fleetwise.errors import ConfigError, PolicyError

KINDS = ("router", "scheduler", "prefix-cache", "expert-cache", "decode-choice")
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
        path = "/" in module or "\\" in module or module.endswith(".py")
        if path or not module or not attr:
            raise ConfigError(f"policy {name!r}: expected module:attr, a Python module on PYTHONPATH and the class or factory in it "
                              f"(e.g. my_pkg.routing:MyRouter for my_pkg/routing.py){', not a file path' if path else ''}")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except ModuleNotFoundError as e:
            top = module.split(".")[0]
            hint = (f"; a module:attr policy is imported from Python's path: put {top}.py (or the package {top}/) in a folder on PYTHONPATH"
                    if e.name == top else "")
            raise ConfigError(f"policy {name!r}: cannot import it ({e}){hint}") from None
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"policy {name!r}: cannot import it ({e})") from None
        except (Exception, SystemExit) as e:  # the module itself fails: a syntax error, an exception at import
            detail = f"{type(e).__name__} in {e.filename}, line {e.lineno}: {e.msg}" if isinstance(e, SyntaxError) else f"{type(e).__name__}: {e}"
            raise ConfigError(f"policy {name!r}: importing module {module!r} failed ({detail})") from None
        if not callable(obj):
            raise ConfigError(f"{kind} policy {name!r} is a {type(obj).__name__}, not a class or factory")
        return obj
    raise ConfigError(f"unknown {kind} policy {name!r}; registered: {', '.join(names(kind)) or 'none'}, or give module:attr")


def create(kind: str, name: str, **params):
    """A new policy object: ``name`` resolved for ``kind`` and called with ``params``."""
    return build(kind, name, resolve(kind, name), **params)


def build(kind: str, name: str, factory: Callable, *args, **params):
    """``factory(*args, **params)``: wrong parameters are a ConfigError, anything else the
    constructor raises a PolicyError naming the policy (its ``__cause__`` the exception)."""
    try:
        return factory(*args, **params)
    except TypeError as e:
        raise ConfigError(f"{kind} policy {name!r}: bad parameters {sorted(params)} ({e})") from None
    except (Exception, SystemExit) as e:  # the constructor itself fails: the user's code, not ours
        raise PolicyError(f"{kind} policy {name!r}: creating it with parameters {params} raised {type(e).__name__}: {e}") from e


def _register_builtins() -> None:
    from fleetwise.policy import decode_choice, expert_cache, prefix_cache, router, scheduler

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
    register("decode-choice", "fewest-outstanding-tokens")(decode_choice.FewestOutstandingTokens)


_register_builtins()
