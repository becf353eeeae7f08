"""A vLLM v1 scheduler that follows a fleetwise batch scheduler (``fleetwise.policy.BatchScheduler``).

:class:`FleetwiseScheduler` subclasses vLLM's own ``vllm.v1.core.sched.scheduler.Scheduler`` and
plugs into vLLM's ``scheduler_cls`` hook. Before each of vLLM's scheduling steps it builds a
:class:`~fleetwise.policy.views.StepView` from vLLM's queues and KV cache, asks the policy for a
:class:`~fleetwise.policy.decisions.StepPlan` and applies it to vLLM's own loop:

* ``token_budget`` becomes the step's ``max_num_scheduled_tokens``, ``max_num_seqs`` the step's
  admission limit (``max_num_active_reqs``), ``max_prefill_chunk`` the step's
  ``long_prefill_token_threshold``;
* ``running_order`` reorders ``self.running`` (the order in which running requests take budget);
* ``waiting_order`` reorders the waiting queue (the admission order);
* ``victim_order`` is applied through vLLM's priority preemption path: running requests get
  per-step priorities so that vLLM's "preempt the lowest priority" picks the plan's victims in order.

vLLM then runs its own ``schedule()``: block allocation, preemption by recompute, prefix caching,
chunking rules and every KV invariant stay vLLM's. After the step the running list is put back in
admission order and the waiting queue in queue order, so the next view looks like the simulator's.
The same policy object therefore plans the same batches here and in ``fleetwise.simulate`` (pool
scheduler ``vllm-v1``); ``tests/integration/test_vllm_scheduler.py`` checks it token for token.

Supplying the policy
--------------------
* ``LLM(..., scheduler_cls=make_scheduler_cls(policy))``: a subclass bound to ``policy``. The
  scheduler runs in vLLM's engine-core process; with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` that is
  your process, and :func:`engine_scheduler` returns the live scheduler (to swap the policy with
  :meth:`FleetwiseScheduler.set_policy` or read :attr:`FleetwiseScheduler.recorded`). With
  multiprocessing on (vLLM's default) the class goes to the engine-core process by name, forked or
  spawned (vLLM on CPU spawns): this module exports it under its generated name and the policy
  travels pickled in ``FLEETWISE_VLLM_POLICIES`` (so the policy must be picklable).
* ``vllm serve MODEL --scheduler-cls fleetwise.integrations.vllm_scheduler.FleetwiseScheduler`` with
  ``FLEETWISE_VLLM_POLICY=package.module:name`` in the environment: ``name`` is a policy object, or a
  class or factory called without arguments. Or put ``Scheduler = make_scheduler_cls(MyPolicy())`` in
  a module of your own and pass ``--scheduler-cls mymodule.Scheduler``.
* :func:`configure` sets a process-wide default policy (in-process engines only).
* Without any of these the scheduler plans like vLLM itself (:class:`fleetwise.policy.Fcfs` with
  vLLM's configured limits).

Request ids in the views are vLLM's engine request ids (``request.request_id``: the id you passed
plus vLLM's random suffix, unless ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION`` is set); ``arrival`` is
``request.arrival_time``. A request's own ``priority`` is ignored: the plan's orders replace it.
"""

from __future__ import annotations

import base64
import importlib
import logging
import os
import pickle
import re
import time
import warnings
from copy import copy
from typing import Any, Hashable

import vllm

from vllm.v1.core.sched.request_queue import FCFSRequestQueue, SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler

from fleetwise.policy.bridge import PolicyAnswerError, checked_count, checked_order
from fleetwise.policy.decisions import StepPlan, ordered
from fleetwise.policy.scheduler import Fcfs
from fleetwise.policy.views import RequestView, StepView

POLICY_ENV = "FLEETWISE_VLLM_POLICY"
"""Environment variable naming the policy (``package.module:name``) for ``vllm serve --scheduler-cls``."""
BOUND_POLICIES_ENV = "FLEETWISE_VLLM_POLICIES"
"""Environment variable carrying the policies of :func:`make_scheduler_cls` classes (pickled, base64)
to vLLM's engine-core process, which rebuilds the classes by name."""
TESTED_VLLM = ("0.32",)
"""vLLM versions (major.minor) this adapter is tested against; it reaches into the scheduler's
internals, so other versions get a warning."""

log = logging.getLogger("fleetwise.vllm")


