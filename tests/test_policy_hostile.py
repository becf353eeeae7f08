"""Hostile answers from a user's policy where the earlier checks let them through: each is a clear
error naming the field (exit 2 from the CLI), never a traceback, a crash of what the policy drives,
or a silently reinterpreted answer. Broken policies in general: tests/test_policy_robustness.py."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml

import fleetwise
import fleetwise.policy as P
from conftest import run_cli, small_scenario
from fleetwise.errors import ConfigError, PolicyError


def _scenario(requests: int = 20, scheduler: dict | None = None, router: dict | None = None) -> dict:
    sc = small_scenario()
    sc["workload"]["requests"] = requests
    sc["cluster"]["pools"][0]["scheduler"] = scheduler or {"kind": "vllm-v1", "max_num_seqs": 8, "max_num_batched_tokens": 512}
    if router is not None:
        sc["cluster"]["router"] = router
    return sc


# -- plans -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("token_budget", "512"), ("max_num_seqs", None), ("max_prefill_chunk", "all")])
def test_a_step_plan_of_text_or_none_says_which_field_must_be_an_int(field, value):
    # It used to fail in the comparison: "'<' not supported between instances of 'str' and 'int'".
    args = {"token_budget": 512, "max_num_seqs": 8, field: value}
    with pytest.raises(TypeError, match=f"^{field} must be an int.*, got {value!r}$"):
        P.StepPlan(**args)


def test_a_plan_naming_requests_by_float_ids_is_a_policy_error():
    # 1.0 used to be read silently as request 1 (True too, when request 1 was queued).
    class FloatIds:
        def plan(self, step):
            return P.StepPlan(512, 8, waiting_order=[float(r.id) for r in step.waiting])

    with pytest.raises(PolicyError, match=r"waiting_order must list request ids \(the views' id\), got \[0\.0\]"):
        fleetwise.simulate(_scenario(), schedulers={"main": FloatIds})


@pytest.mark.parametrize("params, message", [
    ({"max_num_seqs": "8"}, "max_num_seqs must be a whole number from 1 to 4294967295, got '8'"),
    ({"max_num_batched_tokens": 10**30}, f"max_num_batched_tokens must be a whole number from 1 to 4294967295, got {10**30}"),
    ({"max_prefill_chunk": 2.5}, "max_prefill_chunk must be a whole number from 1 to 4294967295 or None, got 2.5"),
    ({"max_wait_s": "60"}, "max_wait_s must be a positive number of seconds, got '60'"),
])
def test_bad_parameters_of_a_builtin_scheduler_fail_when_it_is_created(tmp_path, params, message):
    # They used to pass creation and fail every plan() (check-policy: exit 1 with 200 identical
    # "'<' not supported between instances of 'str' and 'int'").
    r = run_cli("check-policy", "scheduler", "shortest-prompt-first", *[a for k, v in params.items() for a in ("-p", f"{k}={json.dumps(v)}")], cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr
    sc = _scenario(scheduler={"kind": "policy", "name": "shortest-prompt-first", "params": params, "max_num_seqs": 8, "max_num_batched_tokens": 512})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sc))
    r = run_cli("run", "s.yaml", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2 and "scheduler policy 'shortest-prompt-first': creating it" in r.stderr and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_decode_budget_refuses_a_negative_budget_when_created():
    with pytest.raises(PolicyError, match="creating it .* token_budget must be a whole number from 1"):
        P.create("scheduler", "decode-budget", token_budget=-3)


# -- names and parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, says", [
    ("/nowhere/my_policy.py:P", "expected module:attr, a Python module on PYTHONPATH and the class or factory in it (e.g. my_pkg.routing:MyRouter for my_pkg/routing.py), not a file path"),
    ("my_policy.py:P", "not a file path"),
    (":P", "expected module:attr"),
    ("my_policy:", "expected module:attr"),
])
def test_a_policy_named_by_a_file_path_is_refused_with_the_form_it_takes(tmp_path, name, says):
    # A path used to give "No module named '/nowhere/my_policy'; put /nowhere/my_policy.py ... on
    # PYTHONPATH", and "my_policy.py:P" "'my_policy' is not a package".
    r = run_cli("check-policy", "scheduler", name, cwd=tmp_path)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_scenario(scheduler={"kind": "policy", "name": name})))
    r = run_cli("run", "s.yaml", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2 and "s.yaml" in r.stderr and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_policy_parameters_with_a_key_that_is_not_text_name_the_field(tmp_path):
    # Used to reach the constructor: "PolicyError: ... creating it raised TypeError: keywords must be strings".
    sc = _scenario(router={"kind": "policy", "name": "cache-aware", "params": {1: 2}})
    with pytest.raises(ConfigError, match=r"cluster\.router\.params\.1\.\[key\]: Input should be a valid string"):
        fleetwise.simulate(sc)
    sc = _scenario(scheduler={"kind": "policy", "name": "fcfs", "params": {1: 2}})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sc))
    r = run_cli("run", "s.yaml", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2 and "cluster.pools.0.scheduler.params.1.[key]" in r.stderr and "Traceback" not in r.stderr, r.stderr


_SHAPE = "popularity must be null or 4 lists (one per layer) of 8 finite numbers (one per expert)"


@pytest.mark.parametrize("popularity, says", [
    ("[[1,2]]", f"{_SHAPE}, got a list of length 1"),
    ("[]", f"{_SHAPE}, got a list of length 0"),
    ('{"a": 1}', f"{_SHAPE}, got dict"),
    ("5", f"{_SHAPE}, got int 5"),
    ("[[1,2,3,4,5,6,7,8],[1],[],[]]", f"{_SHAPE}; layer 1 is a list of length 1"),
    ("[[1,2,3,4,5,6,7,8],5,[],[]]", f"{_SHAPE}; layer 1 is int 5"),
    # The right shape with a NaN or a text entry used to pass: a hot set sorted by NaN is arbitrary.
    ("[[1,2,3,4,5,6,7,8],[1,2,3,4,5,6,7,NaN],[1,2,3,4,5,6,7,8],[1,2,3,4,5,6,7,8]]", f"{_SHAPE}; layer 1, expert 7 is nan"),
    ('[[1,2,3,4,5,6,7,"a"],[1,2,3,4,5,6,7,8],[1,2,3,4,5,6,7,8],[1,2,3,4,5,6,7,8]]', f"{_SHAPE}; layer 0, expert 7 is 'a'"),
])
def test_a_malformed_static_expert_cache_popularity_names_the_parameter_and_its_shape(tmp_path, popularity, says):
    # It used to say only "raised IndexError: list index out of range" (or KeyError: 0, or
    # "'int' object is not subscriptable").
    r = run_cli("check-policy", "expert-cache", "static", "-p", f"popularity={popularity}", cwd=tmp_path)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "IndexError" not in r.stderr and "KeyError" not in r.stderr and "subscriptable" not in r.stderr


def test_static_expert_cache_takes_numpy_popularity_and_refuses_a_short_layer():
    cache = P.StaticExpertCache(2, 4, 1, popularity=np.array([[1.0, 5.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]]))
    assert cache.resident(0) == {1} and cache.resident(1) == {3}
    with pytest.raises(ValueError, match=r"popularity must be null or 2 lists .* of 4 finite numbers .*; layer 1 is a list of length 3$"):
        P.StaticExpertCache(2, 4, 1, popularity=[[1, 2, 3, 4], [1, 2, 3]])


def test_check_policy_refuses_a_parameter_without_a_name(tmp_path):
    r = run_cli("check-policy", "scheduler", "fcfs", "-p", "=8", cwd=tmp_path)
    assert r.returncode == 2 and "--param '=8': expected key=value" in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- serve-router ------------------------------------------------------------------------------------

class _Answers:
    """A router policy that answers ``answer(endpoints)``."""

    def __init__(self, answer):
        self.answer = answer

    def route(self, request, endpoints):
        return self.answer(endpoints)


def _exits(endpoints):
    sys.exit(3)


class _PolicyAbort(BaseException):
    """A policy's own BaseException (not an Exception): it reached uvicorn as a traceback."""


