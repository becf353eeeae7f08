"""The policy contract where it used to bend: answers the engine would have skipped unseen, checks
of an answer that ran the policy's own code outside the time limit, an error that did not name the
policy, a checker stricter than the simulator, classes and objects given in place of each other,
and request ids the step-by-hand scheduler could not tell apart."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml

import fleetwise
import fleetwise.policy as P
from fleetwise.errors import PolicyError
from fleetwise.policy import conformance
from fleetwise.policy.builtin import make_policy_scheduler

from conftest import REPO, small_scenario, tiny_gpu


def _scheduled(requests: int = 40) -> dict:
    sc = small_scenario()
    sc["workload"]["requests"] = requests
    sc["cluster"]["pools"][0]["scheduler"] = {"kind": "vllm-v1", "max_num_seqs": 8, "max_num_batched_tokens": 512}
    return sc


def _plan_with(order: str, queue: str):
    """A scheduler whose ``order`` lists the requests of ``queue`` (the other queue's, or its own)."""

    class Plans:
        def plan(self, step):
            ids = [r.id for r in getattr(step, queue)]
            return P.StepPlan(512, 8, **{order: ids})

    return Plans


@pytest.mark.parametrize("order, queue, says", [
    ("waiting_order", "running", "waiting_order names requests that are not waiting"),
    ("running_order", "waiting", "running_order names requests that are not running"),
    ("victim_order", "waiting", "victim_order names requests that are not running"),
])
def test_an_order_naming_the_other_queue_is_a_policy_error(order, queue, says):
    # The engine orders each queue by its own order and skipped the others' ids unseen: exit 0
    # with the answer ignored, while check-policy failed the same policy.
    with pytest.raises(PolicyError, match=f"of instance main/0: plan\\(\\): {says}"):
        fleetwise.simulate(_scheduled(), schedulers={"main": _plan_with(order, queue)})
    assert not conformance.check_scheduler(_plan_with(order, queue)()).passed


def test_orders_of_their_own_queues_still_run():
    class Own:
        def plan(self, step):
            running = [r.id for r in step.running]
            return P.StepPlan(512, 8, running_order=running[::-1], waiting_order=[r.id for r in step.waiting][::-1], victim_order=running)

    r = fleetwise.simulate(_scheduled(), schedulers={"main": Own})
    assert (r.requests["status"] == "finished").all()


class _SlowHash:
    """An id whose hashing spins (in Python) for ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __hash__(self):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            pass
        return 0


def test_checking_a_plan_runs_under_the_policy_time_limit():
    # The ids' own __hash__ ran while the plan was checked, after the call had been marked done:
    # one that never returned hung the run for ever.
    class SlowIds:
        def plan(self, step):
            return P.StepPlan(512, 8, waiting_order=[_SlowHash(8.0)])

    # Without the limit the hash returns after 8 s and the run fails otherwise (an id not waiting):
    # only the time limit gives this message. No elapsed time is asserted.
    with pytest.raises(PolicyError, match=r"plan\(\) did not return within 1 s"):
        fleetwise.simulate(_scheduled(), schedulers={"main": SlowIds}, policy_timeout=1)


def _offload(requests: int = 10) -> dict:
    sc = yaml.safe_load((REPO / "scenarios" / "moe-offload.yaml").read_text())
    sc["workload"]["requests"] = requests
    return sc


def test_reading_resident_experts_runs_under_the_policy_time_limit():
    class SlowResident(P.LruExpertCache):
        slow = True  # the first answer of all is slow

        def resident(self, layer):
            if SlowResident.slow:
                SlowResident.slow = False
                end = time.monotonic() + 8.0
                while time.monotonic() < end:
                    yield from ()
            yield from super().resident(layer)

    # Without the limit the answer comes after 8 s and the run finishes: only the limit raises.
    with pytest.raises(PolicyError, match=r"resident\(\) did not return within 1 s"):
        fleetwise.simulate(_offload(), expert_caches={"main": SlowResident}, policy_timeout=1)


def test_a_prefix_victim_that_is_not_offered_names_the_policy_and_its_instance():
    class Forged:
        def victim(self, idle):
            idle.clear()  # its own list: the check reads the engine's
            return 5

    sc = fleetwise.config.load.load_scenario(REPO / "scenarios" / "prefix-caching.yaml", [f"gpus={json.dumps(tiny_gpu(20))}", "cluster.pools.0.gpu=tiny"])
    with pytest.raises(PolicyError, match=r"prefix cache policy '.*Forged' of instance main/\d+: victim\(\): chose to evict 5, which is not one of the \d+ idle entries"):
        fleetwise.simulate(sc, prefix_caches={"main": Forged})


class _NumpyChoice:
    def choose(self, request, decoders, preferred):
        return [np.int64(d.index) for d in decoders]


class _ViewChoice:
    def choose(self, request, decoders, preferred):
        return decoders[0]


class _IteratorResident(P.LruExpertCache):
    def resident(self, layer):
        return iter(list(super().resident(layer)) * 2)  # an iterator, each expert twice

    def access(self, layer, expert):
        return np.bool_(super().access(layer, expert))


def test_check_policy_takes_the_answers_the_simulator_takes():
    # numpy indices, numpy booleans and a resident iterator with repeats run in the simulator;
    # the checker failed them (or stopped on "has no len()").
    assert conformance.check_decode_choice(_NumpyChoice()).passed
    report = conformance.check_expert_cache(_IteratorResident)
    assert report.passed, report.failures
    r = fleetwise.simulate(_offload(), expert_caches={"main": _IteratorResident})
    assert (r.requests["status"] == "finished").all()


class _GeneratorResident(P.LruExpertCache):
    def resident(self, layer):
        yield from super().resident(layer)  # lazy: read after access() it would show the new state


class _EndlessResident(P.LruExpertCache):
    def resident(self, layer):
        while True:
            yield from ()


def test_check_policy_reads_a_lazy_resident_answer_at_once_and_within_the_time_limit():
    # The checker read resident()'s answer only after access() and admit() had run (a generator
    # then showed the state after the access: valid policies failed), and outside the time limit
    # (an endless generator hung check-policy whatever --timeout said).
    report = conformance.check_expert_cache(_GeneratorResident)
    assert report.passed, report.failures[:3]
    report = conformance.check_expert_cache(_EndlessResident, timeout=0.5)
    assert not report.passed and "resident() did not return within 0.5 s" in report.failures[0]


def test_a_decode_choice_answering_an_endpoint_view_is_told_to_return_its_index():
    sc = yaml.safe_load((REPO / "scenarios" / "splitwise.yaml").read_text())
    sc["workload"]["requests"] = 10
    with pytest.raises(PolicyError, match=r"got an EndpointView for request 0; return its \.index"):
        fleetwise.simulate(sc, decode_choice=_ViewChoice())
    report = conformance.check_decode_choice(_ViewChoice())
    assert not report.passed and "return its .index" in report.failures[0]


class _Router:
    def route(self, request, endpoints):
        return P.RouteDecision(0)


class _Scheduler:
    def plan(self, step):
        return P.StepPlan(512, 8)


def test_a_class_given_for_a_policy_object_is_refused_before_the_run():
    # Its first call failed with "route() missing 1 required positional argument".
    with pytest.raises(PolicyError, match=r"the class _Router is not a router policy object: its route\(\) is an instance method: make an instance \(_Router\(\)\)"):
        fleetwise.simulate(_scheduled(), router=_Router)
    with pytest.raises(PolicyError, match=r"the class _Scheduler is not a scheduler policy object"):
        fleetwise.simulate(_scheduled(), schedulers={"main": lambda: _Scheduler})


def test_a_policy_object_given_for_a_factory_is_refused_with_what_to_give():
    with pytest.raises(PolicyError, match=r"a _Scheduler object is not a factory: give its class"):
        fleetwise.simulate(_scheduled(), schedulers={"main": _Scheduler()})
    with pytest.raises(PolicyError, match=r"a LruExpertCache object is not a factory"):
        fleetwise.simulate(_offload(), expert_caches={"main": P.LruExpertCache(32, 8, 2)})


def test_the_step_by_hand_scheduler_refuses_ids_it_cannot_tell_apart():
    # Blamed on the policy before: "plan(): waiting_order lists a request twice" for two requests
    # added with one id, "plan() raised TypeError: unhashable type" for a list id.
    class Reversed:
        def plan(self, step):
            return P.StepPlan(64, 4, waiting_order=[r.id for r in step.waiting][::-1])

    s = make_policy_scheduler(Reversed(), 100)
    s.add("a", 10, 1)
    with pytest.raises(ValueError, match="request 'a' is already queued or running"):
        s.add("a", 20, 1)
    with pytest.raises(TypeError, match="request_id must be hashable"):
        s.add(["b"], 20, 1)
    assert s.schedule() == [("a", 10)] and s.complete() == [("a", True)]
    s.add("a", 7, 2)  # a finished request's id may be reused
    assert s.schedule() == [("a", 7)] and s.abort("a") and not s.abort("a")


def test_ctrl_c_during_the_checkers_workload_stops_the_check():
    # The core turned it into a PolicyError there, reported as a failure (exit 1, not 130).
    class LateInterrupt:
        calls = 0

        def plan(self, step):
            type(self).calls += 1
            if type(self).calls > 450:  # past the 400 calls of the random trials
                raise KeyboardInterrupt
            return P.StepPlan(512, 8)

    with pytest.raises(KeyboardInterrupt):
        conformance.check_scheduler(LateInterrupt())
