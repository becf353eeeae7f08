"""Python decode choices inside the simulator: in a disaggregated cluster the core asks the policy
where each prefilled request's KV goes (the decode instances to try, best first)."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
import yaml

import fleetwise
import fleetwise.policy as P
from fleetwise.errors import ConfigError, PolicyError
from fleetwise.policy import conformance
from fleetwise.workload import Workload

from conftest import REPO, run_cli


def _splitwise(requests: int = 150, decoders: int = 3) -> dict:
    """scenarios/splitwise.yaml (2 prefill and, here, 3 decode Llama-3-8B instances), shortened.
    Instances 0-1 prefill, 2-4 decode."""
    sc = yaml.safe_load((REPO / "scenarios" / "splitwise.yaml").read_text())
    sc["workload"]["requests"] = requests
    sc["cluster"]["pools"][1]["count"] = decoders
    return sc


def _same_results(a, b):
    assert a.requests.equals(b.requests)
    assert a.instances.equals(b.instances)


class MirrorOfTheBuiltin:
    """The core's choice written from scratch: the router's pick, then the least loaded."""

    def choose(self, request, decoders, preferred):
        order = sorted(decoders, key=lambda d: (d.index != preferred, d.outstanding_tokens, d.index))
        return [d.index for d in order]


class Fixed:
    """Always the same decode instance."""

    def __init__(self, instance: int = 3):
        self.instance = instance

    def choose(self, request, decoders, preferred):
        return self.instance


class _Recording(MirrorOfTheBuiltin):
    """The mirror, noting the decode instances' outstanding tokens it was shown at each call."""

    def __init__(self):
        self.seen = []

    def choose(self, request, decoders, preferred):
        self.seen.append([d.outstanding_tokens for d in decoders])
        return super().choose(request, decoders, preferred)


def test_kv_in_flight_counts_on_its_decode_instance():
    # One prefill instance (0), three decode instances (1-3); six 1,000-token prompts arrive
    # together and prefill in one batch, so their six handoffs start at the same instant.
    sc = _splitwise(requests=6)
    sc["cluster"]["pools"][0]["count"] = 1
    wl = Workload(arrival_ns=np.zeros(6, np.int64), prompt_tokens=np.full(6, 1000, np.int64), output_tokens=np.full(6, 50, np.int64))
    rec = _Recording()
    recorded = fleetwise.simulate(sc, workload=wl, decode_choice=rec)
    # Each dispatched handoff's 1,001 tokens (prompt and first token) count at once on its decode
    # instance; without them every call would see [0, 0, 0] and all six would go to instance 1.
    assert rec.seen == [[0, 0, 0], [1001, 0, 0], [1001, 1001, 0], [1001, 1001, 1001], [2002, 1001, 1001], [2002, 2002, 1001]]
    native = fleetwise.simulate(sc, workload=wl)
    assert native.requests["instance"].to_list() == [1, 2, 3, 1, 2, 3]
    _same_results(native, recorded)


@pytest.mark.parametrize("router", [None, {"kind": "policy", "name": "disaggregated"}])
def test_a_python_mirror_of_the_builtin_choice_gives_identical_results(router):
    # With the policy router "disaggregated" every decision carries a decode pick (``preferred``).
    sc = _splitwise()
    if router is not None:
        sc["cluster"]["router"] = router
    native = fleetwise.simulate(sc)
    decoded_on = native.requests.filter(pl.col("generated_tokens") > 1)["instance"].unique().sort().to_list()
    assert decoded_on == [2, 3, 4]  # the built-in spreads the decodes
    _same_results(native, fleetwise.simulate(sc, decode_choice=MirrorOfTheBuiltin()))
    by_name = copy.deepcopy(sc)
    by_name["cluster"]["decode_choice"] = {"name": "fewest-outstanding-tokens"}
    _same_results(native, fleetwise.simulate(by_name))


def test_a_fixed_choice_puts_every_decode_on_that_instance():
    sc = _splitwise()
    r = fleetwise.simulate(sc, decode_choice=Fixed(3))
    req = r.requests
    assert (req["status"] == "finished").all()
    handed = req.filter(pl.col("generated_tokens") > 1)
    assert handed.height > 100 and (handed["instance"] == 3).all() and (handed["pool"] == "token").all()
    decode_tokens = dict(zip(r.instances["instance"].to_list(), r.instances["decode_tokens"].to_list()))
    assert decode_tokens[2] == decode_tokens[4] == 0 and decode_tokens[3] > 0
    # The same through a scenario naming an importable class with parameters.
    named = copy.deepcopy(sc)
    named["cluster"]["decode_choice"] = {"name": "test_decode_choice:Fixed", "params": {"instance": 4}}
    assert (fleetwise.simulate(named).requests.filter(pl.col("generated_tokens") > 1)["instance"] == 4).all()


class _Prefill(Fixed):
    def choose(self, request, decoders, preferred):
        return [decoders[0].index, 0]


class _Raises(Fixed):
    def choose(self, request, decoders, preferred):
        raise KeyError("no decoder")


def test_a_wrong_or_raising_choice_stops_the_run_naming_it():
    sc = _splitwise(requests=20)
    with pytest.raises(PolicyError, match=r"decode choice policy '_Prefill': choose\(\): chose \[0\] for request \d+; the decode instances are \[2, 3, 4\]") as e:
        fleetwise.simulate(sc, decode_choice=_Prefill())
    assert getattr(e.value, "requests", None) is not None  # what finished before is kept
    with pytest.raises(PolicyError, match=r"_Raises.*raised KeyError") as e:
        fleetwise.simulate(sc, decode_choice=_Raises())
    assert isinstance(e.value.__cause__, KeyError)
    with pytest.raises(PolicyError, match=r"must return a decode instance index or a non-empty list"):
        fleetwise.simulate(sc, decode_choice=Fixed([]))
    with pytest.raises(PolicyError, match=r"is not a decode choice policy \(it has no choose"):
        fleetwise.simulate(sc, decode_choice=object())


def test_decode_choice_settings_errors_name_the_field():
    sc = yaml.safe_load((REPO / "scenarios" / "quickstart.yaml").read_text())
    with pytest.raises(ConfigError, match=r"cluster.decode_choice: a decode choice needs a pool with role decode"):
        fleetwise.simulate(sc, decode_choice=Fixed())
    sc = _splitwise(requests=5)
    sc["cluster"]["decode_choice"] = {"name": "nearest"}
    with pytest.raises(ConfigError, match=r"unknown decode-choice policy 'nearest'; registered: fewest-outstanding-tokens"):
        fleetwise.simulate(sc)


class _Twice:
    def choose(self, request, decoders, preferred):
        return [decoders[0].index, decoders[0].index]


def test_conformance_checks_decode_choices():
    assert conformance.check_decode_choice(P.FewestOutstandingTokens()).passed
    assert conformance.check_decode_choice(MirrorOfTheBuiltin()).passed
    r = conformance.check_decode_choice(_Twice())
    assert not r.passed and "named a decode instance twice" in r.failures[0]
    r = conformance.check_decode_choice(Fixed(999))
    assert not r.passed and "the decode instances are" in r.failures[0]
    ok = run_cli("check-policy", "decode-choice", "fewest-outstanding-tokens")
    assert ok.returncode == 0 and "decode-choice fewest-outstanding-tokens: PASS" in ok.stdout, ok.stdout + ok.stderr
