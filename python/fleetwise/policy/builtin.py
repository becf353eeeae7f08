"""Built-in policies as Python objects, selected by ``kind`` like in a scenario.

The objects wrap the same Rust implementations the simulator calls natively, so a decision made
here is the decision the simulator makes; an engine loop can drive them directly::

    sched = make_scheduler({"kind": "vllm", "max_num_seqs": 8, "max_num_batched_tokens": 2048}, num_blocks=1000)
    sched.add(request_id=1, prompt=300, output=20)
    batch = sched.schedule()      # [(1, 300)]: prefill all 300 prompt tokens
    sched.complete()              # [(1, False)]: request 1 sampled its first token
"""

from __future__ import annotations

import json
from typing import get_args

from pydantic import TypeAdapter

from fleetwise import _core
from fleetwise.config.scenario import RouterConfig, SchedulerConfig

_SCHEDULER = TypeAdapter(SchedulerConfig)


def _kinds(union) -> tuple[str, ...]:
    members = get_args(get_args(union)[0]) or (get_args(union)[0],)
    return tuple(m.model_fields["kind"].default for m in members)


ROUTER_KINDS = _kinds(RouterConfig)
"""Names of the built-in routers."""
SCHEDULER_KINDS = _kinds(SchedulerConfig)
"""Names of the built-in batch schedulers."""


class PolicyStepper:
    """vLLM v1's scheduling loop (the simulator's own) driven step by step with a Python
    BatchScheduler planning each step; request ids may be any hashable values."""

    def __init__(self, core: _core.Scheduler, ids: list):
        self._core = core
        self._ids = ids
        self._live: dict = {}
        """Unfinished requests: id -> the core's index (an id may be reused once its request is done)."""

    def add(self, request_id, prompt: int, output: int, arrival: float = 0.0) -> None:
        """Queues a request with ``prompt`` input tokens and ``output`` tokens to generate,
        arriving at ``arrival`` seconds. ``request_id`` must be hashable and not the id of an
        unfinished request (the policy names requests by it)."""
        try:
            live = request_id in self._live
        except TypeError:
            raise TypeError(f"request_id must be hashable (the policy's orders name requests by it), got {request_id!r}"[:300]) from None
        if live:
            raise ValueError(f"request {request_id!r} is already queued or running: ids of unfinished requests must be unique"[:300])
        self._core.add(len(self._ids), prompt, output, arrival)
        self._live[request_id] = len(self._ids)
        self._ids.append(request_id)

    def schedule(self) -> list[tuple]:
        """The next batch: ``(request_id, tokens)`` per request, in batch order."""
        return [(self._ids[i], n) for i, n in self._core.schedule()]

    def complete(self) -> list[tuple]:
        """Marks the last batch as run: ``(request_id, finished)`` for each request that sampled."""
        sampled = [(self._ids[i], done) for i, done in self._core.complete()]
        for request_id, done in sampled:
            if done:
                self._live.pop(request_id, None)
        return sampled

    def abort(self, request_id) -> bool:
        """Aborts ``request_id`` (its client went away): its KV is freed and it never samples
        again; False if it had already finished or is unknown."""
        try:
            i = self._live.pop(request_id)
        except (KeyError, TypeError):
            return False
        return self._core.abort(i)

    def waiting(self) -> list:
        """Waiting request ids in queue order."""
        return [self._ids[i] for i in self._core.waiting()]

    def running(self) -> list:
        """Running request ids in admission order."""
        return [self._ids[i] for i in self._core.running()]

    def preempted(self) -> int:
        """Requests preempted while forming the last batch."""
        return self._core.preempted()

    def used_blocks(self) -> int:
        """KV blocks in use."""
        return self._core.used_blocks()

    def free_blocks(self) -> int:
        """KV blocks free."""
        return self._core.free_blocks()


def make_policy_scheduler(policy, num_blocks: int, block_size: int = 16, watermark: int = 0, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, reserve_full_prompt: bool = True) -> PolicyStepper:
    """``policy`` (a ``fleetwise.policy.BatchScheduler``) in vLLM v1's loop over ``num_blocks`` KV
    blocks, within the given limits: exactly what a simulated instance runs, one step at a time."""
    from fleetwise.policy.bridge import SchedulerBridge

    ids: list = []
    config = json.dumps({"kind": "vllm-v1", "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens, "reserve_full_prompt": reserve_full_prompt})
    return PolicyStepper(_core.Scheduler(config, num_blocks, block_size, watermark, planner=SchedulerBridge(policy, ids)), ids)


def make_scheduler(config: dict, num_blocks: int, block_size: int = 16, watermark: int | None = None) -> _core.Scheduler:
    """The built-in batch scheduler ``config`` describes, over a KV cache of ``num_blocks`` blocks.

    Methods: ``add(request_id, prompt, output)``, ``schedule() -> [(request_id, tokens)]``,
    ``complete() -> [(request_id, finished)]``, ``abort(request_id) -> bool``, ``waiting()``, ``running()``, ``preempted()``,
    ``used_blocks()``, ``free_blocks()``. Model-dependent defaults (vLLM's ``max_num_batched_tokens``,
    Orca's ``max-len`` reservation) assume an 8,192-token context.
    """
    from fleetwise.catalog import builtin_models
    from fleetwise.cluster import scheduler_json

    cfg = _SCHEDULER.validate_python(config)
    if cfg.kind == "policy":
        raise ValueError("a policy scheduler steps through make_policy_scheduler(policy, ...)")
    # Defaults that depend on a model (vLLM's token limit, Orca's reservation) assume an 8K context.
    model = builtin_models()["llama-3-8b"]
    return _core.Scheduler(json.dumps(scheduler_json(cfg, model)), num_blocks, block_size, watermark, context_tokens=model.max_position_embeddings)
