"""A conformance checker users run on their own policies before plugging them in.

Each check drives the policy through many randomised, seeded situations and verifies its answers
against the interface: types, indices in range, roles respected, orders naming only known
requests, plans within limits, determinism across two copies, and — for schedulers — a whole
workload run through the engine's own loop (every request finishes exactly once, the KV cache never
over-fills, every step with work makes progress). ``fleetwise check-policy`` runs them from the CLI.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import time
from dataclasses import dataclass, field

import numpy as np

from fleetwise.errors import FleetwiseError
from fleetwise.policy.bridge import PolicyAnswerError, checked_count, is_known_id
from fleetwise.policy.decisions import RouteDecision, StepPlan
from fleetwise.policy.decode_choice import checked_choice
from fleetwise.policy.expert_cache import checked_resident
from fleetwise.policy.views import EndpointView, RequestView, StepView
from fleetwise.policy.watchdog import PolicyTimeout, deadline

DEFAULT_TIMEOUT_S = 10.0
"""Default time limit of one policy call in a check, seconds."""


@dataclass
class ConformanceReport:
    """What a check found: failures (empty when the policy conforms) and the cost per call."""

    interface: str
    calls: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    timeout: float | None = field(default=DEFAULT_TIMEOUT_S, repr=False)
    """Most seconds one policy call may take (None: no limit); a longer call fails the check and ends it."""
    policy: str = ""
    """The policy's name, shown in the report (the CLI sets it)."""

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
        head = f"{self.interface}{' ' + self.policy if self.policy else ''}: {'PASS' if self.passed else 'FAIL'} ({self.calls} calls, {self.microseconds_per_call:.1f} us/call)"
        return "\n".join([head] + [f"  - {f}" for f in self.failures])


_RAISED = object()


class _Stop(Exception):
    """The check cannot go on (a call ran past its time limit); its failure is recorded."""


def _call(report: ConformanceReport, trial: int | str, name: str, fn, *args):
    """Calls the policy's ``name`` method ``fn`` within the report's time limit, timing it. An
    exception — any, ``SystemExit`` included, but Ctrl-C — is a recorded failure and returns
    ``_RAISED``; a call past the time limit is a failure that ends the check (``_Stop``)."""
    where = f"trial {trial}: " if isinstance(trial, int) else f"{trial}: "
    try:
        if not callable(fn):
            raise TypeError(f"{name} is not a method (the object is not this kind of policy)")
        with deadline(report.timeout, f"{name}()"):
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                report.seconds += time.perf_counter() - start
                report.calls += 1
    except PolicyTimeout:
        report.fail(f"{where}{name}() did not return within {report.timeout:g} s (the per-call time limit, --timeout); the check stopped there")
        raise _Stop from None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a conformance failure, reported rather than raised
        report.fail(f"{where}{name}() raised {type(e).__name__}: {e}")
        return _RAISED


@contextlib.contextmanager
def _checking(report: ConformanceReport):
    """Runs a check's body: a stop (a call past its time limit) ends it with its failure recorded,
    and anything unexpected the policy caused becomes a failure rather than a traceback."""
    try:
        yield
    except (_Stop, PolicyTimeout):
        if report.passed:
            report.fail(f"a policy call did not return within {report.timeout:g} s (the per-call time limit)")
    except (FleetwiseError, KeyboardInterrupt):
        raise
    except BaseException as e:
        report.fail(f"the check stopped: {type(e).__name__}: {e}")


def _method(policy, name: str):
    """``policy.name`` or None when it has no such attribute (reported by :func:`_call`)."""
    try:
        return getattr(policy, name, None)
    except Exception:
        return None


def _same(a, b) -> bool:
    """Whether two answers are equal; answers that cannot be compared are not."""
    try:
        return bool(a == b)
    except Exception:
        return False


