"""PIM devices: operators dispatched by arithmetic intensity, and their effect on serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fleetwise
from fleetwise.workload import Workload

from conftest import run_cli, small_scenario


def _ops(*args):
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--engine", "fleetwise-torch", *args, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    return d, {o["op"]: o for o in d["ops"]}


def test_dispatch_by_op_per_byte():
    # Decode attention (4 FLOP/B under GQA 32:8) goes to the PIM; a long prefill's GEMMs
    # (thousands of FLOP/B) stay on the GPU; so does the LM head (not a layer operator).
    d, ops = _ops("--decode-batch", "32", "--context", "4000", "--pim", "attacc-hbm3-pim")
    assert ops["decode_attention"]["on_pim"]
    assert ops["decode_attention"]["flops"] / ops["decode_attention"]["bytes"] == pytest.approx(4.0, rel=0.01)
    assert not ops["lm_head"]["on_pim"]
    p, pops = _ops("--prefill", "4096", "--pim", "attacc-hbm3-pim")
    assert not any(pops[k]["on_pim"] for k in ("qkv_proj", "mlp_gate_up", "mlp_down", "prefill_attention"))
    plain, _ = _ops("--prefill", "4096")
    assert p["seconds"] <= plain["seconds"]
    base, bops = _ops("--decode-batch", "32", "--context", "4000")
    assert d["seconds"] < base["seconds"]
    assert ops["decode_attention"]["seconds"] < bops["decode_attention"]["seconds"] / 1.5


def test_logic_pim_handles_gqa_attention_at_bandwidth():
    # A Logic-PIM sized for Op/B up to 8 is bandwidth-bound on 4-FLOP/B attention, unlike the
    # 1-FLOP/B bank-level PIM, which is compute-bound there (Duplex's argument).
    _, logic = _ops("--decode-batch", "32", "--context", "4000", "--pim", "logic-pim")
    _, bank = _ops("--decode-batch", "32", "--context", "4000", "--pim", "attacc-hbm3-pim")
    assert not logic["decode_attention"]["compute_bound"] and bank["decode_attention"]["compute_bound"]


def test_pim_speeds_up_long_context_decoding_in_simulation():
    n = 64
    wl = Workload(
        arrival_ns=np.zeros(n, dtype=np.int64),
        prompt_tokens=np.full(n, 6000, dtype=np.int64),
        output_tokens=np.full(n, 200, dtype=np.int64),
    )

    def run(pim):
        sc = small_scenario()
        sc["cluster"]["pools"][0].update(count=1, pim=pim, engine="fleetwise-torch")
        return fleetwise.simulate(sc, workload=wl)

    plain, pim = run(None), run("attacc-hbm3-pim")
    assert pim.summary["tpot_s"]["p50"] < 0.8 * plain.summary["tpot_s"]["p50"]
    assert pim.summary["finished"] == n


def test_unknown_pim_is_a_config_error():
    sc = small_scenario()
    sc["cluster"]["pools"][0]["pim"] = "magic-pim"
    with pytest.raises(fleetwise.ConfigError, match=r"cluster.pools.0.pim.*attacc-hbm3-pim"):
        fleetwise.simulate(sc)
