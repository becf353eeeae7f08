"""Puts Python policy objects into a simulation: from the scenario (``kind: policy``) or passed in."""

from __future__ import annotations

import inspect
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
    """``policy`` when it has a callable ``method``, else a PolicyError saying what it is (a class
    whose ``method`` needs an instance is not a policy object either)."""
    name = method.partition("(")[0]
    article = "an" if kind[0] in "aeiou" else "a"
    if not callable(getattr(policy, name, None)):
        what = "None" if policy is None else f"a {type(policy).__qualname__}"
        raise PolicyError(f"{label}: {what} is not {article} {kind} policy (it has no {method} method)")
    if isinstance(policy, type) and inspect.isfunction(inspect.getattr_static(policy, name, None)):
        # Its first call would fail with "missing 1 required positional argument".
        raise PolicyError(f"{label}: the class {policy.__qualname__} is not {article} {kind} policy object: its {name}() is an instance method: "
                          f"make an instance ({policy.__qualname__}())")
    return policy


def core_plugins(scenario, router=None, schedulers: Mapping[str, Callable] | None = None, prefix_caches: Mapping[str, Callable] | None = None, clock: CallClock | None = None, timeout: float | None = None, expert_caches: Mapping[str, Callable] | None = None, decode_choice=None) -> dict:
    """Keyword arguments for ``_core.simulate`` that plug in the policy objects: ``router`` (a
    Router), ``schedulers`` and ``prefix_caches`` (pool name -> zero-argument factory of a
    BatchScheduler / PrefixCachePolicy, one object per instance), ``expert_caches`` (pool name ->
    factory ``f(num_layers, num_experts, capacity)`` of an ExpertCachePolicy, one object per GPU),
    ``decode_choice`` (a DecodeChoice), else those the scenario names (``kind: policy`` routers and
    schedulers, a pool's ``prefix_cache_policy``, ``experts.cache.policy: {name: ...}``,
    ``cluster.decode_choice``). Every policy call
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
        extra["evictors"] = {p: (lambda instance, f=f, label=label: PrefixCacheBridge(_checked("prefix cache", label, _built_during_run(clock, f, label), "victim(idle)"), label=f"{label} of instance {names[instance]}", clock=clock)) for p, (f, label) in evictors.items()}
    extra.update(_expert_cache_plugins(scenario, expert_caches, names, clock, timeout))
    extra.update(_decode_choice_plugin(scenario, decode_choice, names, roles, clock, timeout))
    if factories:
        extra["planners"] = {p: (lambda instance, f=f, label=label: SchedulerBridge(_checked("scheduler", label, _built_during_run(clock, f, label), "plan(step)"), label=f"{label} of instance {names[instance]}", clock=clock)) for p, (f, label) in factories.items()}
    return extra


def expert_cache_sizes(scenario, pool_index: int) -> tuple[int, int, int]:
    """(MoE layers, experts per GPU, cached experts per layer per GPU) of a pool with experts: the
    sizes the core gives each GPU's expert cache policy."""
    from fleetwise.catalog import lookup

    pool = scenario.cluster.pools[pool_index]
    model = lookup("model", pool.model, scenario.models, f"cluster.pools.{pool_index}.model")
    ep = pool.parallelism.ep
    per_gpu = model.num_experts // ep
    return model.moe_layers, per_gpu, min(-(-pool.experts.cache.experts_per_layer // ep), per_gpu)


def _expert_cache_plugins(scenario, expert_caches: Mapping[str, Callable] | None, names: list[str], clock: CallClock, timeout: float | None) -> dict:
    """``{"expert_caches": {pool index: f(instance, rank, layers, experts, capacity) -> bridge}}``
    for the pools given a factory in ``expert_caches`` or naming a policy object in
    ``experts.cache.policy``; one policy is built first, to fail before anything runs."""
    from fleetwise.config.base import PolicyRef
    from fleetwise.policy.expert_cache import ExpertCacheBridge
    from fleetwise.policy.registry import build, resolve

    pools = scenario.cluster.pools
    pool_names = [p.name for p in pools]
    chosen: dict[int, tuple[Callable, str]] = {}
    for name, factory in (expert_caches or {}).items():
        if name not in pool_names:
            raise ConfigError(f"expert_caches: no pool named {name!r}; pools are {', '.join(pool_names)}")
        _check_factory(factory, f"expert cache policy {_name(factory)!r}")
        chosen[pool_names.index(name)] = (factory, f"expert cache policy {_name(factory)!r}")
    for p, pool in enumerate(pools):
        ref = pool.experts.cache.policy if pool.experts is not None else None
        if p not in chosen and isinstance(ref, PolicyRef):
            chosen[p] = (lambda layers, experts, capacity, ref=ref, f=resolve("expert-cache", ref.name): build("expert-cache", ref.name, f, layers, experts, capacity, **ref.params), f"expert cache policy {ref.name!r}")
    for p in chosen:
        if pools[p].experts is None or pools[p].experts.placement == "hbm":
            raise ConfigError(f"cluster.pools.{p}.experts.cache.policy: an expert cache policy object needs offloaded experts (experts.placement dram or flash)")
    methods = ("access(layer, expert)", "admit(layer, expert)", "resident(layer)")

    def checked(policy, label: str):
        for m in methods:
            _checked("expert cache", label, policy, m)
        return policy

    for p, (f, label) in chosen.items():
        sizes = expert_cache_sizes(scenario, p)
        checked(_built(lambda f=f, sizes=sizes: f(*sizes), label, timeout), f"{label} of pool {pool_names[p]!r}")
    if not chosen:
        return {}
    return {"expert_caches": {
        p: (lambda instance, rank, layers, experts, capacity, f=f, label=label: ExpertCacheBridge(
            checked(_built_during_run(clock, lambda: f(layers, experts, capacity), label), label), layers, experts, capacity,
            label=f"{label} of instance {names[instance]} GPU {rank}", clock=clock))
        for p, (f, label) in chosen.items()}}


def _decode_choice_plugin(scenario, choice, names: list[str], roles: list[str], clock: CallClock, timeout: float | None) -> dict:
    """``{"decode_choice": bridge}`` for ``choice`` or the scenario's ``cluster.decode_choice``."""
    from fleetwise.policy.decode_choice import DecodeChoiceBridge

    ref = scenario.cluster.decode_choice
    if choice is None and ref is None:
        return {}
    if choice is None:
        label = f"decode choice policy {ref.name!r}"
        choice = _built(lambda: create("decode-choice", ref.name, **ref.params), label, timeout)
    else:
        label = f"decode choice policy {_name(choice)!r}"
    if "decode" not in roles:
        raise ConfigError("cluster.decode_choice: a decode choice needs a pool with role decode (a disaggregated cluster)")
    return {"decode_choice": DecodeChoiceBridge(_checked("decode choice", label, choice, "choose(request, decoders, preferred)"), names, roles, label=label, clock=clock)}


def _built_during_run(clock: CallClock, factory: Callable, label: str):
    """``_built`` for an instance's own policy object, made by the core in the simulation's worker
    thread: noted on ``clock`` so that the run's watchdog holds its creation to the per-call limit
    (a constructor that never returns stops the run with a PolicyError, as a call would)."""
    clock.calls += 1
    clock.busy = f"{label}: creating it"
    try:
        return _built(factory, label)
    finally:
        clock.busy = None


def _check_factory(factory, label: str) -> None:
    """A PolicyError unless ``factory`` can be called: a policy object given where a factory of
    them (a class or function) was wanted."""
    if not callable(factory):
        raise PolicyError(f"{label}: a {type(factory).__qualname__} object is not a factory: give its class, or a function that returns a new "
                          "policy object for each instance (or GPU)")


def _built(factory: Callable, label: str, timeout: float | None = None):
    """A new policy object from ``factory`` within ``timeout`` seconds (on the main thread); its
    own exception becomes a PolicyError naming it."""
    _check_factory(factory, label)
    try:
        with deadline(timeout, f"{label}: creating it"):
            return factory()
    except PolicyTimeout:
        raise PolicyError(f"{label}: creating it did not return within {timeout:g} s") from None
    except (ConfigError, PolicyError):
        raise
    except (Exception, SystemExit) as e:
        raise PolicyError(f"{label}: creating it raised {type(e).__name__}: {e}") from e
