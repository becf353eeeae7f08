"""Hypothesis strategies for whole scenarios (as dicts): small clusters and workloads with random,
sometimes hostile, values in every section.

A scenario is built from sane values and kept tiny (at most 3 instances per pool, at most 40
requests) so that one case simulates in milliseconds; then up to two of its numbers are replaced
by hostile values (``fuzz_values.inject_hostile``).
"""

from __future__ import annotations

from hypothesis import strategies as st

from fuzz_values import float_field, inject_hostile, int_field

CATALOGUE_GPUS = ["h100-sxm", "h200", "a100-80gb-sxm", "l40s", "a100-40gb-sxm", "mi300x", "b200"]
"""Catalogue GPUs a pool may use."""

CATALOGUE_MODELS = ["llama-3-8b", "llama-2-7b", "mistral-7b", "llama-2-13b", "qwen1.5-moe-a2.7b", "mixtral-8x7b", "deepseek-v2-lite"]
"""Catalogue models a pool may use (the smaller ones: the large ones mostly do not fit)."""

USER_GPU = "fuzz-gpu"
USER_MODEL = "fuzz-model"


def calibration(full: bool) -> st.SearchStrategy:
    """A calibration (``full``: every required field) or a pool's override of some fields."""
    fields = {
        "gemm_compute": float_field(0.05, 1.0),
        "attention_compute": float_field(0.05, 1.0),
        "memory": float_field(0.05, 1.0),
        "collective": float_field(0.05, 1.0),
        "iteration_overhead": float_field(0.0, 0.01),
    }
    optional = {
        "layer_overhead": float_field(0.0, 1e-4),
        "attention_memory": float_field(0.05, 1.0),
        "elementwise_memory": float_field(0.05, 1.0),
        "attention_cta": float_field(0.05, 4.0),
        "gemm_ridge_exponent": float_field(1.0, 8.0),
        "prefill_pad_tokens": int_field(1, 512),
    }
    if full:
        return st.fixed_dictionaries(fields, optional=optional)
    return st.fixed_dictionaries({}, optional={**fields, **optional})


def user_gpu() -> st.SearchStrategy:
    """A user-defined GPU with H100-like sane values."""
    return st.fixed_dictionaries(
        {
            "peak_flops": float_field(1e13, 2e15),
            "memory_bytes": float_field(8e9, 2e11),
            "memory_bandwidth": float_field(1e11, 8e12),
            "link_bandwidth": float_field(1e10, 1e12),
            "calibration": calibration(full=True),
        },
        optional={
            "nic_bandwidth": float_field(0.0, 1e11),
            "host_link_bandwidth": float_field(0.0, 1e11),
            "tdp_watts": float_field(0.0, 1000.0),
            "idle_watts": float_field(0.0, 200.0),
            "price_per_hour": float_field(0.0, 10.0),
            "sm_count": int_field(0, 200),
            "link_latency": float_field(0.0, 1e-5),
        },
    )


def user_model() -> st.SearchStrategy:
    """A small user-defined dense model (num_kv_heads is drawn freely: it may not divide num_heads)."""
    return st.fixed_dictionaries(
        {
            "num_layers": int_field(1, 8),
            "hidden_size": st.sampled_from([64, 256, 1024, 4096]),
            "num_heads": st.sampled_from([1, 4, 8, 32]),
            "num_kv_heads": int_field(1, 32),
            "head_dim": int_field(16, 128),
            "intermediate_size": int_field(64, 8192),
            "vocab_size": int_field(100, 50000),
            "max_position_embeddings": int_field(64, 8192),
        },
        optional={"dtype_bytes": int_field(1, 8)},
    )


def scheduler() -> st.SearchStrategy:
    """Any built-in scheduler with small, sometimes hostile, limits."""
    seqs = int_field(1, 64)
    tokens = int_field(16, 8192)
    return st.one_of(
        st.fixed_dictionaries({"kind": st.just("vllm")}, optional={"max_num_seqs": seqs, "max_num_batched_tokens": tokens, "preemption_mode": st.sampled_from(["recompute", "swap"]), "swap_space_gb": float_field(0.0, 16.0)}),
        st.fixed_dictionaries({"kind": st.just("vllm-v1")}, optional={"max_num_seqs": seqs, "max_num_batched_tokens": tokens, "max_prefill_chunk": int_field(1, 4096), "reserve_full_prompt": st.booleans()}),
        st.fixed_dictionaries({"kind": st.just("sarathi-serve")}, optional={"max_num_seqs": seqs, "token_budget": tokens}),
        st.fixed_dictionaries({"kind": st.just("sarathi")}, optional={"max_num_seqs": seqs, "chunk_size": tokens}),
        st.fixed_dictionaries({"kind": st.just("orca")}, optional={"max_num_seqs": seqs, "reserve": st.sampled_from(["max-len", "oracle"])}),
        st.fixed_dictionaries({"kind": st.just("batchllm")}, optional={"max_num_seqs": seqs, "token_budget": tokens}),
        st.fixed_dictionaries({"kind": st.just("policy"), "name": st.sampled_from(["fcfs", "decode-budget", "shortest-prompt-first"])}, optional={"max_num_seqs": seqs, "max_num_batched_tokens": tokens}),
    )


