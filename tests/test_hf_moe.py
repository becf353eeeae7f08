"""A fleetwise expert cache policy driving a tiny random Mixtral in Hugging Face transformers through
its pluggable experts implementation: outputs unchanged, hits equal to the simulator's caches on the
recorded routing, and a full simulation replaying that routing reports the same hit rate."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Hugging Face MoE integration needs it")
transformers = pytest.importorskip("transformers", reason="transformers is not installed: the Hugging Face MoE integration needs it")
try:
    from transformers.integrations.moe import ExpertsInterface  # noqa: F401
    from transformers import DynamicCache, MixtralConfig, MixtralForCausalLM
except ImportError as e:  # transformers < 5 has no pluggable experts
    pytest.skip(f"transformers {transformers.__version__} has no pluggable experts implementation (ExpertsInterface): {e}", allow_module_level=True)

import fleetwise  # noqa: E402
from fleetwise.integrations.hf_moe import IMPLEMENTATION, ExpertOffload  # noqa: E402
from fleetwise.moe import cache_hits, load_routing_trace  # noqa: E402
from fleetwise.policy import make_expert_cache  # noqa: E402
from fleetwise.policy.expert_cache import replay  # noqa: E402

LAYERS, EXPERTS, TOP_K = 4, 8, 2
PROMPTS, PROMPT_LEN, NEW_TOKENS = 4, 8, 8
CASES = [("lru", 2), ("lru", 4), ("lfu", 2), ("lfu", 3), ("static", 2), ("static", 4)]


def _config() -> MixtralConfig:
    return MixtralConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, max_position_embeddings=256)


def _greedy(model, prompt, offload=None):
    """Greedy decoding, batch 1: one prefill forward, then NEW_TOKENS - 1 decode forwards (the last
    token is sampled, never fed back, as in the simulator). Returns tokens and last-position logits."""
    if offload is not None:
        offload.new_request()
    cache = DynamicCache(config=model.config)
    x, tokens, logits = prompt, [], []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            out = model(x, past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
            x = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(x))
    return tokens, torch.cat(logits)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A tiny model: intra-op threads only contend (30x slower on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    stock = MixtralForCausalLM(_config()).eval()  # default experts implementation (grouped_mm)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (1, PROMPT_LEN), generator=gen) for _ in range(PROMPTS)]
    expected = [_greedy(stock, p) for p in prompts]
    return stock, prompts, expected


def _run(setup, policy: str, capacity: int, prefetch: bool = False, popularity=None):
    stock, prompts, _ = setup
    model = MixtralForCausalLM._from_config(_config(), experts_implementation=IMPLEMENTATION).eval()
    model.load_state_dict(stock.state_dict())
    offload = ExpertOffload(model, make_expert_cache(policy, LAYERS, EXPERTS, capacity, popularity), capacity, prefetch=prefetch)
    outputs = [_greedy(model, p, offload) for p in prompts]
    return model, offload, outputs


@pytest.fixture(scope="module")
def popularity(setup):
    """Per layer, how often each expert is chosen over the whole run (what a static cache keeps)."""
    _, offload, _ = _run(setup, "lru", 2)
    trace = offload.routing_trace()
    return trace, [np.bincount(trace.experts[:, layer, :].ravel(), minlength=EXPERTS).astype(float).tolist() for layer in range(LAYERS)]


@pytest.fixture(scope="module")
def runs(setup, popularity):
    return {(p, c): _run(setup, p, c, popularity=popularity[1] if p == "static" else None) for p, c in CASES}


def _scenario(path, policy: str, capacity: int) -> dict:
    return {
        "name": "hf-moe", "seed": 1,
        "models": {"tiny-mixtral": {"num_layers": LAYERS, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
                                    "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 256, "dtype_bytes": 4,
                                    "num_experts": EXPERTS, "experts_per_token": TOP_K, "moe_intermediate_size": 128}},
        "cluster": {"pools": [{"gpu": "h200", "model": "tiny-mixtral", "scheduler": {"kind": "vllm", "max_num_seqs": 1},
                               "experts": {"placement": "dram", "routing": {"kind": "trace", "trace": str(path)},
                                           "cache": {"policy": policy, "experts_per_layer": capacity}}}]},
        # One request at a time, in trace order: request i replays the i-th recorded request.
        "workload": {"arrivals": {"kind": "poisson", "rate": 0.01}, "lengths": {"kind": "constant", "prompt": PROMPT_LEN, "output": NEW_TOKENS},
                     "requests": PROMPTS},
    }


@pytest.mark.parametrize("case", CASES, ids=[f"{p}-{c}" for p, c in CASES])
def test_outputs_equal_the_stock_implementation(setup, runs, case):
    _, _, expected = setup
    model, offload, outputs = runs[case]
    assert model.config._experts_implementation == IMPLEMENTATION
    # The weights really left the model: the layer ran from the offload's cache slots and staging.
    assert model.model.layers[0].mlp.experts.gate_up_proj.numel() == 0
    for (tokens, logits), (want_tokens, want_logits) in zip(outputs, expected):
        assert tokens == want_tokens
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[f"{p}-{c}" for p, c in CASES])
def test_measured_hits_equal_the_simulator_caches(runs, popularity, case):
    policy, capacity = case
    _, offload, _ = runs[case]
    pop = popularity[1]
    for layer, stats in enumerate(offload.stats):
        acc = offload.accesses[layer]
        assert stats.lookups == len(acc) == stats.hits + stats.misses
        p = pop[layer] if policy == "static" else None
        # The simulator's own Rust cache on the recorded accesses of this layer ...
        assert stats.hits == cache_hits(policy, EXPERTS, capacity, acc, popularity=p)
        # ... and a fresh Python policy replayed on them.
        assert stats.hits == replay(make_expert_cache(policy, LAYERS, EXPERTS, capacity, pop), layer, acc)
        assert stats.demand_bytes == stats.misses * offload.expert_bytes
    # Routing does not depend on the policy (outputs are unchanged), so every run recorded the same trace.
    trace = offload.routing_trace()
    assert np.array_equal(trace.experts, popularity[0].experts) and np.array_equal(trace.offsets, popularity[0].offsets)


@pytest.mark.parametrize("case", CASES, ids=[f"{p}-{c}" for p, c in CASES])
def test_simulation_replaying_the_recorded_routing_reports_the_same_hit_rate(tmp_path, runs, case):
    policy, capacity = case
    _, offload, _ = runs[case]
    path = tmp_path / "routing.jsonl"
    offload.write_routing_trace(path, "tiny-mixtral")
    r = fleetwise.simulate(_scenario(path, policy, capacity))
    inst = r.instances.row(0, named=True)
    t = offload.total()
    assert inst["expert_iterations"] == PROMPTS * NEW_TOKENS  # one prefill and NEW_TOKENS - 1 decodes per request
    assert inst["expert_tokens"] == PROMPTS * (PROMPT_LEN + NEW_TOKENS - 1)
    assert (inst["expert_lookups"], inst["expert_hits"], inst["expert_misses"]) == (t.lookups, t.hits, t.misses)
    assert inst["expert_demand_bytes"] == t.demand_bytes  # the simulator's expert size is the model's
    assert inst["expert_hit_rate"] == offload.summary()["hit_rate"] == r.summary["experts"]["hit_rate"]


def test_recorded_routing_is_the_routers_top_k(setup, popularity, tmp_path):
    stock, prompts, _ = setup
    trace = popularity[0]
    assert trace.num_requests == PROMPTS and trace.experts.shape == (PROMPTS * (PROMPT_LEN + NEW_TOKENS - 1), LAYERS, TOP_K)
    # The prompt's tokens: the stock model's router logits give the same top-k, in router order.
    with torch.no_grad():
        out = stock(prompts[0], output_router_logits=True)
    for layer in range(LAYERS):
        top = out.router_logits[layer].topk(TOP_K, dim=-1).indices.numpy()
        assert np.array_equal(trace.experts[:PROMPT_LEN, layer], top)
    path = tmp_path / "r.jsonl"
    from fleetwise.moe import write_routing_trace
    write_routing_trace(path, trace)
    back = load_routing_trace(path)
    assert np.array_equal(back.experts, trace.experts) and np.array_equal(back.offsets, trace.offsets)


def test_pregated_prefetch_turns_misses_into_prefetch_hits(setup, runs):
    _, _, expected = setup
    _, base, _ = runs[("lru", 2)]
    model, offload, outputs = _run(setup, "lru", 2, prefetch=True)
    assert [o[0] for o in outputs] == [e[0] for e in expected]
    for s, b in zip(offload.stats, base.stats):
        # The policy sees the same calls; prefetching only serves some of its misses early.
        assert (s.lookups, s.hits) == (b.lookups, b.hits)
        assert s.prefetch_hits + s.misses == b.misses
        assert s.prefetch_bytes >= s.prefetch_hits * offload.expert_bytes
    assert offload.stats[0].prefetch_hits == 0 and offload.stats[0].prefetch_bytes == 0  # nothing predicts layer 0
    t = offload.total()
    assert t.prefetch_hits > 0
    assert t.wasted_prefetch_bytes == t.prefetch_bytes - t.prefetch_hits * offload.expert_bytes
    s = offload.summary()
    assert s["hit_rate"] == pytest.approx(s["cache_hit_rate"] + s["prefetch_hit_rate"])
    # Detaching restores the model's weights and its previous implementation.
    offload.detach()
    assert model.config._experts_implementation == IMPLEMENTATION  # it was created with it
    model.set_experts_implementation("eager")
    torch.testing.assert_close(_greedy(model, setup[1][0])[1], expected[0][1], rtol=1e-5, atol=1e-5)


DOC_POLICIES = {"LRU": "lru", "LFU": "lfu", "static": "static"}


@pytest.mark.parametrize("label", list(DOC_POLICIES))
@pytest.mark.parametrize("capacity", [2, 3, 4])
def test_docs_hit_table_is_what_the_model_measures(setup, popularity, label, capacity):
    # docs/hf-moe.md's first table: hits / lookups, hit rate, hits per layer, and the token-order
    # replay of every token's top-k (cache_hits over the 480 token-expert pairs, for contrast).
    from conftest import docs_table_row

    policy = DOC_POLICIES[label]
    cells = docs_table_row("hf-moe.md", label, lambda c: len(c) == 6 and c[1] == str(capacity))
    trace, counts = popularity
    _, offload, _ = _run(setup, policy, capacity, popularity=counts if policy == "static" else None)
    hits = [offload.stats[layer].hits for layer in range(LAYERS)]
    lookups = sum(offload.stats[layer].lookups for layer in range(LAYERS))
    token_hits = sum(cache_hits(policy, EXPERTS, capacity, trace.experts[:, layer, :].ravel().tolist(),
                                popularity=counts[layer] if policy == "static" else None) for layer in range(LAYERS))
    pairs = trace.experts.size
    assert pairs == 480
    assert cells[2:] == [f"{sum(hits)} / {lookups}", f"{100 * sum(hits) / lookups:.1f}%", ", ".join(map(str, hits)),
                         f"{100 * token_hits / pairs:.1f}%"]


@pytest.mark.parametrize("label,policy,capacity", [("LRU 2", "lru", 2), ("LRU 3", "lru", 3), ("LFU 2", "lfu", 2), ("LFU 3", "lfu", 3)])
def test_docs_prefetch_table_is_what_the_model_measures(setup, label, policy, capacity):
    # docs/hf-moe.md's Pre-gated table: hit rates, misses, and prefetched and wasted experts.
    from conftest import docs_table_row

    cells = docs_table_row("hf-moe.md", label)
    _, offload, _ = _run(setup, policy, capacity, prefetch=True)
    s, stats = offload.summary(), [offload.stats[layer] for layer in range(LAYERS)]
    assert cells[1:] == [f"{100 * s[k]:.1f}%" for k in ("hit_rate", "cache_hit_rate", "prefetch_hit_rate")] + [
        str(sum(x.misses for x in stats)), str(sum(x.prefetch_bytes for x in stats) // offload.expert_bytes),
        str(sum(x.wasted_prefetch_bytes for x in stats) // offload.expert_bytes)]
