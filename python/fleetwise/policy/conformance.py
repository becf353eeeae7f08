"""A conformance checker users run on their own policies before plugging them in.

Each check drives the policy through many randomised, seeded situations and verifies its answers
against the interface: types, indices in range, roles respected, orders naming only known
requests, plans within limits, determinism across two copies, and — for schedulers — a whole
workload run through the engine's own loop (every request finishes exactly once, the KV cache never
over-fills, every step with work makes progress). ``fleetwise check-policy`` runs them from the CLI.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, field

from fleetwise.policy.decisions import RouteDecision, StepPlan
from fleetwise.policy.views import EndpointView, RequestView, StepView


@dataclass
class ConformanceReport:
    """What a check found: failures (empty when the policy conforms) and the cost per call."""

    interface: str
    calls: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether no check failed."""
        return not self.failures

    @property
    def microseconds_per_call(self) -> float:
        """Mean wall time of one policy call."""
        return 1e6 * self.seconds / self.calls if self.calls else 0.0

    def fail(self, message: str) -> None:
        """Records a failure (the first few of each kind are kept)."""
        if len(self.failures) < 20:
            self.failures.append(message)

    def __str__(self) -> str:
        head = f"{self.interface}: {'PASS' if self.passed else 'FAIL'} ({self.calls} calls, {self.microseconds_per_call:.1f} us/call)"
        return "\n".join([head] + [f"  - {f}" for f in self.failures])


_RAISED = object()


def _call(report: ConformanceReport, trial: int, name: str, fn, *args):
    """Calls the policy's ``name`` method ``fn``, timing it; an exception is a recorded failure and
    returns ``_RAISED``."""
    start = time.perf_counter()
    try:
        return fn(*args)
    except Exception as e:  # a conformance failure, reported rather than raised
        report.fail(f"trial {trial}: {name}() raised {type(e).__name__}: {e}")
        return _RAISED
    finally:
        report.seconds += time.perf_counter() - start
        report.calls += 1


def _endpoints(rng: random.Random, roles: list[str], prompt: int) -> list[EndpointView]:
    return [
        EndpointView(index=i, name=f"e{i}", role=r, outstanding_tokens=rng.randrange(0, 50_000), waiting=rng.randrange(0, 20), running=rng.randrange(0, 64), kv_usage=rng.random(), cached_prefix_tokens=rng.choice([0, 0, rng.randrange(0, prompt + 1)]))
        for i, r in enumerate(roles)
    ]


