"""Splitwise's mixed pool (``cluster.mixed_pool``): conservation, the paper's trends on an
overloaded prompt pool, identity when no threshold is reached, results and configuration errors.

The cluster is Splitwise's split on one prompt and three token machines (Llama-3-8B, H100),
under on/off bursts (30 req/s for 3 s, then 6 s of silence) that overload the prompt machine."""

from __future__ import annotations

import json

import polars as pl
import pytest

import fleetwise
from fleetwise.errors import ConfigError

NEVER = 2**62
"""A threshold no run reaches."""


def split(mixed_pool: dict | None = None, rate: float = 30.0, requests: int = 400) -> dict:
    """One prefill and three decode H100s behind least-outstanding-tokens, bursty ShareGPT-like load."""
    cluster: dict = {
        "pools": [
            {"name": "prompt", "count": 1, "gpu": "h100-sxm", "model": "llama-3-8b", "role": "prefill"},
            {"name": "token", "count": 3, "gpu": "h100-sxm", "model": "llama-3-8b", "role": "decode"},
        ],
        "router": {"kind": "least-outstanding-tokens"},
    }
    if mixed_pool is not None:
        cluster["mixed_pool"] = mixed_pool
    return {
        "name": "mixed-pool", "seed": 2, "cluster": cluster,
        "workload": {
            "arrivals": {"kind": "onoff", "rate": rate, "on_s": 3.0, "off_s": 6.0},
            "lengths": {"kind": "lognormal", "prompt_median": 1500, "prompt_sigma": 0.6, "prompt_max": 6000,
                        "output_median": 150, "output_sigma": 0.6, "output_max": 800},
            "requests": requests,
        },
    }


@pytest.fixture(scope="module")
def runs() -> dict:
    """Fixed pools, a prompt-side mixed pool, both sides, and thresholds never reached."""
    return {
        "fixed": fleetwise.simulate(split()),
        "prompt": fleetwise.simulate(split({"prompt_overload_tokens": 8192})),
        "both": fleetwise.simulate(split({"prompt_overload_tokens": 8192, "token_overload_tokens": 20000})),
        "never": fleetwise.simulate(split({"prompt_overload_tokens": NEVER, "token_overload_tokens": NEVER})),
    }


def test_every_request_is_served_once_and_kv_stays_within_capacity(runs):
    """Each request finishes exactly once, all its output tokens generated, on an instance of the
    cluster; prefill and decode machines match its mixed-pool service; no instance's KV peak
    exceeds its cache."""
    for name in ("prompt", "both"):
        req, inst = runs[name].requests, runs[name].instances
        assert req.height == 400 and req["request_id"].n_unique() == 400
        assert (req["status"] == "finished").all() and (req["generated_tokens"] == req["output_tokens"]).all()
        lent = req.filter(pl.col("mixed_pool") == "prompt_on_token_instance")
        kept = req.filter(pl.col("mixed_pool") == "decode_on_prompt_instance")
        plain = req.filter(pl.col("mixed_pool") == "none")
        assert lent.height > 0
        # Lent prompts run and decode on one token machine (1-3); kept decodes stay on the prompt machine (0).
        assert lent["instance"].is_between(1, 3).all() and (lent["prefill_instance"] == -1).all() and (lent["kv_transfer_ns"] == 0).all()
        assert (kept["instance"] == 0).all() and (kept["prefill_instance"] == 0).all() and (kept["kv_transfer_ns"] == 0).all()
        moved = plain.filter(pl.col("output_tokens") > 1)
        assert moved["instance"].is_between(1, 3).all() and (moved["prefill_instance"] == 0).all()
        assert (inst["peak_kv_blocks"] <= inst["num_blocks"]).all()
        assert int(inst["finished"].sum()) == 400
        # Foreign requests counted per instance are exactly the requests the mixed pool served.
        assert int(inst["mixed_pool_foreign_requests"].sum()) == lent.height + kept.height
    assert runs["both"].summary["mixed_pool"]["decodes_on_prompt_instances"] > 0


def test_an_overloaded_prompt_pool_borrows_token_machines_and_p99_ttft_drops(runs):
    """Splitwise's trend: under bursts that overload the prompt pool, the mixed pool cuts the tail
    TTFT on the same GPUs (measured: P99 2.02 s fixed, 0.27 s mixed), at the cost of the decodes
    that share the borrowed token machines' iterations with prompts (P99 TPOT 7.4 -> 12.7 ms)."""
    fixed, mixed = runs["fixed"].summary, runs["prompt"].summary
    assert mixed["ttft_s"]["p99"] < 0.25 * fixed["ttft_s"]["p99"]
    assert mixed["ttft_s"]["p50"] < fixed["ttft_s"]["p50"]
    assert mixed["tpot_s"]["p99"] > fixed["tpot_s"]["p99"]
    m = mixed["mixed_pool"]
    assert m["prompts_on_token_instances"] > 50 and m["role_switches"] >= 3
    assert m["mixed_instance_seconds"]["prompt"] == 0.0 and m["mixed_instance_seconds"]["token"] > 0.0
    # Machines go back once their borrowed work is done: far less mixed time than the run.
    assert m["mixed_instance_seconds"]["token"] < 3 * mixed["duration_s"] / 2