def router() -> st.SearchStrategy:
    """Any built-in router, native or a registered Python policy."""
    return st.one_of(
        st.sampled_from([{"kind": k} for k in ("round-robin", "least-outstanding-tokens", "random", "prefix-affinity")]),
        st.fixed_dictionaries({"kind": st.just("policy"), "name": st.sampled_from(["round-robin", "least-outstanding-tokens", "cache-aware", "disaggregated"])}),
    )


def offload() -> st.SearchStrategy:
    """Weight offloading to DRAM or flash."""
    return st.fixed_dictionaries(
        {"tier": st.sampled_from(["dram", "flash"])},
        optional={
            "layer_fraction": float_field(0.0, 1.0),
            "ffn_load_fraction": float_field(0.0, 1.0),
            "dram_cache_fraction": float_field(0.0, 1.0),
            "overlap": st.booleans(),
            "queue_depth": int_field(1, 128),
            "read_chunk_kb": float_field(1.0, 4096.0),
            "capacity_gb": float_field(1.0, 4000.0),
        },
    )


def experts() -> st.SearchStrategy:
    """Mixture-of-experts settings (placement, routing, cache, prefetch, grouping)."""
    return st.fixed_dictionaries(
        {},
        optional={
            "placement": st.sampled_from(["hbm", "dram", "flash"]),
            "routing": st.fixed_dictionaries({"kind": st.sampled_from(["uniform", "zipf"])}, optional={"zipf_exponent": float_field(0.0, 4.0), "locality": float_field(0.0, 1.0), "max_sampled_tokens": int_field(1, 512)}),
            "cache": st.fixed_dictionaries({}, optional={"policy": st.sampled_from(["lru", "lfu", "static"]), "experts_per_layer": int_field(0, 64)}),
            "prefetch": st.fixed_dictionaries({"accuracy": float_field(0.0, 1.0)}, optional={"lead_layers": int_field(1, 4)}),
            "grouping": st.fixed_dictionaries({"batch": int_field(1, 64)}, optional={"affinity": st.booleans()}),
            "staging_experts": int_field(0, 64),
            "queue_depth": int_field(1, 128),
            "read_chunk_kb": float_field(1.0, 4096.0),
            "capacity_gb": float_field(1.0, 1000.0),
        },
    )


def speculative() -> st.SearchStrategy:
    """Speculative decoding: a catalogue draft (often of another tokenizer, or larger than the
    target) or an EAGLE / MTP head, a constant or per-position acceptance rate."""
    rate = float_field(0.0, 1.0)
    return st.integers(1, 6).flatmap(lambda k: st.one_of(
        st.fixed_dictionaries({"method": st.just("draft"), "draft_model": st.sampled_from(CATALOGUE_MODELS), "num_speculative_tokens": st.just(k), "acceptance_rate": rate}),
        st.fixed_dictionaries({"method": st.sampled_from(["eagle", "mtp"]), "num_speculative_tokens": st.just(k),
                               "acceptance_rate": st.one_of(rate, st.lists(rate, min_size=k, max_size=k))}),
    ))


def pool(name: str, role: str) -> st.SearchStrategy:
    """One pool of at most 3 instances."""
    return st.fixed_dictionaries(
        {
            "name": st.just(name),
            "count": int_field(1, 3),
            "gpu": st.sampled_from(CATALOGUE_GPUS + [USER_GPU, USER_GPU]),
            "model": st.sampled_from(CATALOGUE_MODELS + [USER_MODEL, USER_MODEL, "qwen3-30b-a3b"]),
            "role": st.just(role),
        },
        optional={
            "parallelism": st.fixed_dictionaries({}, optional={"tp": int_field(1, 8), "pp": int_field(1, 4)}),
            "scheduler": scheduler(),
            "memory": st.fixed_dictionaries({}, optional={"gpu_memory_utilization": float_field(0.2, 1.0), "block_size": int_field(1, 64)}),
            "calibration": calibration(full=False),
            "power_cap_watts": float_field(100.0, 1000.0),
            "prefix_caching": st.booleans(),
            **({} if role == "decode" else {"kv_transfer": st.sampled_from(["serialized", "layerwise"]), "kv_link": st.sampled_from(["nic", "nvlink"])}),
            "pim": st.sampled_from(["attacc-hbm3-pim", "logic-pim"]),
            "offload": offload(),
            "experts": experts(),
            "speculative": speculative(),
        },
    )