def check_vllm_version(version: str = vllm.__version__) -> bool:
    """Whether ``version`` is one this adapter was tested with; warns (once per call) if not."""
    major_minor = ".".join(re.split(r"[.+]", version)[:2])
    if major_minor in TESTED_VLLM:
        return True
    warnings.warn(f"fleetwise's vLLM scheduler adapter is tested with vLLM {', '.join(TESTED_VLLM)}; this is vLLM {version}: "
                  "it relies on the scheduler's internals, so check a run (record_steps) before trusting it", stacklevel=2)
    return False


check_vllm_version()

_default_policy: Any = None


def configure(policy: Any) -> None:
    """Sets the policy that :class:`FleetwiseScheduler` instances built afterwards in this process use
    when their class has none (``None`` clears it)."""
    global _default_policy
    _default_policy = policy


def _policy_from_env() -> Any:
    """The policy named by ``FLEETWISE_VLLM_POLICY`` (None when unset). Raises ValueError naming the
    variable when it cannot be imported, or names something that is not a policy nor makes one."""
    spec = os.environ.get(POLICY_ENV)
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"{POLICY_ENV} must be 'package.module:name', got {spec!r}")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # not found, or the module failed while importing (SyntaxError, its own errors)
        raise ValueError(f"{POLICY_ENV}={spec!r}: cannot import {module}: {type(e).__name__}: {e}") from e
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{POLICY_ENV}={spec!r}: {module} has no attribute {name}")
        obj = getattr(obj, part)
    if isinstance(obj, type) or not callable(getattr(obj, "plan", None)):
        if not callable(obj):
            raise ValueError(f"{POLICY_ENV}={spec!r} names {obj!r}: not a policy (no plan(step) method), a class or a factory")
        try:
            obj = obj()
        except Exception as e:
            raise ValueError(f"{POLICY_ENV}={spec!r}: calling {name}() with no arguments failed: {type(e).__name__}: {e}") from e
    if not callable(getattr(obj, "plan", None)):
        raise ValueError(f"{POLICY_ENV}={spec!r}: {name} made {obj!r}, which has no plan(step) method")
    return obj


