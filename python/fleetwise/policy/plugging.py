"""Puts Python policy objects into a simulation: from the scenario (``kind: policy``) or passed in."""

from __future__ import annotations

from typing import Callable, Mapping

from fleetwise.errors import ConfigError
from fleetwise.policy.bridge import RouterBridge, SchedulerBridge
from fleetwise.policy.prefix_cache import PrefixCacheBridge
from fleetwise.policy.registry import create


def instance_names_and_roles(scenario) -> tuple[list[str], list[str]]:
    """``pool/i`` names and roles of every instance, in the core's instance order."""
    names, roles = [], []
    for pool in scenario.cluster.pools:
        for i in range(pool.count):
            names.append(f"{pool.name}/{i}")
            roles.append(pool.role)
    return names, roles


def core_plugins(scenario, router=None, schedulers: Mapping[str, Callable] | None = None, prefix_caches: Mapping[str, Callable] | None = None) -> dict:
    """Keyword arguments for ``_core.simulate`` that plug in the policy objects: ``router`` (a
    Router), ``schedulers`` and ``prefix_caches`` (pool name -> zero-argument factory of a
    BatchScheduler / PrefixCachePolicy, one object per instance), else those the scenario names
    (``kind: policy`` routers and schedulers, a pool's ``prefix_cache_policy``)."""
    names, roles = instance_names_and_roles(scenario)
    extra: dict = {}
    rc = scenario.cluster.router
    if router is None and rc.kind == "policy":
        router = create("router", rc.name, **rc.params)
    if router is not None:
        if not callable(getattr(router, "route", None)):
            raise ConfigError(f"router policy {router!r} has no route(request, endpoints) method")
        extra["router"] = RouterBridge(router, names, roles, 0)

    pool_names = [p.name for p in scenario.cluster.pools]
    factories: dict[int, Callable] = {}
    for name, factory in (schedulers or {}).items():
        if name not in pool_names:
            raise ConfigError(f"schedulers: no pool named {name!r}; pools are {', '.join(pool_names)}")
        if scenario.cluster.pools[pool_names.index(name)].scheduler.kind not in ("policy", "vllm-v1"):
            raise ConfigError(f"cluster.pools.{pool_names.index(name)}.scheduler: a scheduler policy object runs in vLLM v1's loop; set kind: vllm-v1 (or policy) to give its limits")
        factories[pool_names.index(name)] = factory
    for p, pool in enumerate(scenario.cluster.pools):
        sc = pool.scheduler
        if p not in factories and sc.kind == "policy":
            create("scheduler", sc.name, **sc.params)  # fail early on a bad name or parameters
            factories[p] = lambda sc=sc: create("scheduler", sc.name, **sc.params)
    evictors: dict[int, Callable] = {}
    for name, factory in (prefix_caches or {}).items():
        if name not in pool_names:
            raise ConfigError(f"prefix_caches: no pool named {name!r}; pools are {', '.join(pool_names)}")
        evictors[pool_names.index(name)] = factory
    for p, pool in enumerate(scenario.cluster.pools):
        pc = pool.prefix_cache_policy
        if p not in evictors and pc is not None:
            create("prefix-cache", pc.name, **pc.params)
            evictors[p] = lambda pc=pc: create("prefix-cache", pc.name, **pc.params)
    for p in evictors:
        if not scenario.cluster.pools[p].prefix_caching:
            raise ConfigError(f"cluster.pools.{p}.prefix_cache_policy: needs prefix_caching: true")
    if evictors:
        extra["evictors"] = {p: (lambda instance, f=f: PrefixCacheBridge(f())) for p, f in evictors.items()}
    if factories:
        extra["planners"] = {p: (lambda instance, f=f: SchedulerBridge(_checked_scheduler(f()))) for p, f in factories.items()}
    return extra


def _checked_scheduler(policy):
    if not callable(getattr(policy, "plan", None)):
        raise TypeError(f"scheduler policy {policy!r} has no plan(step) method")
    return policy