def check_router(policy, trials: int = 300, seed: int = 0, disaggregated: bool | None = None) -> ConformanceReport:
    """Checks a Router on colocated endpoint sets, or on prefill/decode sets when ``disaggregated``
    (default: the policy's own ``disaggregated`` attribute, False when it has none)."""
    report = ConformanceReport("router")
    if disaggregated is None:
        disaggregated = bool(getattr(policy, "disaggregated", False))
    twin = _twin(policy, report)
    rng = random.Random(seed)
    for t in range(trials):
        pd = disaggregated
        n = rng.randrange(1, 9)
        roles = ["mixed"] * n if not pd else ["prefill"] * rng.randrange(1, 4) + ["decode"] * rng.randrange(1, 4)
        prompt = rng.randrange(1, 8192)
        req = RequestView(id=t, prompt_tokens=prompt, max_output_tokens=rng.randrange(1, 1024), arrival=t * 0.01, prefix_hashes=tuple(rng.randrange(1 << 60) for _ in range(prompt // 512)))
        eps = _endpoints(rng, roles, prompt)
        d = _call(report, t, "route", policy.route, req, eps)
        if d is _RAISED:
            continue
        if not isinstance(d, RouteDecision):
            report.fail(f"trial {t}: route() returned {type(d).__name__}, not RouteDecision")
            continue
        if not 0 <= d.instance < len(eps):
            report.fail(f"trial {t}: instance {d.instance} is not an index of the {len(eps)} endpoints")
            continue
        if d.prefill is None and eps[d.instance].role == "prefill":
            report.fail(f"trial {t}: routed to prefill-only endpoint {d.instance} without a decode endpoint")
        if d.prefill is None and pd and eps[d.instance].role == "decode" and not getattr(policy, "decode_may_prefill", False):
            report.fail(f"trial {t}: sent a prompt straight to decode-only endpoint {d.instance} (no prefill endpoint chosen)")
        if d.prefill is not None:
            if not 0 <= d.prefill < len(eps) or eps[d.prefill].role != "prefill":
                report.fail(f"trial {t}: prefill {d.prefill} is not a prefill endpoint")
            if eps[d.instance].role != "decode":
                report.fail(f"trial {t}: after a separate prefill, instance {d.instance} must be a decode endpoint, is {eps[d.instance].role}")
        if twin is not None:
            try:
                if twin.route(req, eps) != d:
                    report.fail(f"trial {t}: two copies of the policy disagree on the same input (not deterministic)")
                    twin = None
            except Exception as e:
                report.fail(f"trial {t}: copy raised {e!r}")
                twin = None
    return report


def _twin(policy, report: ConformanceReport):
    try:
        return copy.deepcopy(policy)
    except Exception as e:
        report.fail(f"the policy cannot be deep-copied ({e!r}); determinism not checked")
        return None


def check_scheduler(policy, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, trials: int = 200, seed: int = 0, requests: int = 40, num_blocks: int = 96, block_size: int = 16) -> ConformanceReport:
    """Checks a BatchScheduler's plans on random step views, then runs ``requests`` random
    requests to completion through vLLM v1's loop (the simulator's own) with a small KV cache of
    ``num_blocks`` blocks, so preemption happens."""
    from fleetwise import _core
    from fleetwise.policy.bridge import SchedulerBridge

    report = ConformanceReport("scheduler")
    twin = _twin(policy, report)
    rng = random.Random(seed)
    for t in range(trials):
        def req(i, running):
            prompt = rng.randrange(1, 2048)
            gen = rng.randrange(1, 64) if running else 0
            computed = prompt + gen - 1 if running and gen else (rng.randrange(0, prompt) if running else 0)
            return RequestView(id=f"r{t}-{i}", prompt_tokens=prompt, max_output_tokens=gen + rng.randrange(1, 64), computed_tokens=computed, generated_tokens=gen, arrival=rng.random())
        view = StepView(waiting=tuple(req(i, False) for i in range(rng.randrange(0, 10))), running=tuple(req(100 + i, True) for i in range(rng.randrange(0, 10))), free_blocks=rng.randrange(0, 200), total_blocks=200, block_size=16, step=t)
        p = _call(report, t, "plan", policy.plan, view)
        if p is _RAISED:
            continue
        _check_plan(report, t, p, view, max_num_seqs, max_num_batched_tokens)
        if twin is not None and twin.plan(view) != p:
            report.fail(f"trial {t}: two copies of the policy planned differently (not deterministic)")
            twin = None
    if report.failures:
        return report

    # A whole workload through the engine's loop.
    config = json.dumps({"kind": "vllm-v1", "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens})
    ids: list = []
    sched = _core.Scheduler(config, num_blocks, block_size, 0, planner=SchedulerBridge(policy, ids))
    outputs = {}
    for i in range(requests):
        ids.append(f"q{i}")
        prompt, out = rng.randrange(1, 6 * block_size), rng.randrange(1, 24)
        outputs[i] = out
        sched.add(i, prompt, out)
    finished: list[int] = []
    for step in range(20 * requests * 30):
        if len(finished) == requests:
            break
        try:
            batch = sched.schedule()
        except Exception as e:
            report.fail(f"workload step {step}: {type(e).__name__}: {e}")
            return report
        if sched.used_blocks() > num_blocks:
            report.fail(f"workload step {step}: {sched.used_blocks()} KV blocks used of {num_blocks}")
        if not batch:
            report.fail(f"workload step {step}: an empty batch with {len(sched.waiting())} waiting and {len(sched.running())} running requests (no progress)")
            return report
        finished.extend(r for r, done in sched.complete() if done)
    if sorted(finished) != list(range(requests)):
        report.fail(f"workload: {len(set(finished))} of {requests} requests finished ({len(finished)} completions)")
    return report


def _check_plan(report: ConformanceReport, t: int, p, view: StepView, max_num_seqs: int, max_tokens: int) -> None:
    if not isinstance(p, StepPlan):
        report.fail(f"trial {t}: plan() returned {type(p).__name__}, not StepPlan")
        return
    if p.token_budget > max_tokens:
        report.fail(f"trial {t}: token_budget {p.token_budget} exceeds the limit {max_tokens}")
    if p.max_num_seqs > max_num_seqs:
        report.fail(f"trial {t}: max_num_seqs {p.max_num_seqs} exceeds the limit {max_num_seqs}")
    for name, order, pool in (("running_order", p.running_order, view.running), ("waiting_order", p.waiting_order, view.waiting), ("victim_order", p.victim_order, view.running)):
        if order is None:
            continue
        ids = {r.id for r in pool}
        stray = [i for i in order if i not in ids]
        if stray:
            report.fail(f"trial {t}: {name} names requests not in its queue: {stray[:3]}")
        if len(set(order)) != len(list(order)):
            report.fail(f"trial {t}: {name} lists a request twice")


def check_prefix_cache(policy, trials: int = 300, seed: int = 0) -> ConformanceReport:
    """Checks a PrefixCachePolicy: it names one of the idle entries it was offered, every time, and
    two copies agree."""
    from fleetwise.policy.prefix_cache import CachedPrefixView

    report = ConformanceReport("prefix-cache")
    twin = _twin(policy, report)
    rng = random.Random(seed)
    for t in range(trials):
        ticks = sorted(rng.sample(range(1, 100_000), rng.randrange(1, 40)))
        idle = [CachedPrefixView(hash=rng.randrange(1 << 63), last_use=tick, hits=rng.randrange(0, 6)) for tick in ticks]
        h = _call(report, t, "victim", policy.victim, idle)
        if h is _RAISED:
            continue
        if h not in {e.hash for e in idle}:
            report.fail(f"trial {t}: victim() returned {h!r}, not the hash of an idle entry")
        elif twin is not None and twin.victim(idle) != h:
            report.fail(f"trial {t}: two copies of the policy chose differently (not deterministic)")
            twin = None
    return report


def check_expert_cache(factory, num_layers: int = 4, num_experts: int = 8, capacity: int = 3, accesses: int = 2000, seed: int = 0) -> ConformanceReport:
    """Checks an ExpertCachePolicy built by ``factory(num_layers, num_experts, capacity)``: a hit
    exactly when the expert was resident, at most ``capacity`` residents per layer, evictions only
    of residents, and the same answers from two fresh objects."""
    report = ConformanceReport("expert-cache")
    rng = random.Random(seed)
    a, b = factory(num_layers, num_experts, capacity), factory(num_layers, num_experts, capacity)
    for t in range(accesses):
        layer, expert = rng.randrange(num_layers), min(int(rng.expovariate(0.5)), num_experts - 1)
        before = a.resident(layer)
        start = time.perf_counter()
        hit = a.access(layer, expert)
        evicted = None if hit else a.admit(layer, expert)
        report.seconds += time.perf_counter() - start
        report.calls += 1
        if hit != (expert in before):
            report.fail(f"access {t}: access() said {'hit' if hit else 'miss'} for expert {expert} of layer {layer}, resident were {sorted(before)}")
        if evicted is not None and evicted not in before:
            report.fail(f"access {t}: evicted expert {evicted}, which was not resident")
        if len(a.resident(layer)) > capacity:
            report.fail(f"access {t}: {len(a.resident(layer))} experts resident in layer {layer}, capacity {capacity}")
        hit_b = b.access(layer, expert)
        evicted_b = None if hit_b else b.admit(layer, expert)
        if (hit_b, evicted_b) != (hit, evicted):
            report.fail(f"access {t}: two fresh policies answered differently (not deterministic)")
            b = None
            break
    return report