def _aborts(endpoints):
    raise _PolicyAbort("gave up")


def _router_state(policy):
    pytest.importorskip("httpx")
    from fleetwise.serve.router_app import Endpoint, RouterState

    return RouterState([Endpoint("http://127.0.0.1:9"), Endpoint("http://127.0.0.1:10")], policy, scrape_interval=0)


@pytest.mark.parametrize("answer, message", [
    (lambda e: P.RouteDecision(1.0), "the policy's RouteDecision.instance must be an int, got 1.0"),
    (lambda e: P.RouteDecision(np.float64(1.0)), "the policy's RouteDecision.instance must be an int, got np.float64(1.0)"),
    (lambda e: P.RouteDecision(True), "the policy's RouteDecision.instance must be an int, got True"),
    (lambda e: P.RouteDecision(0, prefill=1.5), "the policy's RouteDecision.prefill must be an int or None, got 1.5"),
    (_exits, "the policy's route() raised SystemExit: 3"),
    (_aborts, "the policy's route() raised _PolicyAbort: gave up"),
])
def test_serve_router_refuses_a_wrong_typed_route_with_a_message(answer, message):
    # A float index used to escape route() as a TypeError (a plain-text 500 and a traceback in the
    # router's log), True was taken as endpoint 1, and sys.exit() escaped as SystemExit.
    state = _router_state(_Answers(answer))
    with pytest.raises(ValueError) as info:  # forward() answers a ValueError with a JSON 500 naming it
        state.route({"prompt": "hi", "max_tokens": 2}, "r1")
    assert str(info.value) == message
    assert not state.decisions


def test_serve_router_takes_numpy_indices_as_ints_and_its_decision_log_stays_json():
    # An np.int64 index was logged as is, and GET /fleetwise/decisions failed (500) from then on.
    state = _router_state(_Answers(lambda e: P.RouteDecision(np.int64(1))))
    decision, _, _ = state.route({"prompt": "hi", "max_tokens": 2}, "r1")
    assert decision == P.RouteDecision(1) and type(decision.instance) is int
    assert json.loads(json.dumps(list(state.decisions)))[0]["index"] == 1


