"""Trend tests of the seed systems on their scenarios (orderings and ratios, not exact numbers)."""

from __future__ import annotations

import json

import pytest

import fleetwise
from fleetwise.config.load import load_scenario

from conftest import REPO, SHARED_TRACES, run_cli

ARXIV = SHARED_TRACES / "arxiv_summarization_lengths_llama2tok.csv"


def _capacity(kind: str, rates: list[float], tbt_p99: float, ttft_p50: float) -> float:
    """Highest rate of ``rates`` whose P99 time between tokens and median TTFT meet the SLO."""
    best = 0.0
    for rate in rates:
        sched = "{kind: %s, max_num_seqs: 128}" % kind
        sc = load_scenario(REPO / "scenarios" / "sarathi-serve.yaml", [f"cluster.pools.0.scheduler={sched}", f"workload.arrivals.rate={rate}"])
        s = fleetwise.simulate(sc).summary
        if s["itl_s"]["p99"] <= tbt_p99 and s["ttft_s"]["p50"] <= ttft_p50:
            best = rate
    return best


@pytest.mark.skipif(not ARXIV.exists(), reason=f"needs the arXiv-summarization length file at {ARXIV}")
def test_sarathi_serve_capacity_beats_vllm_beats_orca_under_strict_tbt_slo():
    rates = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0]
    caps = {k: _capacity(k, rates, tbt_p99=0.1, ttft_p50=2.0) for k in ("sarathi-serve", "vllm", "orca")}
    assert caps["sarathi-serve"] > caps["vllm"] > caps["orca"] > 0, caps
    assert caps["sarathi-serve"] >= 3 * caps["vllm"], caps


# Without the arXiv-summarization file, the log-normal fit of its lengths within Yi-34B's 4K context.
YI_LENGTHS = [] if ARXIV.exists() else ["workload.lengths={kind: lognormal, prompt_median: 2245, prompt_sigma: 0.75, prompt_max: 3584, output_median: 179, output_sigma: 0.8, output_max: 512}"]


def test_sarathi_serve_capacity_beats_vllm_beats_orca_on_yi_34b_tp2():
    # Sarathi-Serve's Yi-34B on two A100s (TP2). The strict P99 time-between-tokens SLO is 5x one
    # decode iteration (32 requests at 4K context, ~0.19 s); capacity is the highest rate meeting it
    # with a median TTFT under 2 s. Sarathi-Serve's 512-token chunks keep every gap near one
    # iteration; vLLM's prefill-only iterations and Orca's whole prompts beside decodes stall them,
    # Orca's more often (its prompts ride in the decodes' iterations).
    from fleetwise.cluster import core_config
    from fleetwise.cost import cost_model

    path = REPO / "scenarios" / "sarathi-serve-yi34b.yaml"
    pool = core_config(load_scenario(path, YI_LENGTHS))["pools"][0]
    slo = 5 * cost_model(pool["model"], pool["gpu"], calibration=pool["calibration"], tp=2).iteration_seconds([], [4096] * 32)
    assert 0.15 < slo < 0.25
    caps = {}
    for kind in ("sarathi-serve", "vllm", "orca"):
        sched = "{kind: %s, max_num_seqs: 128%s}" % (kind, ", token_budget: 512" if kind == "sarathi-serve" else "")
        caps[kind] = 0.0
        for rate in (0.1, 0.2, 0.3, 0.32, 0.34, 0.36, 0.38, 0.4, 0.6, 0.8, 1.0):
            s = fleetwise.simulate(load_scenario(path, [*YI_LENGTHS, f"cluster.pools.0.scheduler={sched}", f"workload.arrivals.rate={rate}"])).summary
            if s["finished"] == 600 and s["itl_s"]["p99"] <= slo and s["ttft_s"]["p50"] <= 2.0:
                caps[kind] = rate
    assert caps["sarathi-serve"] > caps["vllm"] > caps["orca"] > 0, caps
    assert caps["sarathi-serve"] >= 2.5 * caps["vllm"], caps