def _same_proposer(split: tuple[dict, dict]) -> list[dict]:
    """A prefill and a decode pool speculating with the prefill pool's proposer (or neither), as a
    split cluster must (a pair naming different proposers is refused before it runs)."""
    prefill, decode = dict(split[0]), dict(split[1])
    decode.pop("speculative", None)
    if "speculative" in prefill:
        decode["speculative"] = prefill["speculative"]
    return [prefill, decode]


def pools() -> st.SearchStrategy:
    """One mixed pool, two mixed pools, or a prefill and a decode pool (disaggregation)."""
    return st.one_of(
        st.tuples(pool("main", "mixed")).map(list),
        st.tuples(pool("a", "mixed"), pool("b", "mixed")).map(list),
        st.tuples(pool("prefill", "prefill"), pool("decode", "decode")).map(_same_proposer),
    )


def arrivals() -> st.SearchStrategy:
    """A generated arrival process."""
    rate = float_field(0.1, 500.0)
    return st.one_of(
        st.fixed_dictionaries({"kind": st.just("poisson"), "rate": rate}),
        st.fixed_dictionaries({"kind": st.just("gamma"), "rate": rate, "cv": float_field(0.1, 8.0)}),
        st.fixed_dictionaries({"kind": st.just("onoff"), "rate": rate, "on_s": float_field(0.01, 10.0), "off_s": float_field(0.0, 10.0)}),
        st.fixed_dictionaries({"kind": st.just("diurnal"), "mean_rate": rate, "amplitude": float_field(0.0, 1.0), "period_s": float_field(0.1, 1000.0)}, optional={"phase_s": float_field(-100.0, 100.0)}),
        st.fixed_dictionaries({"kind": st.just("ramp"), "start_rate": float_field(0.0, 100.0), "end_rate": rate, "duration_s": float_field(0.1, 100.0)}),
    )


def lengths() -> st.SearchStrategy:
    """A generated length distribution (prompts up to a few thousand tokens when sane)."""
    tok = int_field(1, 4096)
    out = int_field(1, 256)
    median = float_field(1.0, 4000.0)
    sigma = float_field(0.0, 2.0)
    return st.one_of(
        st.fixed_dictionaries({"kind": st.just("constant"), "prompt": tok, "output": out}),
        st.tuples(tok, st.integers(0, 2000), out, st.integers(0, 100)).map(lambda t: {"kind": "uniform", "prompt_min": t[0], "prompt_max": t[0] + t[1], "output_min": t[2], "output_max": t[2] + t[3]}),
        st.fixed_dictionaries({"kind": st.just("lognormal"), "prompt_median": median, "prompt_sigma": sigma, "output_median": float_field(1.0, 200.0), "output_sigma": sigma}, optional={"prompt_max": tok, "output_max": out}),
    )


def workload() -> st.SearchStrategy:
    """A generated workload of at most 40 requests, with optional prefixes and sessions."""
    return st.fixed_dictionaries(
        {"arrivals": arrivals(), "lengths": lengths(), "requests": int_field(1, 40)},
        optional={
            "prefixes": st.fixed_dictionaries({"groups": int_field(1, 4), "prefix_tokens": int_field(1, 2048), "fraction": float_field(0.0, 1.0), "block_tokens": st.sampled_from([16, 16, 16, 1, 7, 64])}),
            "sessions": st.fixed_dictionaries({"turns_mean": float_field(1.0, 4.0), "think_time_s": float_field(0.0, 10.0), "block_tokens": st.just(16)}),
        },
    )


def slo() -> st.SearchStrategy:
    """SLO targets, some hostile."""
    return st.fixed_dictionaries({}, optional={"ttft": float_field(0.01, 10.0), "tpot": float_field(0.001, 1.0), "e2e": float_field(0.1, 100.0)})


@st.composite
def scenarios(draw) -> dict:
    """A whole scenario dict, with user-defined GPU and model entries that pools may pick."""
    sc = {
        "name": "fuzz",
        "seed": draw(st.integers(0, 2**32)),
        "gpus": {USER_GPU: draw(user_gpu())},
        "models": {USER_MODEL: draw(user_model())},
        "cluster": {"pools": draw(pools()), "router": draw(router())},
        "workload": draw(workload()),
    }
    if draw(st.booleans()):
        sc["slo"] = draw(slo())
    return draw(inject_hostile(sc))


__all__ = ["scenarios"]