def test_serve_router_answers_a_json_500_for_a_float_index_and_keeps_serving():
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from fleetwise.serve.background import BackgroundServer
    from fleetwise.serve.emulator import EmulatedEngine
    from fleetwise.serve.engine_app import create_engine_app
    from fleetwise.serve.router_app import Endpoint, RouterState, create_router_app

    policy = _Answers(lambda e: P.RouteDecision(0.0))
    with BackgroundServer(create_engine_app(EmulatedEngine(speedup=5.0))) as engine:
        state = RouterState([Endpoint(engine.url)], policy, scrape_interval=0)
        with BackgroundServer(create_router_app(state)) as router:
            resp = httpx.post(router.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
            assert resp.status_code == 500 and resp.json()["error"]["message"] == "the policy's RouteDecision.instance must be an int, got 0.0"
            policy.answer = lambda e: P.RouteDecision(e[0].index)
            assert httpx.post(router.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60).status_code == 200
            assert httpx.get(router.url + "/fleetwise/decisions", timeout=60).status_code == 200


# -- the vLLM scheduler adapter ----------------------------------------------------------------------

def _adapter_plan(plan):
    """``FleetwiseScheduler.plan_step`` for one plan, on a fixed view (no engine: the checks of the
    plan are all it runs)."""
    vs = pytest.importorskip("fleetwise.integrations.vllm_scheduler")
    view = P.StepView(waiting=(P.RequestView(id="a", prompt_tokens=10, max_output_tokens=5),),
                      running=(P.RequestView(id="b", prompt_tokens=10, max_output_tokens=5, computed_tokens=10),))

    class Fixed:
        def plan(self, step):
            return plan

    sched = object.__new__(vs.FleetwiseScheduler)
    sched.step_view = lambda: view
    sched._config_budget, sched._config_active = 256, 16
    sched.batch_scheduler = Fixed()
    return sched.plan_step()[1]


@pytest.mark.parametrize("plan, message", [
    (P.StepPlan(64.5, 4), "plan().token_budget must be an int, got 64.5"),
    (P.StepPlan(float("nan"), 4), "plan().token_budget must be an int, got nan"),
    (P.StepPlan(64, True), "plan().max_num_seqs must be an int, got True"),
    (P.StepPlan(64, 4, max_prefill_chunk=2.5), "plan().max_prefill_chunk must be an int or None, got 2.5"),
    (P.StepPlan(64, 4, waiting_order="ab"), "plan().waiting_order must be a list or tuple of request ids (or None), got 'ab'"),
    (P.StepPlan(64, 4, victim_order=[["b"]]), "plan().victim_order names requests that are neither waiting nor running: [['b']]"),
    # Skipped unseen before (each queue is ordered by its own order), as in the simulator.
    (P.StepPlan(64, 4, waiting_order=["b"]), "plan().waiting_order names requests that are not waiting: ['b'] (an order lists requests of its own queue only; the engine would skip the others)"),
    (P.StepPlan(64, 4, victim_order=["a"]), "plan().victim_order names requests that are not running: ['a'] (an order lists requests of its own queue only; the engine would skip the others)"),
])
def test_the_vllm_adapter_refuses_plans_the_simulator_refuses(plan, message):
    # They used to reach vLLM's scheduler: a float or NaN budget, a string read as a list of ids.
    from fleetwise.policy.bridge import PolicyAnswerError

    with pytest.raises(PolicyAnswerError) as info:
        _adapter_plan(plan)
    assert str(info.value) == message


def test_the_vllm_adapter_takes_numpy_counts_as_ints():
    plan = _adapter_plan(P.StepPlan(np.int64(64), np.int32(4), waiting_order=("a",)))
    assert plan == P.StepPlan(64, 4, waiting_order=["a"]) and type(plan.token_budget) is int


def test_a_policy_thread_left_running_does_not_hang_the_command(tmp_path, write_yaml):
    # A router that starts a non-daemon thread and never stops it: the run finishes and writes its
    # results, then the interpreter used to wait for the thread for ever. Now the command says so
    # and exits with the run's status (run_cli's timeout is only a guard against the old hang).
    (tmp_path / "leaky_policy.py").write_text(
        "import threading\n"
        "from fleetwise.policy import RouteDecision\n\n"
        "class Leaky:\n"
        "    def __init__(self):\n"
        "        self.stop = threading.Event()\n"
        "        threading.Thread(target=self.stop.wait, name='leaky-policy-thread').start()\n\n"
        "    def route(self, request, instances):\n"
        "        return RouteDecision(instances[0].index)\n")
    sc = _scenario(router={"kind": "policy", "name": "leaky_policy:Leaky"})
    path = write_yaml(sc)
    r = run_cli("run", str(path), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exiting without waiting for 1 thread(s) still running ('leaky-policy-thread')" in r.stderr
    assert (tmp_path / "out" / "summary.json").exists() and "Traceback" not in r.stderr