def test_a_light_load_never_moves_a_machine():
    """Below the threshold the pools stay fixed: at 3 req/s no machine joins the mixed pool."""
    light = fleetwise.simulate(split({"prompt_overload_tokens": 8192}, rate=3.0, requests=100))
    assert light.summary["mixed_pool"]["role_switches"] == 0
    assert (light.requests["mixed_pool"] == "none").all()


def test_thresholds_never_reached_give_identical_results(runs):
    """With thresholds no run reaches, every result equals the fixed pools' exactly; the mixed
    pool only adds its own columns and summary entry."""
    fixed, never = runs["fixed"], runs["never"]
    assert never.requests.drop("mixed_pool").equals(fixed.requests)
    mixed_cols = ["mixed_pool_role_switches", "mixed_pool_s", "mixed_pool_foreign_requests"]
    assert never.instances.drop(mixed_cols).equals(fixed.instances)
    assert (never.instances["mixed_pool_role_switches"] == 0).all()
    rest = {k: v for k, v in never.summary.items() if k != "mixed_pool"}
    assert json.dumps(rest, sort_keys=True) == json.dumps(fixed.summary, sort_keys=True)


def test_same_seed_same_results(runs):
    """Deterministic: the same scenario and seed give identical requests and instances."""
    again = fleetwise.simulate(split({"prompt_overload_tokens": 8192, "token_overload_tokens": 20000}))
    assert again.requests.equals(runs["both"].requests) and again.instances.equals(runs["both"].instances)


@pytest.mark.parametrize(("mixed_pool", "pools", "message"), [
    ({}, None, "set prompt_overload_tokens, token_overload_tokens or both"),
    ({"prompt_overload_tokens": 0}, None, "greater than or equal to 1"),
    ({"prompt_queue": 5}, None, "prompt_queue"),
    ({"prompt_overload_tokens": 100}, [{"name": "colo", "count": 2, "gpu": "h100-sxm", "model": "llama-3-8b"}], "role prefill"),
])
def test_bad_mixed_pool_is_a_config_error_naming_the_field(mixed_pool, pools, message):
    """A mixed pool without thresholds, with a zero or unknown threshold, or on a cluster without
    prompt and token pools is refused with the field path."""
    scenario = split(mixed_pool)
    if pools is not None:
        scenario["cluster"]["pools"] = pools
    with pytest.raises(ConfigError, match="cluster.mixed_pool") as err:
        fleetwise.scenario_from_dict(scenario)
    assert message in str(err.value)


def test_iso_power_scenario_reproduces_splitwise_trends():
    """scenarios/splitwise-mixed-pool.yaml (Splitwise-HHcap-style: one H100 prompt machine, four
    token H100s capped at 490 W, within four uncapped H100s' 2800 W): under bursts the mixed pool
    cuts P99 TTFT over the fixed pools (measured 0.39 s against 4.24 s) and meets TTFT <= 1 s and
    TPOT <= 50 ms for >= 90% of requests where the fixed pools do not (100% against 25%), while its
    token machines keep the ITL tail far below the colocated iso-power baseline's (12 ms against
    128 ms: prompts in a mixed machine's iterations are the exception, not every iteration)."""
    import yaml
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenarios" / "splitwise-mixed-pool.yaml").read_text())
    pools = raw["cluster"]["pools"]
    assert pools[0]["count"] * 700 + pools[1]["count"] * pools[1]["power_cap_watts"] <= 4 * 700  # iso-power
    slo = {"ttft": 1.0, "tpot": 0.05}
    fixed_raw = {**raw, "cluster": {**raw["cluster"], "mixed_pool": None}}
    colo_raw = {**raw, "cluster": {"engine": raw["cluster"]["engine"], "router": raw["cluster"]["router"],
                                   "pools": [{"name": "colo", "count": 4, "gpu": "h100-sxm", "model": "llama-3-8b"}]}}
    mixed, fixed, colo = (fleetwise.simulate({**r, "slo": slo}).summary for r in (raw, fixed_raw, colo_raw))
    assert mixed["ttft_s"]["p99"] < 0.2 * fixed["ttft_s"]["p99"]
    assert mixed["slo"]["attainment"] >= 0.9 > fixed["slo"]["attainment"]
    assert mixed["itl_s"]["p99"] < 0.25 * colo["itl_s"]["p99"]
    assert mixed["mixed_pool"]["prompts_on_token_instances"] > 0 and mixed["mixed_pool"]["role_switches"] > 0
