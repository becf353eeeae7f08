"""A pool's ``speculative`` (docs/speculative-decoding.md): the simulated acceptance matches the
hand-computed expectation, speculation speeds batch-1 decoding of Llama-3-70B with a Llama-3-8B
draft by over 1.5x and stops paying as the batch grows, a zero acceptance rate is a slowdown, runs
are deterministic by seed, every request emits exactly its output, the proposer's memory comes out
of the KV cache, ``fleetwise estimate --speculative`` prices one step, and bad settings are
configuration errors naming the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

import fleetwise
from conftest import run_cli, small_scenario
from fleetwise.catalog import builtin_models
from fleetwise.cluster import core_config
from fleetwise.cost import cost_model
from fleetwise.errors import ConfigError

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "speculative-decoding.yaml"
DRAFT = {"method": "draft", "draft_model": "llama-3-8b", "num_speculative_tokens": 4, "acceptance_rate": 0.8}


def _scenario(speculative: dict | None = DRAFT, requests: int = 1, prompt: int = 500, output: int = 400, seed: int = 11) -> dict:
    """Llama-3-70B on 4 H100s, ``requests`` identical requests arriving together (a batch of that size)."""
    pool = {"name": "main", "gpu": "h100-sxm", "model": "llama-3-70b", "parallelism": {"tp": 4}, "scheduler": {"kind": "vllm", "max_num_seqs": 256}}
    if speculative is not None:
        pool["speculative"] = speculative
    return {"name": "spec", "seed": seed, "cluster": {"pools": [pool]},
            "workload": {"arrivals": {"kind": "poisson", "rate": 1000.0}, "lengths": {"kind": "constant", "prompt": prompt, "output": output}, "requests": requests}}


def _tpot(speculative: dict | None, requests: int) -> float:
    return fleetwise.simulate(_scenario(speculative, requests)).summary["tpot_s"]["mean"]


@pytest.mark.parametrize("rates", [0.8, [0.9, 0.7, 0.5, 0.3]])
def test_the_simulated_acceptance_matches_the_formula(rates):
    spec = {**DRAFT, "acceptance_rate": rates}
    s = fleetwise.simulate(_scenario(spec, requests=8, output=1500)).summary["speculative"]
    a = rates if isinstance(rates, list) else [rates] * 4
    # 1 + a1 + a1 a2 + ...: (1 - 0.8^5) / (1 - 0.8) = 3.3616 for the constant rate; 1 + 0.9 + 0.63 + 0.315 + 0.0945 = 2.9395.
    expected = 1.0 + sum(math.prod(a[: i + 1]) for i in range(4))
    assert expected == pytest.approx(3.3616 if not isinstance(rates, list) else 2.9395)
    assert s["mean_acceptance_length"] == pytest.approx(expected, rel=0.03)
    assert s["acceptance_rate"] == pytest.approx((expected - 1) / 4, rel=0.04)
    # vLLM's per-position rate: accepted at position i over drafts, a1 ... ai.
    for i, got in enumerate(s["per_position_acceptance_rate"]):
        assert got == pytest.approx(math.prod(a[: i + 1]), abs=0.03), i
    # Only the last steps of a request propose fewer than 4 (never past its output).
    assert 0.99 * 4 * s["num_drafts"] < s["num_draft_tokens"] <= 4 * s["num_drafts"]


def test_speculation_pays_at_batch_one_and_turns_into_a_slowdown_at_large_batches():
    speedup = {b: _tpot(None, b) / _tpot(DRAFT, b) for b in (1, 32, 128, 256)}
    # Batch 1: a 4-token draft step of Llama-3-8B (tp 4) costs ~0.9 of a 70B decode; 3.36 tokens per step.
    assert 1.5 < speedup[1] < 2.2, speedup
    assert speedup[1] > speedup[32] > speedup[128] > speedup[256], speedup
    # 256 sequences: the verify pass (1280 tokens through the 70B) is compute-bound.
    assert speedup[256] < 0.95, speedup


def test_a_prompt_runs_through_the_draft_model_too():
    # One 1000-token prompt, no decode beside it: the draft model prefills it as well (it keeps
    # its own KV of the prompt), so the TTFT grows by Llama-3-8B's prefill on the same 4 GPUs
    # (the vllm profile's overheads are per layer: the draft pays its own).
    def ttft(speculative):
        return fleetwise.simulate(_scenario(speculative, prompt=1000, output=5)).summary["ttft_s"]["mean"]
    draft_prefill = cost_model("llama-3-8b", "h100-sxm", tp=4).iteration_seconds(prefills=[(1000, 0, True)])
    assert ttft(DRAFT) - ttft(None) == pytest.approx(draft_prefill, abs=2e-9)
    assert ttft(DRAFT) / ttft(None) > 1.1


def test_a_zero_acceptance_rate_is_a_slowdown():
    zero, plain = _tpot({**DRAFT, "acceptance_rate": 0.0}, 1), _tpot(None, 1)
    assert zero > 1.5 * plain, (zero, plain)


def test_runs_are_deterministic_by_seed_and_every_request_emits_its_output():
    sc = _scenario(DRAFT, requests=40)
    sc["workload"]["lengths"] = {"kind": "lognormal", "prompt_median": 300, "prompt_sigma": 0.5, "prompt_max": 2000, "output_median": 60, "output_sigma": 1.0, "output_max": 800}
    sc["workload"]["arrivals"]["rate"] = 4.0
    a, b = fleetwise.simulate(sc), fleetwise.simulate(sc)
    assert a.requests.equals(b.requests) and a.summary["speculative"] == b.summary["speculative"]
    other = fleetwise.simulate({**sc, "seed": 12})
    assert other.summary["speculative"]["num_accepted_tokens"] != a.summary["speculative"]["num_accepted_tokens"]
    # Conservation: every request finished; each emitted its first token from its prefill and the
    # rest from decode steps (accepted drafts included), so decoded tokens = outputs - requests.
    r, inst = a.requests, a.instances
    assert (r["status"] == "finished").all() and int(r["preemptions"].sum()) == 0
    assert int(inst["decode_tokens"].sum()) == int(r["output_tokens"].sum()) - r.height


def test_the_proposer_takes_its_memory_out_of_the_kv_cache():
    spec, plain = fleetwise.simulate(_scenario(DRAFT)).instances, fleetwise.simulate(_scenario(None)).instances
    draft_weights = cost_model("llama-3-8b", "h100-sxm", tp=4).weight_bytes_per_gpu()
    # KV per token per GPU: Llama-3-70B 2 x 80 layers x 2 heads x 128 x 2 bytes = 81920, the draft 2 x 32 x 2 x 128 x 2 = 32768.
    assert (plain["kv_bytes_per_token"][0], spec["kv_bytes_per_token"][0]) == (81920, 81920 + 32768)
    assert spec["kv_bytes"][0] == plain["kv_bytes"][0] - draft_weights
    assert spec["num_blocks"][0] == spec["kv_bytes"][0] // (16 * 114688)
    eagle = fleetwise.simulate(_scenario({"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": [0.8, 0.6, 0.4]})).instances
    assert eagle["kv_bytes_per_token"][0] == 81920 + 1024, "one more layer's KV"
    # An FP8 KV cache holds the draft's KV in FP8 too (vLLM keeps one kv_cache_dtype for both):
    # half of each; it was 40960 + 32768, the draft's KV left in 16 bits.
    fp8 = _scenario(DRAFT)
    fp8["cluster"]["pools"][0]["quantization"] = {"kv_cache": "fp8"}
    assert fleetwise.simulate(fp8).instances["kv_bytes_per_token"][0] == 40960 + 16384


def test_the_scenario_resolves_the_draft_model_for_the_core():
    core = core_config(fleetwise.load_scenario(SCENARIO))["pools"][0]["speculative"]
    assert core["method"] == "draft" and core["num_speculative_tokens"] == 4 and core["acceptance_rate"] == 0.8
    assert core["draft_model"]["name"] == "llama-3-8b" and core["draft_model"]["num_layers"] == 32


@pytest.mark.parametrize("speculative, field, says", [
    ({**DRAFT, "num_speculative_tokens": 0}, "speculative.num_speculative_tokens", "greater than or equal to 1"),
    ({**DRAFT, "num_speculative_tokens": 17}, "speculative", "a chain of method draft drafts 1 to 16 tokens, got 17"),
    ({**DRAFT, "num_speculative_tokens": 65}, "speculative.num_speculative_tokens", "less than or equal to 64"),
    ({**DRAFT, "acceptance_rate": 1.2}, "speculative", "acceptance_rate must be a probability in [0, 1], got 1.2"),
    ({**DRAFT, "acceptance_rate": [0.9, 0.8]}, "speculative", "needs num_speculative_tokens = 4 rates, got 2"),
    ({**DRAFT, "acceptance_rate": [0.9, 0.8, -0.1, 0.5]}, "speculative", "acceptance_rate[2] must be a probability"),
    ({"method": "draft", "num_speculative_tokens": 2, "acceptance_rate": 0.5}, "speculative", "method draft needs draft_model"),
    ({"method": "eagle", "draft_model": "llama-3-8b", "num_speculative_tokens": 2, "acceptance_rate": 0.5}, "speculative", "draft_model applies to methods draft and eagle3 only"),
    ({"method": "mtp", "draft_vocab_size": 32000, "num_speculative_tokens": 2, "acceptance_rate": 0.5}, "speculative", "draft_vocab_size applies to method eagle3 only"),
    ({"method": "eagle3", "draft_vocab_size": 0, "num_speculative_tokens": 2, "acceptance_rate": 0.5}, "speculative.draft_vocab_size", "greater than or equal to 1"),
    ({**DRAFT, "method": "medusa"}, "speculative.method", "'draft', 'eagle', 'eagle3', 'mtp', 'ngram' or 'suffix'"),
    ({"method": "ngram", "draft_model": "llama-3-8b", "num_speculative_tokens": 2, "acceptance_rate": 0.5}, "speculative", "ngram runs no model"),
    ({"method": "eagle", "proposal_rate": 0.5, "num_speculative_tokens": 2, "acceptance_rate": 0.5}, "speculative", "proposal_rate applies to method ngram only"),
    ({"method": "ngram", "proposal_rate": 1.5, "num_speculative_tokens": 2, "acceptance_rate": 0.5}, "speculative.proposal_rate", "less than or equal to 1"),
    ({**DRAFT, "num_speculative_tokens_per_batch_size": [[1, 8, 4], [8, 64, 2]]}, "speculative", "num_speculative_tokens_per_batch_size[1]: [8, 64] overlaps entry 0 [1, 8]"),
    ({**DRAFT, "num_speculative_tokens_per_batch_size": [[1, 8, 5]]}, "speculative", "num_speculative_tokens_per_batch_size[0]: k must be 0 to num_speculative_tokens = 4"),
    ({**DRAFT, "num_speculative_tokens_per_batch_size": [[0, 8, 1]]}, "speculative", "got [0, 8, 1]"),
    ({**DRAFT, "num_speculative_tokens_per_batch_size": [[1, 8]]}, "speculative.num_speculative_tokens_per_batch_size.0", "Field required"),
    ({**DRAFT, "num_speculative_tokens_per_batch_size": [[1, 8, True]]}, "speculative.num_speculative_tokens_per_batch_size.0.2", "true, a boolean, where an integer is expected"),
    ({**DRAFT, "num_speculative_tokens_per_batch_size": [[1, 2**40, 1]]}, "speculative", "needs 1 <= start <= end <= 4294967295"),
    ({**DRAFT, "num_speculative_tokens_per_batch_size": [[9, 64, 1], [2, 8, 2]]}, "speculative", "the first range starts at 2; it must start at 1"),
    ({**DRAFT, "num_speculative_tokens_per_batch_size": []}, "speculative", "needs at least one [start, end, k] entry"),
])
def test_bad_settings_name_the_file_and_field(write_yaml, speculative, field, says):
    path = write_yaml(_scenario(speculative))
    with pytest.raises(ConfigError, match=f"cluster.pools.0.{field}") as err:
        fleetwise.load_scenario(path)
    assert says in str(err.value) and str(path) in str(err.value)


def test_draft_models_are_looked_up_and_checked_against_the_target(write_yaml):
    with pytest.raises(ConfigError, match=r"cluster\.pools\.0\.speculative\.draft_model: unknown model 'llama-3-1b'; known: .*llama-3-8b"):
        fleetwise.simulate(_scenario({**DRAFT, "draft_model": "llama-3-1b"}))
    with pytest.raises(ConfigError, match=r"cluster\.pools\.0\.speculative\.draft_model: llama-2-7b's vocabulary \(32000 tokens\) differs from llama-3-70b's \(128256\)"):
        fleetwise.simulate(_scenario({**DRAFT, "draft_model": "llama-2-7b"}))
    r = run_cli("run", str(write_yaml(_scenario({**DRAFT, "draft_model": "llama-2-7b"}))))
    assert r.returncode == 2 and "speculative.draft_model" in r.stderr and "Traceback" not in r.stderr
    # A draft as large as the target is allowed, with a warning, and is a heavy slowdown.
    sc = _scenario({**DRAFT, "draft_model": "llama-3-70b"})
    with pytest.warns(UserWarning, match="llama-3-70b is not smaller than llama-3-70b"):
        slow = fleetwise.simulate(sc).summary["tpot_s"]["mean"]
    assert slow > 1.5 * _tpot(None, 1)


def test_estimate_prints_the_speedup_of_one_request():
    def run(batch: int, spec: str) -> dict:
        r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", str(batch), "--context", "1024", "--speculative", spec, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["speculative"]

    one = run(1, "method=draft,draft_model=llama-3-8b,num_speculative_tokens=4,acceptance_rate=0.8")
    assert one["tokens_per_step"] == pytest.approx(3.3616)
    assert one["step_seconds"] == pytest.approx(one["verify_seconds"] + one["proposer_seconds"])
    assert one["speedup"] == pytest.approx(one["plain_seconds_per_token"] * 3.3616 / one["step_seconds"])
    assert one["speedup"] > 1.5
    assert run(256, "method=draft,draft_model=llama-3-8b,num_speculative_tokens=4,acceptance_rate=0.8")["speedup"] < 1.0
    eagle = run(1, "method=eagle,num_speculative_tokens=3,acceptance_rate=0.8/0.6/0.45")
    assert eagle["acceptance_rate"] == [0.8, 0.6, 0.45] and eagle["tokens_per_step"] == pytest.approx(1 + 0.8 + 0.48 + 0.216)
    assert eagle["proposer_seconds"] < 0.1 * eagle["verify_seconds"], "one layer per draft step"
    r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "1", "--context", "10", "--speculative", "method=eagle,num_speculative_tokens=0,acceptance_rate=0.5")
    assert r.returncode == 2 and "--speculative" in r.stderr and "num_speculative_tokens" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "1", "--context", "10", "--speculative", "method=eagle,num_speculative_tokens=2,acceptance_rate=0.5")
    assert r.returncode == 0 and "speedup" in r.stdout


def test_estimate_counts_the_proposers_memory_as_a_run_does():
    # It left the draft model out: a 70B draft "fit" on a 24 GB L4 with exit 0 while run refused it.
    args = ["estimate", "--model", "llama-3-8b", "--decode-batch", "8", "--context", "1024", "--json"]
    spec = "method=draft,draft_model=llama-3-70b,num_speculative_tokens=3,acceptance_rate=0.7"
    r = run_cli(*args, "--gpu", "l4", "--speculative", spec)
    assert r.returncode == 2 and "CapacityError" in r.stderr and "GiB available" in r.stderr, r.stderr
    big = ["estimate", "--model", "llama-3-70b", "--tp", "4", "--decode-batch", "8", "--context", "1024", "--json", "--gpu", "h100-sxm"]
    plain = json.loads(run_cli(*big).stdout)
    draft = json.loads(run_cli(*big, "--speculative", "method=draft,draft_model=llama-3-8b,num_speculative_tokens=3,acceptance_rate=0.7").stdout)
    m, draft_cost = draft["memory"], cost_model("llama-3-8b", "h100-sxm", tp=4)
    assert m["proposer_weights"] == draft_cost.weight_bytes_per_gpu() and m["proposer_kv_cache"] == (8 * 1025) * draft_cost.kv_bytes_per_token()
    assert draft["memory_bytes"] == plain["memory_bytes"] + m["proposer_weights"] + m["proposer_kv_cache"] and m["fits"]


def test_mtp_needs_the_models_own_modules():
    """``method: mtp`` runs the checkpoint's multi-token-prediction modules: refused (exit 2,
    naming the field) for a model without them, as vLLM refuses it; DeepSeek-V3 ships one, which
    the proposer holds beside the target: one MoE layer (FP8 as the pool's weights) and its
    2h x h projection (16-bit), over 8 GPUs."""
    mtp = {"method": "mtp", "num_speculative_tokens": 2, "acceptance_rate": 0.8}
    with pytest.raises(ConfigError, match=r"cluster\.pools\.0\.speculative\.method: mtp runs the model's multi-token-prediction layers, and llama-3-70b has none"):
        fleetwise.simulate(_scenario(mtp))
    # A Llama-3-70B whose checkpoint ships two modules: k = 3 is neither <= 2 nor a multiple of 2.
    sc = {**_scenario({**mtp, "num_speculative_tokens": 3}),
          "models": {"mtp2": {**builtin_models()["llama-3-70b"].model_dump(exclude={"hf_config"}), "mtp_layers": 2}}}
    sc["cluster"]["pools"][0]["model"] = "mtp2"
    with pytest.raises(ConfigError, match=r"num_speculative_tokens: 3 exceeds mtp2's 2 multi-token-prediction modules and is not a multiple"):
        fleetwise.simulate(sc)
    r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "1", "--context", "10",
                "--speculative", "method=mtp,num_speculative_tokens=2,acceptance_rate=0.5")
    assert r.returncode == 2 and "speculative.method" in r.stderr and "has none" in r.stderr and "Traceback" not in r.stderr
    args = ["estimate", "--model", "deepseek-v3", "--gpu", "h200", "--tp", "8", "--quantization", "weights=fp8", "--decode-batch", "8",
            "--context", "1024", "--json", "--speculative", "method=mtp,num_speculative_tokens=2,acceptance_rate=0.8"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # One MoE layer: MLA 187,107,328 + router 7168 x 256 + 257 experts of 3 x 7168 x 2048 + two
    # norms = 11,507,286,016 parameters at 1 byte split 8 ways, but for MLA's query and KV
    # down-projections and their norms, which every GPU holds whole (vLLM replicates them); and the
    # projection 2 x 7168^2, a plain 16-bit linear layer, whole on every GPU.
    latents = 7168 * 1536 + 1536 + 7168 * 576 + 512
    assert out["memory"]["proposer_weights"] == 11_507_286_016 // 8 + latents * 7 // 8 + 2 * 7168 ** 2 * 2
    # Its KV: one layer's latent and rope key (576 x 2 bytes) per token of the 8 x 1025, on every GPU.
    assert out["memory"]["proposer_kv_cache"] == 8 * 1025 * 576 * 2
    # It pays, by less than the 2.44 tokens a step emits: the verify pass's 3 tokens per sequence
    # read more of the 256 experts than a decode's one.
    sp = out["speculative"]
    assert sp["tokens_per_step"] == pytest.approx(1 + 0.8 + 0.64)
    assert 1.3 < sp["speedup"] < 0.7 * sp["tokens_per_step"]


def test_deepseek_v3_mtp_speeds_decoding_as_its_report_measured():
    """DeepSeek-V3's report: its MTP module's second token is accepted 85-90% of the time, which
    gives 1.8x the tokens per second. Served on 8 H200s (FP8 weights, TP8) under a chat load, one
    MTP draft at 0.85 cuts TPOT by 1.5-1.85x (1.85 tokens a step is the ceiling). The verify
    chunks run as MLA decodes (absorbed form); costed as prefills expanding their whole context's
    latents every step, speculation slowed decoding down (TPOT about 1.3x higher)."""
    pool = {"name": "main", "gpu": "h200", "model": "deepseek-v3", "parallelism": {"tp": 8},
            "quantization": {"weights": "fp8", "activations": "fp8"},
            "scheduler": {"kind": "vllm-v1", "max_num_seqs": 256, "max_num_batched_tokens": 8192}}
    scenario = {"name": "dsv3", "seed": 1, "cluster": {"pools": [pool]},
                "workload": {"arrivals": {"kind": "poisson", "rate": 4.0}, "requests": 300,
                             "lengths": {"kind": "lognormal", "prompt_median": 1000, "prompt_sigma": 0.5, "prompt_max": 8000,
                                         "output_median": 300, "output_sigma": 0.5, "output_max": 2000}}}
    plain = fleetwise.simulate(scenario).summary["tpot_s"]["mean"]
    pool["speculative"] = {"method": "mtp", "num_speculative_tokens": 1, "acceptance_rate": 0.85}
    mtp = fleetwise.simulate(scenario).summary["tpot_s"]["mean"]
    assert 1.5 < plain / mtp < 1.85, (plain, mtp)


def test_a_moe_verify_pass_routes_every_draft_token_through_the_offloaded_experts():
    """Mixtral-8x7B with its experts in the GH200's DRAM (scenarios/moe-offload.yaml) and an EAGLE
    head (one Mixtral-shaped layer) proposing 2: the verify passes route 1 + k tokens per speculating decode through the
    experts. With nothing accepted every step emits 1 token, so the experts see exactly the
    prompts, the output tokens and every draft token; with drafts accepted, fewer steps fetch
    the offloaded experts and TPOT falls."""
    scenario = yaml.safe_load((SCENARIO.parent / "moe-offload.yaml").read_text())
    scenario["workload"].update(requests=40, arrivals={"kind": "poisson", "rate": 0.5},
                                lengths={"kind": "lognormal", "prompt_median": 1000, "prompt_sigma": 0.4, "prompt_max": 4000,
                                         "output_median": 200, "output_sigma": 0.3, "output_max": 800})

    def run(speculative):
        scenario["cluster"]["pools"][0]["speculative"] = speculative
        res = fleetwise.simulate(scenario)
        return res.instances.row(0, named=True), res.summary

    plain, plain_summary = run(None)
    assert plain["expert_tokens"] == plain["prefill_tokens"] + plain["decode_tokens"]
    zero, _ = run({"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": 0.0})
    assert zero["spec_draft_tokens"] > 0
    assert zero["expert_tokens"] == zero["prefill_tokens"] + zero["decode_tokens"] + zero["spec_draft_tokens"]
    assert zero["expert_activated"] > plain["expert_activated"]
    good, good_summary = run({"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": [0.8, 0.6]})
    assert good["decode_tokens"] == plain["decode_tokens"]
    assert good["expert_demand_bytes"] + good["expert_prefetch_bytes"] < plain["expert_demand_bytes"] + plain["expert_prefetch_bytes"]
    assert good_summary["tpot_s"]["mean"] < 0.6 * plain_summary["tpot_s"]["mean"]


@pytest.mark.parametrize("pipeline", ["async", "sync"])
def test_pipeline_stages_speculate_and_every_request_emits_its_output(pipeline):
    """Llama-3-70B on 2 stages of TP2 (the verify pass pipelined like any batch, the draft on the
    last stage): 8 requests decode faster with the draft than without, and emit their outputs."""
    def run(speculative):
        sc = _scenario(speculative, requests=8, output=300)
        sc["cluster"]["pools"][0]["parallelism"] = {"tp": 2, "pp": 2, "pipeline": pipeline}
        return fleetwise.simulate(sc)

    plain, spec = run(None), run(DRAFT)
    assert (spec.requests["status"] == "finished").all() and spec.instances["decode_tokens"][0] == 8 * 299
    assert spec.summary["speculative"]["num_accepted_tokens"] > 0
    assert spec.summary["tpot_s"]["mean"] < plain.summary["tpot_s"]["mean"] / 1.3


def _split(prefill_spec: dict | None, decode_spec: dict | None) -> dict:
    """Llama-3-70B prefill and decode pools (4 H100s each) and one 1000-token prompt."""
    sc = _scenario(None, prompt=1000, output=20)
    pool = sc["cluster"]["pools"][0]
    sc["cluster"]["pools"] = [{**pool, "name": "p", "role": "prefill"}, {**pool, "name": "d", "role": "decode"}]
    for p, spec in zip(sc["cluster"]["pools"], (prefill_spec, decode_spec)):
        if spec is not None:
            p["speculative"] = spec
    return sc


def test_a_split_cluster_prefills_the_draft_and_sends_its_kv_with_the_targets():
    # As vLLM's KV connector requires, both pools name the proposer: the prefill instance runs the
    # prompt through Llama-3-8B after the 70B (the TTFT grows by the 8B's prefill on 4 GPUs) and
    # sends the 8B's KV of the prompt with the 70B's: 1000 x 131,072 bytes more over the four GPUs'
    # NICs (4 x 50 GB/s) = 0.655 ms more transfer. The decode pool then speculates from it.
    from fleetwise.catalog import builtin_gpus, builtin_models

    plain = fleetwise.simulate(_split(None, None)).requests.row(0, named=True)
    spec = fleetwise.simulate(_split(DRAFT, DRAFT))
    r = spec.requests.row(0, named=True)
    draft_prefill = cost_model("llama-3-8b", "h100-sxm", tp=4).iteration_seconds(prefills=[(1000, 0, True)])
    assert (r["first_token_ns"] - plain["first_token_ns"]) * 1e-9 == pytest.approx(draft_prefill, abs=2e-9)
    draft = builtin_models()["llama-3-8b"]
    draft_kv = 2 * draft.num_layers * draft.num_kv_heads * draft.head_dim * draft.dtype_bytes
    assert draft_kv == 131_072
    extra = 1000 * draft_kv / (4 * builtin_gpus()["h100-sxm"].nic_bandwidth)
    assert (r["kv_transfer_ns"] - plain["kv_transfer_ns"]) * 1e-9 == pytest.approx(extra, abs=2e-9)
    assert r["status"] == "finished" and spec.summary["speculative"]["num_drafts"] > 0


@pytest.mark.parametrize("prefill_spec, decode_spec, message", [
    (DRAFT, None, "cluster.pools.1.speculative: decode pool 'd' has none but prefill pool 'p' has draft llama-3-8b: they must agree on the proposer"),
    (None, DRAFT, "cluster.pools.1.speculative: decode pool 'd' has draft llama-3-8b but prefill pool 'p' has none: they must agree on the proposer"),
    ({"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": 0.7}, DRAFT, "cluster.pools.1.speculative: decode pool 'd' has draft llama-3-8b but prefill pool 'p' has eagle"),
])
def test_a_split_cluster_whose_pools_name_different_proposers_is_refused(prefill_spec, decode_spec, message):
    # A decode pool speculating alone used to take the draft's KV of the prompt as arriving free
    # (the transfer moved the target's bytes only); a prefill pool's block was refused outright.
    # Checked by the schema, so a sweep refuses such a grid point before any point runs.
    with pytest.raises(ConfigError) as info:
        fleetwise.scenario_from_dict(_split(prefill_spec, decode_spec))
    assert message in str(info.value)


def test_a_split_clusters_proposers_may_differ_in_k_and_rates():
    # The prefill pool never decodes: only its proposer matters (its KV is what the decode pool
    # gets), not its k, rates or whether it would verify adaptively.
    other = {**DRAFT, "num_speculative_tokens": 2, "acceptance_rate": 0.5}
    a = fleetwise.simulate(_split(DRAFT, DRAFT)).requests
    b = fleetwise.simulate(_split(other, DRAFT)).requests
    assert a.equals(b)
    adaptive = {**DRAFT, "enable_adaptive_verification": True}
    c = fleetwise.simulate(_split(DRAFT, adaptive)).requests
    assert c.equals(fleetwise.simulate(_split(adaptive, adaptive)).requests)


@pytest.mark.parametrize("batch", [1, 16, 64, 256])
def test_docs_numbers_table_is_what_estimate_prints(batch):
    # docs/speculative-decoding.md's table must be what its command prints under the shipped `vllm`
    # profile (it had gone stale: 1.21x at batch 64 where estimate printed 1.24x).
    from conftest import docs_table_row
    from fleetwise.estimate import estimate_iteration

    cells = docs_table_row("speculative-decoding.md", str(batch), lambda c: c[-1].endswith("x"))
    r = estimate_iteration("llama-3-70b", "h100-sxm", tp=4, decode_batch=batch, context=1024,
                           speculative={"method": "draft", "draft_model": "llama-3-8b", "num_speculative_tokens": 4, "acceptance_rate": 0.8})
    s = r["speculative"]
    assert cells[1:] == [f"{r['seconds'] * 1e3:.2f}", f"{s['proposer_seconds'] * 1e3:.2f}", f"{s['verify_seconds'] * 1e3:.2f}",
                         f"{s['seconds_per_token'] * 1e3:.2f}", f"{s['speedup']:.2f}x"]


def test_per_position_rates_divide_by_all_drafts_as_vllm():
    # Outputs of 4 tokens with k = 4: the last steps propose fewer positions. vLLM's per-position
    # rate is accepted at position i over all drafts (it was over the drafts reaching position i).
    r = fleetwise.simulate(_scenario({**DRAFT, "acceptance_rate": 1.0}, requests=4, output=4))
    s, inst = r.summary["speculative"], r.instances
    accepted = [sum(col) for col in zip(*inst["spec_accepted_per_position"].to_list())]
    proposed = [sum(col) for col in zip(*inst["spec_draft_tokens_per_position"].to_list())]
    assert proposed[0] > proposed[-1]  # fewer drafts reach the last position
    assert s["per_position_acceptance_rate"] == [a / s["num_drafts"] for a in accepted]
    assert s["per_position_acceptance_rate"][-1] < 1.0 == s["per_position_acceptance_rate"][0]


EAGLE3 = {"method": "eagle3", "num_speculative_tokens": 3, "acceptance_rate": [0.8, 0.6, 0.45]}


def _eagle3_head_config(hidden: int = 8192) -> dict:
    """A published-style EAGLE-3 head for Llama-3-70B (LlamaForCausalLMEagle3: one Llama layer,
    a 32,000-token draft vocabulary)."""
    return {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": hidden, "num_attention_heads": 64,
            "num_key_value_heads": 8, "intermediate_size": 28672, "num_hidden_layers": 1, "vocab_size": 128256,
            "draft_vocab_size": 32000, "max_position_embeddings": 8192, "torch_dtype": "bfloat16", "tie_word_embeddings": False}


def test_an_eagle3_head_drafts_cheaper_than_an_eagle_head_at_the_same_acceptance():
    # Llama-3-70B, TP4, one request: EAGLE-3's own 32k-row LM head is a quarter of the 128k one
    # EAGLE shares with the model, which dominates a one-layer draft step at batch 1.
    eagle = {**EAGLE3, "method": "eagle"}
    e1, e3, plain = _tpot(eagle, 1), _tpot(EAGLE3, 1), _tpot(None, 1)
    assert e3 < e1 < plain
    est = lambda spec: json.loads(run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "1",
                                          "--context", "1024", "--speculative", spec, "--json").stdout)["speculative"]
    p1, p3 = est("method=eagle,num_speculative_tokens=3,acceptance_rate=0.8"), est("method=eagle3,num_speculative_tokens=3,acceptance_rate=0.8")
    assert p3["proposer_seconds"] < 0.75 * p1["proposer_seconds"] and p3["verify_seconds"] == p1["verify_seconds"]
    inst = fleetwise.simulate(_scenario(EAGLE3)).instances
    assert inst["kv_bytes_per_token"][0] == 81920 + 1024, "one more layer's KV"


def test_an_eagle3_head_from_its_config_json_is_the_default_head_of_its_shape(tmp_path, write_yaml):
    (tmp_path / "head.json").write_text(json.dumps(_eagle3_head_config()))
    sc = _scenario({**EAGLE3, "draft_model": "my-head"}, requests=4)
    sc["models"] = {"my-head": {"hf_config": str(tmp_path / "head.json")}}
    given, default = fleetwise.simulate(sc), fleetwise.simulate(_scenario(EAGLE3, requests=4))
    assert given.summary["tpot_s"]["mean"] == default.summary["tpot_s"]["mean"]
    assert given.instances["kv_bytes"][0] == default.instances["kv_bytes"][0]
    # A smaller draft vocabulary is cheaper still; a head of another width is refused with exit 2.
    sc["cluster"]["pools"][0]["speculative"]["draft_vocab_size"] = 8000
    assert fleetwise.simulate(sc).summary["tpot_s"]["mean"] < given.summary["tpot_s"]["mean"]
    (tmp_path / "wide.json").write_text(json.dumps(_eagle3_head_config(hidden=4096)))
    sc["models"] = {"my-head": {"hf_config": str(tmp_path / "wide.json")}}
    r = run_cli("run", str(write_yaml(sc)))
    assert r.returncode == 2 and "cluster.pools.0.speculative.draft_model: my-head's hidden size (4096) differs from llama-3-70b's (8192)" in r.stderr
    big = _scenario({**EAGLE3, "draft_vocab_size": 200000})
    with pytest.raises(ConfigError, match=r"cluster\.pools\.0\.speculative\.draft_vocab_size: 200000 exceeds llama-3-70b's vocabulary"):
        fleetwise.simulate(big)


def test_dynamic_speculation_follows_static_below_its_threshold_and_cuts_k_above_it():
    # vLLM's num_speculative_tokens_per_batch_size: k by the requests the previous step scheduled.
    dynamic = {**DRAFT, "num_speculative_tokens_per_batch_size": [[1, 64, 4], [65, 1024, 1]]}
    assert _tpot(dynamic, 8) == _tpot(DRAFT, 8), "batches of 8 keep k = 4: the same run"
    # 256 at once: four draft tokens make the verify pass compute-bound (a slowdown, 58.1 against
    # 48.2 ms); one recovers most of it (49.1 ms), not all: the 8B draft's first pass still runs
    # over each sequence's two verified tokens (vLLM's padded drafter batch).
    plain, static, one = _tpot(None, 256), _tpot(DRAFT, 256), _tpot(dynamic, 256)
    assert static > 1.1 * plain and plain < one < 1.05 * plain, (static, plain, one)
    s = fleetwise.simulate(_scenario(dynamic, 256, output=400)).summary["speculative"]
    # One draft token a step while more than 64 run (the last few steps, fewer, draft four).
    assert s["num_drafts"] <= s["num_draft_tokens"] < 1.05 * s["num_drafts"], s


def test_dynamic_speculation_at_k_zero_verifies_plainly_and_still_runs_the_proposer():
    # One request; after its prefill (a batch of 1) every step drafts nothing, but the draft
    # model still runs one step over it (vLLM's cache-sync forward): each decode step is the
    # target's plain decode plus that step, to the nanosecond.
    spec = {**DRAFT, "num_speculative_tokens_per_batch_size": [[1, 1024, 0]]}
    sc = _scenario(spec, 1, prompt=500, output=20)
    res = fleetwise.simulate(sc)
    assert res.summary["speculative"]["num_drafts"] == 0
    row = res.requests.row(0, named=True)
    pool = core_config(fleetwise.scenario_from_dict(sc))["pools"][0]
    cm = cost_model(pool["model"], pool["gpu"], calibration=pool["calibration"], tp=4)
    steps = [cm.speculative_step_ns(json.dumps(pool["speculative"]), speculating=[(500 + j, 0)]) for j in range(19)]
    assert row["completion_ns"] - row["first_token_ns"] == sum(steps)
    plain = [cm.iteration_ns(decodes=[501 + j]) for j in range(19)]
    draft_step = cost_model("llama-3-8b", "h100-sxm", tp=4).iteration_ns(decodes=[501])
    assert all(s > p for s, p in zip(steps, plain)) and steps[0] - plain[0] == pytest.approx(draft_step, rel=0.05)


def test_estimate_prices_the_k_a_batch_size_table_gives_that_batch():
    def run(batch: int, spec: str):
        return run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", str(batch), "--context", "1024", "--speculative", spec, "--json")

    fixed = "method=draft,draft_model=llama-3-8b,num_speculative_tokens=4,acceptance_rate=0.8"
    table = fixed + ",num_speculative_tokens_per_batch_size=1-64:4/65-1024:1/1025-4096:0"
    small, large = (json.loads(run(b, table).stdout)["speculative"] for b in (8, 256))
    assert small == {**json.loads(run(8, fixed).stdout)["speculative"], "num_speculative_tokens_per_batch_size": [[1, 64, 4], [65, 1024, 1], [1025, 4096, 0]]}
    assert small["k"] == 4 and large["k"] == 1 and large["tokens_per_step"] == pytest.approx(1.8)
    assert large["speedup"] > 1.0 > json.loads(run(256, fixed).stdout)["speculative"]["speedup"], "one draft token pays at 256, four do not"
    # k = 0: a plain decode plus the proposer's step, one token a step.
    none = json.loads(run(2048, table).stdout)["speculative"]
    assert none["k"] == 0 and none["tokens_per_step"] == 1.0 and none["proposer_seconds"] > 0 and none["speedup"] < 1.0
    # Past the last range (and between ranges) the k of the range before it, as vLLM's schedule.
    assert json.loads(run(512, fixed + ",num_speculative_tokens_per_batch_size=1-64:4/65-128:1").stdout)["speculative"]["k"] == 1
    assert json.loads(run(100, fixed + ",num_speculative_tokens_per_batch_size=65-128:1/1-16:2").stdout)["speculative"]["k"] == 1
    assert json.loads(run(40, fixed + ",num_speculative_tokens_per_batch_size=65-128:1/1-16:2").stdout)["speculative"]["k"] == 2
    bad = run(8, fixed + ",num_speculative_tokens_per_batch_size=1-64")
    assert bad.returncode == 2 and "START-END:K entries" in bad.stderr, bad.stderr


@pytest.mark.parametrize("batch", [1, 64])
def test_the_drafts_first_pass_runs_over_every_verified_token(batch):
    # vLLM's padded drafter batch: the draft model's first forward takes all the tokens the target
    # verifies (each sequence's last token and its 4 drafts: a 5-token chunk after its 1024 cached
    # tokens, one sample), then 3 decode steps. The draft runs without the engine's per-step CPU
    # overheads (the verify pass pays them). At batch 64 that first pass costs 13% more of the
    # proposer than one decode token per sequence would.
    pool = core_config(fleetwise.scenario_from_dict(_scenario(DRAFT, 1)))["pools"][0]
    calibration = {**pool["calibration"], "iteration_overhead": 0.0, "seq_overhead": None, "token_overhead": None}
    draft = cost_model("llama-3-8b", "h100-sxm", calibration=calibration, tp=4)
    first = draft.iteration_seconds(prefills=[(5, 1024, True)] * batch)
    later = sum(draft.iteration_seconds(decodes=[1024 + j] * batch) for j in (2, 3, 4))
    r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", str(batch), "--context", "1024",
                "--speculative", "method=draft,draft_model=llama-3-8b,num_speculative_tokens=4,acceptance_rate=0.8", "--json")
    proposer = json.loads(r.stdout)["speculative"]["proposer_seconds"]
    assert proposer == pytest.approx(first + later, rel=1e-12)
    one_token = draft.iteration_seconds(decodes=[1025] * batch) + later
    assert (proposer / one_token > 1.12) == (batch == 64), (proposer, one_token)