class FleetwiseScheduler(Scheduler):
    """vLLM's scheduler, planned step by step by a fleetwise ``BatchScheduler``.

    The policy is the class attribute ``fleetwise_policy`` (set by :func:`make_scheduler_cls`), else
    the one given to :func:`configure`, else the one named by ``FLEETWISE_VLLM_POLICY``, else FCFS
    with vLLM's configured limits. A plan may not exceed vLLM's configured ``max_num_seqs`` and
    ``max_num_scheduled_tokens`` (they size the model runner): it may only tighten them.

    When :attr:`record_steps` is true, each ``schedule()`` call appends to :attr:`recorded` a dict
    with ``step``, ``scheduled`` (``[(request_id, tokens), ...]`` in vLLM's batch order) and
    ``preempted`` (request ids in the order vLLM preempted them).
    """

    fleetwise_policy: Any = None
    record_steps: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The plan's chunk cap is applied through long_prefill_token_threshold each step: keep a
        # private copy of the scheduler config so the engine's shared one is never changed.
        self.scheduler_config = copy(self.scheduler_config)
        self._config_budget = self.max_num_scheduled_tokens
        self._config_active = self.max_num_active_reqs
        self._config_threshold = self.scheduler_config.long_prefill_token_threshold
        # Waiting queues stay first-come-first-served deques, which this class reorders per plan;
        # vLLM's priority preemption path picks victims by per-step priorities (see _apply_plan).
        if not isinstance(self.waiting, FCFSRequestQueue):
            self.waiting = FCFSRequestQueue(sorted(self.waiting))
        if not isinstance(self.kv_holding_waiting, FCFSRequestQueue):
            self.kv_holding_waiting = FCFSRequestQueue(sorted(self.kv_holding_waiting))
        self.policy = SchedulingPolicy.PRIORITY
        self.recorded: list[dict] = []
        self.decisions = {"steps": 0, "budget_tightened": 0, "seqs_tightened": 0, "chunk_capped": 0, "running_reordered": 0, "waiting_reordered": 0, "victims_chosen": 0}
        """How often the policy's plans changed what vLLM would have done on its own, by kind."""
        self._admitted: dict[str, int] = {}
        self._admissions = 0
        self._steps = 0
        self._step_preempted: list[str] = []
        self._hashes: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._cached: dict[str, int] = {}
        policy = type(self).fleetwise_policy
        if policy is None:
            policy = _default_policy
        if policy is None:
            policy = _policy_from_env()
        if policy is None:
            chunk = self._config_threshold or None
            policy = Fcfs(max_num_seqs=self._config_active, max_num_batched_tokens=self._config_budget, max_prefill_chunk=chunk)
        self.set_policy(policy)

    # -- policy -----------------------------------------------------------------------------------

    def set_policy(self, policy: Any) -> None:
        """Replaces the policy (a ``BatchScheduler``); the view's step counter restarts at 0."""
        if not callable(getattr(policy, "plan", None)):
            raise TypeError(f"the policy must have a plan(step) method, got {policy!r}")
        self.batch_scheduler = policy
        self._steps = 0

    # -- the view ---------------------------------------------------------------------------------

    def _request_view(self, r: Any) -> RequestView:
        rid = r.request_id
        stats = r.prefill_stats
        if stats is not None and stats.num_prompt_tokens:
            self._cached[rid] = stats.num_cached_tokens
        hashes: tuple[int, ...] = ()
        if r.block_hashes:
            full = min(len(r.block_hashes), r.num_prompt_tokens // self.block_size)
            known = self._hashes.get(rid)
            if known is None or known[0] != full:
                known = (full, tuple(int.from_bytes(bytes(h)[:8], "big") for h in r.block_hashes[:full]))
                self._hashes[rid] = known
            hashes = known[1]
        return RequestView(
            id=rid,
            prompt_tokens=r.num_prompt_tokens,
            max_output_tokens=r.max_tokens,
            computed_tokens=r.num_computed_tokens,
            generated_tokens=r.num_output_tokens,
            cached_tokens=self._cached.get(rid, 0),
            arrival=r.arrival_time,
            preemptions=r.num_preemptions,
            prefix_hashes=hashes,
        )

    def _running_by_admission(self) -> list[Any]:
        """``self.running`` in admission order (oldest first); numbers requests admitted since."""
        for r in self.running:
            if r.request_id not in self._admitted:
                self._admitted[r.request_id] = self._admissions
                self._admissions += 1
        return sorted(self.running, key=lambda r: self._admitted[r.request_id])

    def step_view(self) -> StepView:
        """What the policy sees now: waiting requests in queue order (those holding KV first, as vLLM
        drains them first), running ones in admission order, and the KV cache's free and usable
        blocks (vLLM's null block excluded)."""
        running = self._running_by_admission()
        pool = self.kv_cache_manager.block_pool
        return StepView(
            waiting=tuple(self._request_view(r) for q in (self.kv_holding_waiting, self.waiting) for r in q),
            running=tuple(self._request_view(r) for r in running),
            free_blocks=pool.get_num_free_blocks(),
            total_blocks=pool.num_gpu_blocks - 1,
            block_size=self.block_size,
            step=self._steps,
            now=time.time(),
        )

    def plan_step(self) -> tuple[StepView, StepPlan]:
        """The view and the policy's checked plan for the next step."""
        view = self.step_view()
        plan = self.batch_scheduler.plan(view)
        if not isinstance(plan, StepPlan):
            raise PolicyAnswerError(f"plan() must return a StepPlan, got {plan!r}")
        # The same checks as the simulator's (fleetwise.policy.bridge): ints, not floats, NaN or bools.
        budget = checked_count(plan.token_budget, "plan().token_budget")
        seqs = checked_count(plan.max_num_seqs, "plan().max_num_seqs")
        chunk = checked_count(plan.max_prefill_chunk, "plan().max_prefill_chunk", allow_none=True)
        if budget > self._config_budget:
            raise PolicyAnswerError(f"the scheduler's plan.token_budget must be in 1..={self._config_budget} (vLLM's max_num_scheduled_tokens), got {plan.token_budget}")
        if seqs > self._config_active:
            raise PolicyAnswerError(f"the scheduler's plan.max_num_seqs must be in 1..={self._config_active} (vLLM's max_num_seqs), got {plan.max_num_seqs}")
        # Each order names requests of its own queue only, as in the simulator (fleetwise.policy.bridge).
        queues = {"running_order": ("running", view.running), "waiting_order": ("waiting", view.waiting), "victim_order": ("running", view.running)}
        orders = {name: checked_order(getattr(plan, name), view.requests, f"plan().{name}", {r.id: None for r in rows}, queue) for name, (queue, rows) in queues.items()}
        return view, StepPlan(budget, seqs, max_prefill_chunk=chunk, **orders)

    # -- scheduling -------------------------------------------------------------------------------

    def _count(self, view: StepView, plan: StepPlan) -> None:
        d = self.decisions
        d["steps"] += 1
        d["budget_tightened"] += plan.token_budget < self._config_budget
        d["seqs_tightened"] += plan.max_num_seqs < self._config_active
        d["chunk_capped"] += plan.max_prefill_chunk is not None
        d["running_reordered"] += plan.running_order is not None and list(ordered([r.id for r in view.running], plan.running_order)) != [r.id for r in view.running]
        d["waiting_reordered"] += plan.waiting_order is not None and list(ordered([r.id for r in view.waiting], plan.waiting_order)) != [r.id for r in view.waiting]
        d["victims_chosen"] += plan.victim_order is not None
        log.debug("step %d: budget %d, max_num_seqs %d, chunk %s, %d running, %d waiting", view.step, plan.token_budget, plan.max_num_seqs,
                  plan.max_prefill_chunk, len(view.running), len(view.waiting))

    def _apply_plan(self, view: StepView, plan: StepPlan) -> dict[str, int]:
        """Sets this step's limits and orders; returns the priorities to restore afterwards."""
        self._count(view, plan)
        by_id = {r.request_id: r for r in self.running}
        running_ids = [r.id for r in view.running]
        budget = plan.token_budget
        threshold = 0
        if plan.max_prefill_chunk is not None:
            running, waiting = self.get_request_counts()
            if running + waiting > 1:
                threshold = plan.max_prefill_chunk
            else:
                # vLLM lifts long_prefill_token_threshold for a lone request; the plan's cap holds
                # regardless, and for one request a smaller budget is the same cap.
                budget = min(budget, plan.max_prefill_chunk)
        self.max_num_scheduled_tokens = budget
        self.max_num_active_reqs = plan.max_num_seqs
        self.scheduler_config.long_prefill_token_threshold = threshold
        self.adaptive_long_prefill_threshold = False

        self.running[:] = [by_id[i] for i in ordered(running_ids, plan.running_order)]
        if plan.waiting_order is not None and len(self.waiting) > 1:
            by_wid = {r.request_id: r for r in self.waiting}
            queue = ordered(list(by_wid), plan.waiting_order)
            self.waiting.clear()
            self.waiting.extend(by_wid[i] for i in queue)
        # vLLM's priority path preempts max((priority, arrival_time)) first: give the first victim
        # the largest priority.
        victims = ordered(running_ids[::-1], plan.victim_order)
        saved = {}
        for rank, rid in enumerate(victims):
            r = by_id[rid]
            saved[rid] = r.priority
            r.priority = len(victims) - rank
        return saved

    def _restore(self, waiting_before: list[str], saved: dict[str, int]) -> None:
        for rid, priority in saved.items():
            r = self.requests.get(rid)
            if r is not None:
                r.priority = priority
        self.max_num_scheduled_tokens = self._config_budget
        self.max_num_active_reqs = self._config_active
        self.scheduler_config.long_prefill_token_threshold = self._config_threshold
        for rid in self._step_preempted:
            self._admitted.pop(rid, None)
        self.running[:] = self._running_by_admission()
        # Requests preempted this step sit at the front (vLLM prepends them); the rest go back to
        # queue order.
        if len(self.waiting) > 1:
            position = {rid: k for k, rid in enumerate(waiting_before)}
            fresh = [r for r in self.waiting if r.request_id not in position]
            kept = sorted((r for r in self.waiting if r.request_id in position), key=lambda r: position[r.request_id])
            self.waiting.clear()
            self.waiting.extend(fresh + kept)

    def _preempt_request(self, request: Any, *args: Any, **kwargs: Any) -> None:
        self._step_preempted.append(request.request_id)
        super()._preempt_request(request, *args, **kwargs)

    def schedule(self, *args: Any, **kwargs: Any):
        """Plans the step with the policy, then runs vLLM's own scheduling loop under that plan."""
        self._forget_finished()
        view, plan = self.plan_step()
        self._steps += 1
        waiting_before = [r.request_id for r in self.waiting]
        self._step_preempted = []
        saved = self._apply_plan(view, plan)
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            self._restore(waiting_before, saved)
        if self.record_steps:
            self.recorded.append({"step": view.step, "scheduled": list(out.num_scheduled_tokens.items()), "preempted": list(self._step_preempted)})
        return out

    def _forget_finished(self) -> None:
        if len(self._admitted) > len(self.running) or len(self._hashes) + len(self._cached) > 2 * len(self.requests):
            live = self.requests
            running = {r.request_id for r in self.running}
            self._admitted = {k: v for k, v in self._admitted.items() if k in running}
            self._hashes = {k: v for k, v in self._hashes.items() if k in live}
            self._cached = {k: v for k, v in self._cached.items() if k in live}


def make_scheduler_cls(policy: Any, base: type = FleetwiseScheduler, name: str | None = None) -> type:
    """A :class:`FleetwiseScheduler` subclass bound to ``policy``, for ``LLM(scheduler_cls=...)``.

    ``base`` may be another subclass of :class:`FleetwiseScheduler`. vLLM's async scheduling runs
    only with its own ``AsyncScheduler``; a custom ``scheduler_cls`` like this one runs vLLM
    synchronously. The class is importable by name from this module, and the policy travels to
    child processes in ``FLEETWISE_VLLM_POLICIES``, so vLLM may fork or spawn its engine core.
    """
    if not (isinstance(base, type) and issubclass(base, FleetwiseScheduler)):
        raise TypeError(f"base must be a FleetwiseScheduler subclass, got {base!r}")
    if not callable(getattr(policy, "plan", None)):
        raise TypeError(f"the policy must have a plan(step) method, got {policy!r}")
    bound = _bound_policies()
    name = name or f"FleetwiseScheduler_{type(policy).__name__}_{len(bound) + 1}"
    if not name.isidentifier():
        raise ValueError(f"name must be a Python identifier, got {name!r}")
    cls = _bind(name, policy, base)
    try:
        bound[name] = (policy, base)
        os.environ[BOUND_POLICIES_ENV] = base64.b64encode(pickle.dumps(bound)).decode()
    except Exception as e:  # noqa: BLE001 - an unpicklable policy still works in this process
        log.warning("policy %r cannot be pickled (%s): the scheduler class works in this process and forked ones, not in a spawned engine core", policy, e)
    return cls


def _bind(name: str, policy: Any, base: type) -> type:
    cls = type(name, (base,), {"fleetwise_policy": policy, "__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


def _bound_policies() -> dict:
    raw = os.environ.get(BOUND_POLICIES_ENV)
    return pickle.loads(base64.b64decode(raw)) if raw else {}


def __getattr__(name: str) -> type:
    """Rebuilds a :func:`make_scheduler_cls` class by name in a process that did not make it (vLLM's
    spawned engine core unpickling ``scheduler_cls``), from ``FLEETWISE_VLLM_POLICIES``."""
    if name.startswith("FleetwiseScheduler_") or name in _bound_names():
        bound = _bound_policies()
        if name in bound:
            policy, base = bound[name]
            return _bind(name, policy, base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _bound_names() -> set[str]:
    try:
        return set(_bound_policies())
    except Exception:  # noqa: BLE001 - a damaged variable: nothing to rebuild
        return set()


def engine_scheduler(llm: Any) -> FleetwiseScheduler:
    """The scheduler of an in-process vLLM engine (``vllm.LLM`` or ``LLMEngine`` built with
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    engine = getattr(llm, "llm_engine", llm)
    client = getattr(engine, "engine_core", None)
    core = getattr(client, "engine_core", None)
    sched = getattr(core, "scheduler", None)
    if sched is None:
        raise RuntimeError("the vLLM engine core runs in another process; build the engine with VLLM_ENABLE_V1_MULTIPROCESSING=0 to reach its scheduler")
    if not isinstance(sched, FleetwiseScheduler):
        raise RuntimeError(f"the engine's scheduler is {type(sched).__name__}, not a FleetwiseScheduler: pass scheduler_cls=make_scheduler_cls(policy)")
    return sched


def scheduled_ids(steps: list[dict]) -> list[list[tuple[Hashable, int]]]:
    """The ``scheduled`` lists of recorded steps, trailing empty steps dropped."""
    out = [s["scheduled"] for s in steps]
    while out and not out[-1]:
        out.pop()
    return out