def _endpoints(rng: random.Random, roles: list[str], prompt: int) -> list[EndpointView]:
    return [
        EndpointView(index=i, name=f"e{i}", role=r, outstanding_tokens=rng.randrange(0, 50_000), waiting=rng.randrange(0, 20), running=rng.randrange(0, 64), kv_usage=rng.random(), cached_prefix_tokens=rng.choice([0, 0, rng.randrange(0, prompt + 1)]))
        for i, r in enumerate(roles)
    ]


def check_router(policy, trials: int = 300, seed: int = 0, disaggregated: bool | None = None, timeout: float | None = DEFAULT_TIMEOUT_S) -> ConformanceReport:
    """Checks a Router on colocated endpoint sets, or on prefill/decode sets when ``disaggregated``
    (default: the policy's own ``disaggregated`` attribute, False when it has none). Each call may
    take ``timeout`` seconds."""
    report = ConformanceReport("router", timeout=timeout)
    with _checking(report):
        _check_router(report, policy, trials, seed, disaggregated)
    return report


def _check_router(report: ConformanceReport, policy, trials: int, seed: int, disaggregated: bool | None) -> None:
    if disaggregated is None:
        disaggregated = bool(getattr(policy, "disaggregated", False))
    route = _method(policy, "route")
    twin = _twin(policy, report)
    rng = random.Random(seed)
    for t in range(trials):
        pd = disaggregated
        n = rng.randrange(1, 9)
        roles = ["mixed"] * n if not pd else ["prefill"] * rng.randrange(1, 4) + ["decode"] * rng.randrange(1, 4)
        prompt = rng.randrange(1, 8192)
        req = RequestView(id=t, prompt_tokens=prompt, max_output_tokens=rng.randrange(1, 1024), arrival=t * 0.01, prefix_hashes=tuple(rng.randrange(1 << 60) for _ in range(prompt // 512)))
        eps = _endpoints(rng, roles, prompt)
        d = _call(report, t, "route", route, req, list(eps))
        if d is _RAISED:
            if not callable(route):
                return
            continue
        if not isinstance(d, RouteDecision):
            report.fail(f"trial {t}: route() returned {type(d).__name__}, not RouteDecision")
            continue
        try:
            checked_count(d.instance, "RouteDecision.instance", low=0)
            checked_count(d.prefill, "RouteDecision.prefill", low=0, allow_none=True)
        except PolicyAnswerError as e:
            report.fail(f"trial {t}: {e}")
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
            d2 = _call(report, f"trial {t} (a deep copy)", "route", _method(twin, "route"), req, list(eps))
            if d2 is _RAISED or not _same(d2, d):
                if d2 is not _RAISED:
                    report.fail(f"trial {t}: two copies of the policy disagree on the same input (not deterministic)")
                twin = None


def _twin(policy, report: ConformanceReport):
    """A deep copy of the policy for the determinism check, or None (a failure) when it cannot be made."""
    twin = _call(report, "deep-copying the policy", "copy.deepcopy", copy.deepcopy, policy)
    if twin is _RAISED:
        report.fail("determinism not checked: the policy cannot be deep-copied")
        return None
    return twin


def check_scheduler(policy, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, trials: int = 200, seed: int = 0, requests: int = 40, num_blocks: int = 96, block_size: int = 16, timeout: float | None = DEFAULT_TIMEOUT_S) -> ConformanceReport:
    """Checks a BatchScheduler's plans on random step views, then runs ``requests`` random
    requests to completion through vLLM v1's loop (the simulator's own) with a small KV cache of
    ``num_blocks`` blocks, so preemption happens. Each call may take ``timeout`` seconds."""
    report = ConformanceReport("scheduler", timeout=timeout)
    with _checking(report):
        _check_scheduler(report, policy, max_num_seqs, max_num_batched_tokens, trials, seed, requests, num_blocks, block_size)
    return report


def _check_scheduler(report: ConformanceReport, policy, max_num_seqs: int, max_num_batched_tokens: int, trials: int, seed: int, requests: int, num_blocks: int, block_size: int) -> None:
    from fleetwise import _core
    from fleetwise.policy.bridge import SchedulerBridge

    plan = _method(policy, "plan")
    twin = _twin(policy, report)
    rng = random.Random(seed)
    for t in range(trials):
        def req(i, running):
            prompt = rng.randrange(1, 2048)
            gen = rng.randrange(1, 64) if running else 0
            computed = prompt + gen - 1 if running and gen else (rng.randrange(0, prompt) if running else 0)
            return RequestView(id=f"r{t}-{i}", prompt_tokens=prompt, max_output_tokens=gen + rng.randrange(1, 64), computed_tokens=computed, generated_tokens=gen, arrival=rng.random())
        waiting, running = tuple(req(i, False) for i in range(rng.randrange(0, 10))), tuple(req(100 + i, True) for i in range(rng.randrange(0, 10)))
        shape = dict(free_blocks=rng.randrange(0, 200), total_blocks=200, block_size=16, step=t)
        p = _call(report, t, "plan", plan, StepView(waiting, running, **shape))  # a view of its own: a policy may change it
        if p is _RAISED:
            if not callable(plan):
                return
            continue
        _check_plan(report, t, p, StepView(waiting, running, **shape), max_num_seqs, max_num_batched_tokens)
        if twin is not None:
            p2 = _call(report, f"trial {t} (a deep copy)", "plan", _method(twin, "plan"), StepView(waiting, running, **shape))
            if p2 is _RAISED or not _same(p2, p):
                if p2 is not _RAISED:
                    report.fail(f"trial {t}: two copies of the policy planned differently (not deterministic)")
                twin = None
    if report.failures:
        return

    # A whole workload through the engine's loop.
    config = json.dumps({"kind": "vllm-v1", "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens})
    ids: list = []
    bridge = SchedulerBridge(policy, ids, label="the policy")
    bridge.plan = _timed_plan(report, bridge.plan)
    sched = _core.Scheduler(config, num_blocks, block_size, 0, planner=bridge)
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
        except _Stop:
            raise
        except Exception as e:
            if bridge.plan.stopped:  # the time limit, already recorded
                raise _Stop from None
            if bridge.plan.interrupted:  # Ctrl-C stops the check, as it does in the trials above
                raise KeyboardInterrupt from None
            report.fail(f"workload step {step}: {e}")
            return
        if sched.used_blocks() > num_blocks:
            report.fail(f"workload step {step}: {sched.used_blocks()} KV blocks used of {num_blocks}")
        if not batch:
            report.fail(f"workload step {step}: an empty batch with {len(sched.waiting())} waiting and {len(sched.running())} running requests (no progress)")
            return
        finished.extend(r for r, done in sched.complete() if done)
    if sorted(finished) != list(range(requests)):
        report.fail(f"workload: {len(set(finished))} of {requests} requests finished ({len(finished)} completions)")


def _timed_plan(report: ConformanceReport, plan):
    """The bridge's ``plan`` under the report's per-call time limit (a timeout stops the check)."""

    def timed(*args):
        try:
            with deadline(report.timeout, "plan()"):
                return plan(*args)
        except PolicyTimeout:
            timed.stopped = True
            report.fail(f"workload: plan() did not return within {report.timeout:g} s (the per-call time limit, --timeout); the check stopped there")
            raise _Stop from None
        except KeyboardInterrupt:  # Ctrl-C (or the policy's own, which cannot be told apart): the core turns it into a PolicyError
            timed.interrupted = True
            raise

    timed.stopped = timed.interrupted = False
    return timed


def _check_plan(report: ConformanceReport, t: int, p, view: StepView, max_num_seqs: int, max_tokens: int) -> None:
    if not isinstance(p, StepPlan):
        report.fail(f"trial {t}: plan() returned {type(p).__name__}, not StepPlan")
        return
    try:
        checked_count(p.token_budget, "StepPlan.token_budget")
        checked_count(p.max_num_seqs, "StepPlan.max_num_seqs")
        checked_count(p.max_prefill_chunk, "StepPlan.max_prefill_chunk", allow_none=True)
    except PolicyAnswerError as e:
        report.fail(f"trial {t}: {e}")
        return
    if p.token_budget > max_tokens:
        report.fail(f"trial {t}: token_budget {p.token_budget} exceeds the limit {max_tokens}")
    if p.max_num_seqs > max_num_seqs:
        report.fail(f"trial {t}: max_num_seqs {p.max_num_seqs} exceeds the limit {max_num_seqs}")
    for name, order, pool in (("running_order", p.running_order, view.running), ("waiting_order", p.waiting_order, view.waiting), ("victim_order", p.victim_order, view.running)):
        if order is None:
            continue
        if not isinstance(order, (list, tuple, range)):
            report.fail(f"trial {t}: {name} must be a list or tuple of request ids (or None), not {type(order).__name__}")
            continue
        ids = {r.id: None for r in pool}
        stray = [i for i in order if not is_known_id(i, ids)]
        if stray:
            report.fail(f"trial {t}: {name} names requests not in its queue: {stray[:3]}")
        elif len(set(order)) != len(order):
            report.fail(f"trial {t}: {name} lists a request twice")


def check_prefix_cache(policy, trials: int = 300, seed: int = 0, timeout: float | None = DEFAULT_TIMEOUT_S) -> ConformanceReport:
    """Checks a PrefixCachePolicy: it names one of the idle entries it was offered, every time, and
    two copies agree. Each call may take ``timeout`` seconds."""
    report = ConformanceReport("prefix-cache", timeout=timeout)
    with _checking(report):
        _check_prefix_cache(report, policy, trials, seed)
    return report


def _check_prefix_cache(report: ConformanceReport, policy, trials: int, seed: int) -> None:
    from fleetwise.policy.prefix_cache import CachedPrefixView

    victim = _method(policy, "victim")
    twin = _twin(policy, report)
    rng = random.Random(seed)
    for t in range(trials):
        ticks = sorted(rng.sample(range(1, 100_000), rng.randrange(1, 40)))
        idle = [CachedPrefixView(hash=rng.randrange(1 << 63), last_use=tick, hits=rng.randrange(0, 6)) for tick in ticks]
        h = _call(report, t, "victim", victim, list(idle))
        if h is _RAISED:
            if not callable(victim):
                return
            continue
        if isinstance(h, bool) or not is_known_id(h, {e.hash: None for e in idle}):
            report.fail(f"trial {t}: victim() returned {repr(h)[:80]}, not the hash of an idle entry")
        elif twin is not None:
            h2 = _call(report, f"trial {t} (a deep copy)", "victim", _method(twin, "victim"), list(idle))
            if h2 is _RAISED or not _same(h2, h):
                if h2 is not _RAISED:
                    report.fail(f"trial {t}: two copies of the policy chose differently (not deterministic)")
                twin = None


def check_expert_cache(factory, num_layers: int = 4, num_experts: int = 8, capacity: int = 3, accesses: int = 2000, seed: int = 0, timeout: float | None = DEFAULT_TIMEOUT_S) -> ConformanceReport:
    """Checks an ExpertCachePolicy built by ``factory(num_layers, num_experts, capacity)``: a hit
    exactly when the expert was resident, at most ``capacity`` residents per layer, evictions only
    of residents, and the same answers from two fresh objects. Each call may take ``timeout`` seconds."""
    report = ConformanceReport("expert-cache", timeout=timeout)
    with _checking(report):
        _check_expert_cache(report, factory, num_layers, num_experts, capacity, accesses, seed)
    return report


def _check_expert_cache(report: ConformanceReport, factory, num_layers: int, num_experts: int, capacity: int, accesses: int, seed: int) -> None:
    rng = random.Random(seed)
    with deadline(report.timeout, "creating the policy"):
        a, b = factory(num_layers, num_experts, capacity), factory(num_layers, num_experts, capacity)
    def resident(layer: int):
        # Read at once and inside the call's time limit, as the simulator reads it (a generator
        # or the policy's live set would otherwise be read after access() changed it).
        method = _method(a, "resident")
        if not callable(method):
            raise TypeError("resident is not a method (the object is not this kind of policy)")
        got = method(layer)
        try:
            return checked_resident(got, layer, num_experts, num_experts)
        except PolicyAnswerError as e:
            return e

    for t in range(accesses):
        layer, expert = rng.randrange(num_layers), min(int(rng.expovariate(0.5)), num_experts - 1)
        before = _call(report, t, "resident", resident, layer)
        hit = _call(report, t, "access", _method(a, "access"), layer, expert) if before is not _RAISED else _RAISED
        evicted = None if hit is True or hit is _RAISED else _call(report, t, "admit", _method(a, "admit"), layer, expert)
        if _RAISED in (before, hit, evicted):
            return
        if not isinstance(hit, (bool, np.bool_)):
            report.fail(f"access {t}: access() returned {repr(hit)[:80]}, not True or False")
            return
        hit = bool(hit)
        after = _call(report, t, "resident", resident, layer)
        if after is _RAISED:
            return
        wrong = next((x for x in (before, after) if isinstance(x, PolicyAnswerError)), None)
        if wrong is not None:  # read as the simulator reads them; the capacity is checked below
            report.fail(f"access {t}: {wrong}")
            return
        if hit != (expert in before):
            report.fail(f"access {t}: access() said {'hit' if hit else 'miss'} for expert {expert} of layer {layer}, resident were {sorted(before)}")
        if evicted is not None and evicted not in before:
            report.fail(f"access {t}: evicted expert {evicted}, which was not resident")
        if len(after) > capacity:
            report.fail(f"access {t}: {len(after)} experts resident in layer {layer}, capacity {capacity}")
        hit_b = _call(report, f"access {t} (a second object)", "access", _method(b, "access"), layer, expert)
        evicted_b = None if hit_b is True or hit_b is _RAISED else _call(report, f"access {t} (a second object)", "admit", _method(b, "admit"), layer, expert)
        if not _same((hit_b, evicted_b), (hit, evicted)):
            if _RAISED not in (hit_b, evicted_b):
                report.fail(f"access {t}: two fresh policies answered differently (not deterministic)")
            break


def check_decode_choice(policy, trials: int = 300, seed: int = 0, timeout: float | None = DEFAULT_TIMEOUT_S) -> ConformanceReport:
    """Checks a DecodeChoice on random sets of decode endpoints: it names one or more of them (an
    index or a list of indices), never another endpoint, none twice, and a deep copy answers the
    same. Each call may take ``timeout`` seconds."""
    report = ConformanceReport("decode-choice", timeout=timeout)
    with _checking(report):
        _check_decode_choice(report, policy, trials, seed)
    return report


def _check_decode_choice(report: ConformanceReport, policy, trials: int, seed: int) -> None:
    choose = _method(policy, "choose")
    twin = _twin(policy, report)
    rng = random.Random(seed)
    for t in range(trials):
        prefill = rng.randrange(1, 4)
        eps = _endpoints(rng, ["prefill"] * prefill + ["decode"] * rng.randrange(1, 6), 1)[prefill:]
        prompt = rng.randrange(1, 8192)
        req = RequestView(id=t, prompt_tokens=prompt, max_output_tokens=rng.randrange(2, 1024), computed_tokens=prompt, generated_tokens=1, arrival=t * 0.01)
        preferred = rng.choice([None, rng.choice(eps).index])
        answer = _call(report, t, "choose", choose, req, list(eps), preferred)
        if answer is _RAISED:
            if not callable(choose):
                return
            continue
        try:  # read as the simulator reads it
            checked_choice(answer, t, [e.index for e in eps])
        except PolicyAnswerError as e:
            report.fail(f"trial {t}: choose() {e}")
        if twin is not None:
            again = _call(report, f"trial {t} (a deep copy)", "choose", _method(twin, "choose"), req, list(eps), preferred)
            if again is _RAISED or not _same(again, answer):
                if again is not _RAISED:
                    report.fail(f"trial {t}: two copies of the policy chose differently (not deterministic)")
                twin = None