def test_decodes_piggybacked_on_a_prefill_chunk_cost_far_less_than_alone():
    def secs(*args):
        r = run_cli("estimate", "--model", "mistral-7b", "--gpu", "a100-80gb-sxm", "--engine", "fleetwise-torch", *args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["seconds"]

    chunk = secs("--prefill", "512", "--prefill-context", "1024")
    decodes = secs("--decode-batch", "32", "--context", "2000")
    mixed = secs("--prefill", "512", "--prefill-context", "1024", "--decode-batch", "32", "--context", "2000")
    # The decodes' marginal cost in the mixed batch (their attention, a few more GEMM rows) is a
    # small fraction of a decode-only batch, which must stream all the weights itself.
    assert (mixed - chunk) < 0.5 * decodes


def test_compare_prints_policies_side_by_side(tmp_path, write_yaml):
    from conftest import small_scenario

    sc = small_scenario()
    sc["workload"]["requests"] = 200
    p = write_yaml(sc)
    r = run_cli(
        "compare", str(p), "--slo", "ttft_p90=1", "-o", str(tmp_path / "cmp"),
        "--variant", "vllm: cluster.pools.0.scheduler={kind: vllm, max_num_seqs: 64}",
        "--variant", "sarathi-serve: cluster.pools.0.scheduler={kind: sarathi-serve, token_budget: 256}",
    )
    assert r.returncode == 0, r.stderr
    assert "vllm" in r.stdout and "sarathi-serve" in r.stdout and "SLO attainment" in r.stdout
    assert (tmp_path / "cmp" / "vllm" / "requests.parquet").exists() and (tmp_path / "cmp" / "sarathi-serve" / "summary.json").exists()
    r = run_cli("compare", str(p), "--variant", "nonsense")
    assert r.returncode == 2 and "LABEL: PATH=VALUE" in r.stderr


MOONCAKE = SHARED_TRACES / "mooncake_fast25_conversation.jsonl"


def _prefix_run(path, caching, router, requests=None):
    over = [f"cluster.pools.0.prefix_caching={str(caching).lower()}", f"cluster.router.kind={router}", f"workload.arrivals.path={path}"]
    if requests:
        over.append(f"workload.requests={requests}")
    return fleetwise.simulate(load_scenario(REPO / "scenarios" / "prefix-caching.yaml", over))


@pytest.mark.skipif(not MOONCAKE.exists(), reason=f"needs the Mooncake conversation trace at {MOONCAKE}")
def test_prefix_caching_on_mooncake_saves_prefill_and_ttft_and_affinity_routing_hits_more():
    off = _prefix_run(MOONCAKE, False, "least-outstanding-tokens", 2000)
    lot = _prefix_run(MOONCAKE, True, "least-outstanding-tokens", 2000)
    aff = _prefix_run(MOONCAKE, True, "prefix-affinity", 2000)
    prefill = lambda r: int(r.instances["prefill_tokens"].sum())
    assert "prefix_cache" not in off.summary
    assert prefill(aff) < prefill(lot) < 0.85 * prefill(off)
    assert aff.summary["prefix_cache"]["hit_rate"] > lot.summary["prefix_cache"]["hit_rate"] > 0.15
    assert aff.summary["ttft_s"]["p90"] < off.summary["ttft_s"]["p90"]
    # Hits are whole 512-token hash blocks, and never the whole prompt (its last token is computed).
    assert aff.summary["prefix_cache"]["hit_tokens"] % 512 == 0
    for r in (lot, aff):
        q = r.requests
        assert (q["status"] == "finished").all() and (q["generated_tokens"] == q["output_tokens"]).all()


def test_prefix_caching_scenario_on_the_sample_trace():
    on = _prefix_run("../traces/sample-mooncake.jsonl", True, "prefix-affinity")
    off = _prefix_run("../traces/sample-mooncake.jsonl", False, "prefix-affinity")
    assert on.summary["prefix_cache"]["hit_rate"] > 0.1
    assert int(on.instances["prefill_tokens"].sum()) < int(off.instances["prefill_tokens"].sum())


def test_generated_prefix_groups_hit_the_cache(write_yaml):
    from conftest import small_scenario

    sc = small_scenario()
    sc["cluster"]["pools"][0]["prefix_caching"] = True
    sc["workload"]["prefixes"] = {"groups": 4, "prefix_tokens": 1024, "fraction": 0.8, "block_tokens": 16}
    r = fleetwise.simulate(sc)
    pc = r.summary["prefix_cache"]
    # 80% of requests carry a 1024-token shared prefix; after each group's first request it is cached.
    assert pc["hit_tokens"] > 0.5 * 0.8 * 600 * 1024
    sc["cluster"]["pools"][0]["memory"] = {"block_size": 32}
    sc["workload"]["prefixes"]["block_tokens"] = 16
    with pytest.raises(fleetwise.ConfigError, match="must divide"):
        fleetwise.simulate(sc)


def test_prefix_caching_without_hashes_is_a_config_error():
    from conftest import small_scenario

    sc = small_scenario()
    sc["cluster"]["pools"][0]["prefix_caching"] = True
    with pytest.raises(fleetwise.ConfigError, match="prefix hashes"):
        fleetwise.simulate(sc)


def _split(*over):
    return fleetwise.simulate(load_scenario(REPO / "scenarios" / "splitwise.yaml", list(over)))


def test_disaggregation_removes_prefill_decode_interference_at_small_transfer_cost():
    split = _split()
    colo = _split("cluster.pools=[{name: colo, count: 4, gpu: h100-sxm, model: llama-3-8b}]")
    q = split.requests
    assert (q["status"] == "finished").all()
    # Every request is prefilled on a prompt instance (0, 1) and decoded on a token instance (2, 3).
    assert set(q["prefill_instance"].unique()) == {0, 1} and set(q["instance"].unique()) == {2, 3}
    # Decodes never wait behind prefills: the time between tokens stays at decode-iteration scale.
    assert split.summary["itl_s"]["p99"] < 0.25 * colo.summary["itl_s"]["p99"]
    assert split.summary["tpot_s"]["p90"] < colo.summary["tpot_s"]["p90"]
    # The KV transfer (1.5K-token prompts: ~200 MB over 2 x 50 GB/s NICs) is a small part of latency.
    share = (q["kv_transfer_ns"] * 1e-9 / q["e2e_s"]).median()
    assert 0 < share < 0.02
    # Layer-wise transfer hides all but the last layer behind the prefill; the 4 ms setup latency
    # of a transfer shows in both (about 4.1 ms left against 8.2 ms serialized).
    lw = _split("cluster.pools.0.kv_transfer=layerwise").requests
    assert lw["kv_transfer_ns"].median() < 0.6 * q["kv_transfer_ns"].median()


def test_h100_speeds_up_prompts_much_more_than_tokens():
    # Splitwise's observation: prompt (compute-bound) gains ~ the FLOP/s ratio, tokens (memory-bound)
    # only ~ the bandwidth ratio.
    def secs(gpu, *args):
        r = run_cli("estimate", "--model", "llama-2-70b", "--gpu", gpu, "--tp", "4", *args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["seconds"]

    prompt = secs("a100-80gb-sxm", "--prefill", "2048") / secs("h100-sxm", "--prefill", "2048")
    token = secs("a100-80gb-sxm", "--decode-batch", "16", "--context", "2048") / secs("h100-sxm", "--decode-batch", "16", "--context", "2048")
    # Splitwise (ISCA'24, DGX-A100 vs DGX-H100): prompts ~2.1x faster, tokens ~1.4x; fleetwise's
    # vllm profile gives 2.60x and 1.42x. Prompts gain more than Splitwise's 2023 engine measured,
    # as today's kernels do: Vidur's vLLM-derived kernels of the same layer (projections, norms,
    # all-reduces; calibration/{a100,h100}-vidur/ops.csv) run 2.73x faster on the DGX-H100 at TP4 and
    # 2048 tokens. The trend is asserted: between the paper's ratio and those kernels'.
    import polars as pl

    def kernels_ms(d):
        r = pl.read_csv(REPO / "calibration" / d / "ops.csv").filter((pl.col("model") == "llama-2-70b") & (pl.col("tp") == 4) & (pl.col("tokens") == 2048)).row(0, named=True)
        return r["gemm_ms"] + r["elementwise_ms"] + r["all_reduce_ms"]

    measured = kernels_ms("a100-vidur") / kernels_ms("h100-vidur")
    assert measured == pytest.approx(2.73, abs=0.01)
    assert 2.1 * 0.85 <= prompt <= 1.05 * measured
    assert 1.4 * 0.9 <= token <= 1.4 * 1.1
    assert prompt > 1.4 * token


def test_disaggregation_config_errors():
    from conftest import small_scenario

    sc = small_scenario()
    sc["cluster"]["pools"][0]["role"] = "prefill"
    with pytest.raises(fleetwise.ConfigError, match="none has role decode"):
        fleetwise.simulate(sc)
    sc["cluster"]["pools"][0]["role"] = "decode"
    with pytest.raises(fleetwise.ConfigError, match="must take arrivals"):
        fleetwise.simulate(sc)


def test_placement_search_respects_budget_and_ranks_by_objective(tmp_path):
    from fleetwise.sweep.grid import expand, parse_grid
    from fleetwise.sweep.placement import place

    points = expand(parse_grid(["cluster.pools.0.count=1,2", "cluster.pools.1.count=1,2"]))
    rows = place(str(REPO / "scenarios" / "splitwise.yaml"), ["workload.requests=600"], points, tmp_path / "pl",
                 {"ttft": 1.0, "tpot": 0.03}, 0.9, "goodput_per_gpu", budget_dollars_per_hour=9.5, jobs=1)
    within = [r for r in rows if r["within_budget"]]
    assert len(within) == 3 and all(r["dollars_per_hour"] <= 9.5 for r in within)
    over = [r for r in rows if not r["within_budget"]]
    assert [r["gpus"] for r in over] == [4] and "goodput" not in over[0]
    per_gpu = [r["goodput_per_gpu"] for r in within]
    assert per_gpu == sorted(per_gpu, reverse=True) and per_gpu[0] > 0
    for r in within:
        assert r["goodput_per_gpu"] == pytest.approx(r["goodput"] / r["gpus"])
    assert json.loads((tmp_path / "pl" / "placement.json").read_text())["layouts"][0]["point"] == rows[0]["point"]
    # A power budget prices layouts at TDP: 700 W per H100; one that excludes every layout is an error.
    with pytest.raises(fleetwise.ConfigError, match=r"--budget-watts 1000: excludes every layout of the grid .*draws 1400 W"):
        place(str(REPO / "scenarios" / "splitwise.yaml"), ["workload.requests=300"], points[:1], tmp_path / "pw",
              {"ttft": 1.0}, 0.9, "goodput", budget_watts=1000)


def test_batchllm_beats_vllm_with_lru_prefix_caching_on_a_prefix_heavy_batch():
    def run(sched):
        return fleetwise.simulate(load_scenario(REPO / "scenarios" / "batchllm.yaml", [f"cluster.pools.0.scheduler={sched}"]))

    bl = run("{kind: batchllm, max_num_seqs: 512, token_budget: 2048}")
    vl = run("{kind: vllm, max_num_seqs: 256}")
    for r in (bl, vl):
        q = r.requests
        assert (q["status"] == "finished").all() and (q["generated_tokens"] == q["output_tokens"]).all()
    assert bl.summary["throughput"]["requests_per_s"] > 1.5 * vl.summary["throughput"]["requests_per_s"]
    # Grouping members behind the one computing their prefix saves at least as many prompt tokens.
    assert int(bl.instances["prefill_tokens"].sum()) <= int(vl.instances["prefill_tokens"].sum())
    assert bl.summary["prefix_cache"]["hit_rate"] >= vl.summary["prefix_cache"]["hit_rate"]
    assert bl.summary["preemptions"] == 0, "memory-centric admission reserves whole lifetimes"


def test_batchllm_fills_its_token_budget_with_prefill_chunks():
    from fleetwise.policy.builtin import make_scheduler

    # Without prefix caching there is nothing to share; the scheduler still batches by tokens.
    s = make_scheduler({"kind": "batchllm", "max_num_seqs": 8, "token_budget": 512}, num_blocks=1000)
    for i, p in enumerate((100, 200, 300)):
        s.add(i, p, 3)
    assert sum(t for _, t in s.schedule()) == 512


@pytest.mark.skipif(not ARXIV.exists(), reason=f"needs the arXiv-summarization length file at {ARXIV}")
def test_distserve_disaggregation_doubles_per_gpu_goodput_under_tight_tpot(tmp_path):
    from fleetwise.sweep.goodput import search

    scenario = str(REPO / "scenarios" / "distserve.yaml")
    slos = {"ttft": 3.0, "tpot": 0.015}
    split = search(scenario, [], tmp_path / "split", slos, 0.9, low=0.25, tolerance=0.04, jobs=1, quiet=True)
    colo = search(scenario, ["cluster.pools=[{name: colo, count: 1, gpu: h100-sxm, model: llama-3-8b}]"], tmp_path / "colo", slos, 0.9, low=0.25, tolerance=0.04, jobs=1, quiet=True)
    assert split["gpus"] == 2 and colo["gpus"] == 1
    # Colocated, long prefills stall decodes past the TPOT target; split, decodes never wait for them.
    assert split["goodput_per_gpu"] > 2.0 * colo["goodput_per_gpu"] > 0


@pytest.mark.skipif(not ARXIV.exists(), reason=f"needs the arXiv-summarization length file at {ARXIV}")
def test_splitwise_split_cluster_serves_more_than_colocated_at_equal_cost(tmp_path):
    from fleetwise.sweep.goodput import search
    from fleetwise.sweep.placement import price

    scenario = str(REPO / "scenarios" / "distserve.yaml")
    colocated = ["cluster.pools=[{name: colo, count: 2, gpu: h100-sxm, model: llama-3-8b}]"]
    assert price(load_scenario(scenario, colocated))["dollars_per_hour"] == price(load_scenario(scenario))["dollars_per_hour"]
    slos = {"ttft": 3.0, "tpot": 0.015}
    split = search(scenario, [], tmp_path / "split", slos, 0.9, low=0.25, tolerance=0.04, jobs=1, quiet=True)
    colo = search(scenario, colocated, tmp_path / "colo", slos, 0.9, low=0.25, tolerance=0.04, jobs=1, quiet=True)
    assert split["goodput_rate"] > 1.5 * colo["goodput_rate"] > 0


@pytest.mark.parametrize("name", ["distserve", "sarathi-serve"])
def test_paper_scenarios_run_without_the_shared_traces(name):
    # The override their headers print for a machine without the arXiv length file.
    lognormal = "workload.lengths={kind: lognormal, prompt_median: 2245, prompt_sigma: 0.75, prompt_max: 4054, output_median: 179, output_sigma: 0.8, output_max: 4056}"
    r = fleetwise.simulate(load_scenario(REPO / "scenarios" / f"{name}.yaml", [lognormal, "workload.requests=150"]))
    assert r.summary["finished"] == 150
    missing = [f"workload.lengths.path={REPO}/no-such-dir/arxiv.csv"]
    with pytest.raises(fleetwise.ConfigError, match="traces/README.md"):
        fleetwise.simulate(load_scenario(REPO / "scenarios" / f"{name}.yaml", missing))
