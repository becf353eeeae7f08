"""Puts Python policy objects into a simulation: from the scenario (``kind: policy``) or passed in."""

from __future__ import annotations

from typing import Callable, Mapping

from fleetwise.errors import ConfigError, PolicyError
from fleetwise.policy.bridge import RouterBridge, SchedulerBridge
from fleetwise.policy.prefix_cache import PrefixCacheBridge
from fleetwise.policy.registry import create
from fleetwise.policy.watchdog import CallClock, PolicyTimeout, deadline


def instance_names_and_roles(scenario) -> tuple[list[str], list[str]]:
    """``pool/i`` names and roles of every instance, in the core's instance order."""
    names, roles = [], []
    for pool in scenario.cluster.pools:
        for i in range(pool.count):
            names.append(f"{pool.name}/{i}")
            roles.append(pool.role)
    return names, roles


def _name(policy) -> str:
    """A readable name of a policy object or factory passed in from Python."""
    return getattr(policy, "__qualname__", None) or type(policy).__qualname__


def _checked(kind: str, label: str, policy, method: str):
    """``policy`` when it has a callable ``method``, else a PolicyError saying what it is."""
    if not callable(getattr(policy, method.partition("(")[0], None)):
        what = "None" if policy is None else f"a {type(policy).__qualname__}"
        raise PolicyError(f"{label}: {what} is not a {kind} policy (it has no {method} method)")
    return policy


def core_plugins(scenario, router=None, schedulers: Mapping[str, Callable] | None = None, prefix_caches: Mapping[str, Callable] | None = None, clock: CallClock | None = None, timeout: float | None = None) -> dict:
    """Keyword arguments for ``_core.simulate`` that plug in the policy objects: ``router`` (a
    Router), ``schedulers`` and ``prefix_caches`` (pool name -> zero-argument factory of a
    BatchScheduler / PrefixCachePolicy, one object per instance), else those the scenario names
    (``kind: policy`` routers and schedulers, a pool's ``prefix_cache_policy``). Every policy call
    is noted on ``clock`` (for the per-call time limit). A policy object that is not one (no such
    method, a factory returning None) is a PolicyError before anything runs, and so is importing or
    building one that takes longer than ``timeout`` seconds."""
    names, roles = instance_names_and_roles(scenario)
    clock = clock or CallClock()
    extra: dict = {}
    rc = scenario.cluster.router
    label = "the router policy"
    if router is None and rc.kind == "policy":
        label = f"router policy {rc.name!r}"
        router = _built(lambda: create("router", rc.name, **rc.params), label, timeout)
    elif router is not None:
        label = f"router policy {_name(router)!r}"
    if router is not None and getattr(router, "decode_may_prefill", False) and "decode" in roles:
        from fleetwise.errors import ConfigError

        raise ConfigError(f"cluster.router: {label} sets decode_may_prefill, which the simulator cannot apply: its decode-role instances only receive prefilled requests (allowed in simulations: decode_may_prefill false)")
    if router is not None:
        extra["router"] = RouterBridge(_checked("router", label, router, "route(request, endpoints)"), names, roles, 0, label=label, clock=clock)

    pool_names = [p.name for p in scenario.cluster.pools]
    factories: dict[int, tuple[Callable, str]] = {}
    for name, factory in (schedulers or {}).items():
        if name not in pool_names:
            raise ConfigError(f"schedulers: no pool named {name!r}; pools are {', '.join(pool_names)}")
        if scenario.cluster.pools[pool_names.index(name)].scheduler.kind not in ("policy", "vllm-v1"):
            raise ConfigError(f"cluster.pools.{pool_names.index(name)}.scheduler: a scheduler policy object runs in vLLM v1's loop; set kind: vllm-v1 (or policy) to give its limits")
        factories[pool_names.index(name)] = (factory, f"scheduler policy {_name(factory)!r}")
    for p, pool in enumerate(scenario.cluster.pools):
        sc = pool.scheduler
        if p not in factories and sc.kind == "policy":
            factories[p] = (lambda sc=sc: create("scheduler", sc.name, **sc.params), f"scheduler policy {sc.name!r}")
    evictors: dict[int, tuple[Callable, str]] = {}
    for name, factory in (prefix_caches or {}).items():
        if name not in pool_names:
            raise ConfigError(f"prefix_caches: no pool named {name!r}; pools are {', '.join(pool_names)}")
        evictors[pool_names.index(name)] = (factory, f"prefix cache policy {_name(factory)!r}")
    for p, pool in enumerate(scenario.cluster.pools):
        pc = pool.prefix_cache_policy
        if p not in evictors and pc is not None:
            evictors[p] = (lambda pc=pc: create("prefix-cache", pc.name, **pc.params), f"prefix cache policy {pc.name!r}")
    for p in evictors:
        if not scenario.cluster.pools[p].prefix_caching:
            raise ConfigError(f"cluster.pools.{p}.prefix_cache_policy: needs prefix_caching: true")
    # Fail early, before anything runs, on a bad name, parameters, a raising constructor, or an
    # object that is not a policy.
    for p, (f, label) in factories.items():
        _checked("scheduler", f"{label} of pool {pool_names[p]!r}", _built(f, label, timeout), "plan(step)")
    for p, (f, label) in evictors.items():
        _checked("prefix cache", f"{label} of pool {pool_names[p]!r}", _built(f, label, timeout), "victim(idle)")
    if evictors:
        extra["evictors"] = {p: (lambda instance, f=f, label=label: PrefixCacheBridge(_checked("prefix cache", label, _built(f, label), "victim(idle)"), label=f"{label} of instance {names[instance]}", clock=clock)) for p, (f, label) in evictors.items()}
    if factories:
        extra["planners"] = {p: (lambda instance, f=f, label=label: SchedulerBridge(_checked("scheduler", label, _built(f, label), "plan(step)"), label=f"{label} of instance {names[instance]}", clock=clock)) for p, (f, label) in factories.items()}
    return extra


def _built(factory: Callable, label: str, timeout: float | None = None):
    """A new policy object from ``factory`` within ``timeout`` seconds (on the main thread); its
    own exception becomes a PolicyError naming it."""
    try:
        with deadline(timeout, f"{label}: creating it"):
            return factory()
    except PolicyTimeout:
        raise PolicyError(f"{label}: creating it did not return within {timeout:g} s") from None
    except (ConfigError, PolicyError):
        raise
    except (Exception, SystemExit) as e:
        raise PolicyError(f"{label}: creating it raised {type(e).__name__}: {e}") from e
