"""The fuzz corpus of issue 12, kept as regression cases: each input that once gave a wrong result
with exit 0, a hang, a memory blow-up or a traceback. Every case runs in the sandboxed worker
(address-space limit, timeout) and must end in a clean fleetwise error naming the field or line,
or a result whose invariants all hold. (CLI-only cases are in ``test_fuzz_corpus_cli.py``.)"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from pathlib import Path

import pytest

from fuzz_worker import REPO, assert_clean
from fuzz_fixtures import worker  # noqa: F401  (the module's sandboxed worker fixture)

CORPUS = Path(__file__).resolve().parent / "corpus"
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
_SCRATCH = Path(tempfile.mkdtemp(prefix="fleetwise-fuzz-corpus-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


def assert_clean_naming(outcome: dict, case: object, *words: str) -> None:
    """``assert_clean``, and an error's message must name one of ``words`` (the field or the line)."""
    assert_clean(outcome, case)
    if outcome["outcome"] == "error":
        msg = outcome["message"].lower()
        assert any(w.lower() in msg for w in words), f"{case}: the error does not name {words}: {outcome['type']}: {outcome['message'][:500]}"


def quickstart(*overrides: str, requests: int = 50) -> dict:
    """A worker request loading the quickstart scenario, cut to ``requests``, with ``overrides``."""
    return {"op": "load", "path": str(QUICKSTART), "overrides": [f"workload.requests={requests}", *overrides]}


def tiny(**sections) -> dict:
    """A tiny scenario dict (one H100 running Llama-3-8B, 20 requests); ``sections`` replace top-level keys."""
    sc = {
        "name": "corpus",
        "seed": 1,
        "cluster": {"pools": [{"name": "main", "count": 1, "gpu": "h100-sxm", "model": "llama-3-8b"}]},
        "workload": {"arrivals": {"kind": "poisson", "rate": 10.0}, "lengths": {"kind": "constant", "prompt": 100, "output": 10}, "requests": 20},
    }
    sc.update(sections)
    return sc


def user_gpu(**fields) -> dict:
    """An H100-like user-defined GPU named ``fuzz-gpu`` with ``fields`` replaced."""
    gpu = {"peak_flops": 989e12, "memory_bytes": 80e9, "memory_bandwidth": 3.35e12, "link_bandwidth": 450e9, "calibration": {"gemm_compute": 0.7, "attention_compute": 0.5, "memory": 0.8, "collective": 0.7, "iteration_overhead": 0.002}}
    gpu.update(fields)
    return {"fuzz-gpu": gpu}


def on_user_gpu(**fields) -> dict:
    """A tiny scenario on ``user_gpu(**fields)``."""
    return tiny(gpus=user_gpu(**fields), cluster={"pools": [{"name": "main", "count": 1, "gpu": "fuzz-gpu", "model": "llama-3-8b"}]})


def _offloaded(sc: dict) -> dict:
    """``sc`` with its first pool's weights offloaded to host DRAM."""
    sc["cluster"]["pools"][0]["offload"] = {"tier": "dram"}
    return sc


def write(name: str, data: bytes) -> str:
    """Writes a generated corpus file into the scratch directory."""
    path = _SCRATCH / name
    path.write_bytes(data)
    return str(path)


# --- wrong results with exit 0: the clock -------------------------------------------------------

CLOCK_CASES = {
    "iteration_overhead 1e9": (quickstart("cluster.pools.0.calibration={iteration_overhead: 1e9}"), ("iteration_overhead",)),
    "power_cap_watts 1e-9": (quickstart("cluster.pools.0.power_cap_watts=1e-9"), ("power_cap_watts",)),
    "gemm_compute 1e-300": (quickstart("cluster.pools.0.calibration={gemm_compute: 1e-300}"), ("gemm_compute",)),
    "user GPU peak_flops 1e-300": ({"op": "simulate", "scenario": on_user_gpu(peak_flops=1e-300)}, ("peak_flops",)),
    "user GPU tdp_watts 1e-300 below idle_watts": ({"op": "simulate", "scenario": on_user_gpu(tdp_watts=1e-300, idle_watts=96.8)}, ("tdp_watts", "idle_watts")),
    "DRAM offload over a 1.5 B/s host link": ({"op": "simulate", "scenario": _offloaded(on_user_gpu(host_link_bandwidth=1.5))}, ("host_link_bandwidth",)),
}


@pytest.mark.parametrize("case", sorted(CLOCK_CASES))
def test_values_overflowing_the_clock_are_refused_or_correct(worker, case):
    """Absurdly long iterations are refused naming the field, or simulated without overflow."""
    request, words = CLOCK_CASES[case]
    assert_clean_naming(worker.call(request, timeout=30), case, *words)


DISAGGREGATED = {
    "cluster": {"pools": [{"name": "prefill", "count": 2, "gpu": "h100-sxm", "model": "llama-3-8b", "role": "prefill"}, {"name": "decode", "count": 1, "gpu": "h100-sxm", "model": "llama-3-8b", "role": "decode"}]},
}


@pytest.mark.parametrize("lengths", [{"kind": "constant", "prompt": 1, "output": 1}, {"kind": "constant", "prompt": 1, "output": 2}, {"kind": "uniform", "prompt_min": 1, "prompt_max": 4000, "output_min": 1, "output_max": 50}])
@pytest.mark.parametrize("kv_transfer", ["serialized", "layerwise"])
def test_disaggregated_latencies_are_never_negative(worker, lengths, kv_transfer):
    """Prefill/decode disaggregation: every finished request has arrival <= first token <= completion."""
    sc = tiny(**DISAGGREGATED)
    sc["cluster"]["pools"][0]["kv_transfer"] = kv_transfer
    sc["workload"] = {"arrivals": {"kind": "poisson", "rate": 200.0}, "lengths": lengths, "requests": 50}
    assert_clean(worker.call({"op": "simulate", "scenario": sc}, timeout=30), (lengths, kv_transfer))


# --- traces: no silent drops, no overflow --------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, name, rows",
    [("mooncake", "mooncake-ns.jsonl", 40), ("burstgpt", "burstgpt-negative-timestamp.csv", 30)],
)
def test_trace_timestamps_beyond_int64_ns_are_replayed_whole_or_refused(worker, fmt, name, rows):
    """A Mooncake trace in ns (read as ms) and a BurstGPT row at -1e12 s: every row replayed, or an
    error naming the line — never rows dropped silently."""
    path = str(CORPUS / name)
    read = worker.call({"op": "read", "format": fmt, "path": path, "expect_rows": rows}, timeout=20)
    assert_clean_naming(read, f"read {name}", "line")
    sc = tiny(workload={"arrivals": {"kind": "trace", "format": fmt, "path": path}})
    assert_clean_naming(worker.call({"op": "simulate", "scenario": sc, "expect_requests": rows}, timeout=30), name, "line")


@pytest.mark.parametrize("use", ["read", "file", "fit"])
def test_vllm_bench_length_beyond_int64_is_a_trace_error(worker, use):
    """``input_lens: [2**63]`` in a vLLM bench result: a TraceError naming the entry (it wrapped to
    -2**63, then failed with ValueError in the workload or in the fit)."""
    path = write("int64-overflow.vllm-bench.json", b'{"input_lens": [9223372036854775808], "output_lens": [84]}')
    if use == "read":
        request = {"op": "read", "format": "vllm-bench", "path": path}
    else:
        request = {"op": "simulate", "scenario": tiny(workload={"arrivals": {"kind": "poisson", "rate": 10.0}, "lengths": {"kind": use, "format": "vllm-bench", "path": path}, "requests": 5})}
    assert_clean_naming(worker.call(request, timeout=20), f"vllm-bench 2**63 ({use})", "input_lens")


@pytest.mark.parametrize("fmt", ["azure", "mooncake", "burstgpt", "csv", "sharegpt", "vllm-bench", "parquet"])
def test_all_nul_file_is_a_trace_error(worker, fmt):
    """A file of NUL bytes (the issue's 2 GB one, here 64 KiB) is refused, not a panic or a hang."""
    outcome = worker.call({"op": "read", "format": fmt, "path": write(f"nul.{fmt}", b"\x00" * 65536)}, timeout=20)
    assert_clean(outcome, f"all-NUL {fmt}")
    assert outcome["outcome"] == "error", f"all-NUL {fmt}: accepted ({outcome})"


@pytest.mark.parametrize("fmt", ["azure", "mooncake", "burstgpt", "csv", "sharegpt", "vllm-bench"])
def test_non_utf8_trace_is_a_trace_error(worker, fmt):
    """Latin-1 bytes in a text trace are refused with a TraceError."""
    body = {"azure": b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,\xe9,5\n", "csv": b"num_prefill_tokens,num_decode_tokens\n\xff\xfe,5\n", "burstgpt": b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n0,Chat\xe9,5,5,10,x\n"}.get(fmt, b'{"x": "\xe9\xff"}\n')
    assert_clean(worker.call({"op": "read", "format": fmt, "path": write(f"latin1.{fmt}", body)}, timeout=20), f"non-UTF-8 {fmt}")


@pytest.mark.parametrize("fmt", ["mooncake", "sharegpt", "vllm-bench"])
def test_deeply_nested_json_is_a_trace_error(worker, fmt):
    """3,000 nested JSON arrays in a trace are refused (no RecursionError)."""
    deep = b"[" * 3000 + b"]" * 3000
    body = {"mooncake": b'{"timestamp": 0, "input_length": 5, "output_length": 5, "hash_ids": ' + deep + b"}\n", "sharegpt": deep, "vllm-bench": b'{"input_lens": ' + deep + b', "output_lens": [1]}'}[fmt]
    assert_clean(worker.call({"op": "read", "format": fmt, "path": write(f"deep.{fmt}", body)}, timeout=20), f"deep {fmt}")


def test_directory_as_trace_says_it_is_a_directory(worker):
    """A directory given as a trace path is named as a directory, not 'not found'."""
    sc = tiny(workload={"arrivals": {"kind": "trace", "format": "azure", "path": str(_SCRATCH)}})
    outcome = worker.call({"op": "simulate", "scenario": sc}, timeout=20)
    assert outcome["outcome"] == "error", outcome
    assert "director" in outcome["message"].lower(), outcome["message"]


# --- scenario files: YAML hazards ----------------------------------------------------------------


def test_yaml_alias_bomb_is_refused_quickly(worker):
    """An alias bomb in a typed field is refused within the timeout (the error must not repr it)."""
    assert_clean_naming(worker.call({"op": "load", "path": str(CORPUS / "alias-bomb.yaml")}, timeout=10), "alias bomb", "seed", "alias")


def test_deeply_nested_scenario_is_refused(worker):
    """3,000 nested lists in a scenario field are refused (no RecursionError)."""
    text = (CORPUS / "alias-bomb.yaml").read_text().replace("name: alias-bomb", "name: " + "[" * 3000 + "]" * 3000)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("seed:"))
    assert_clean(worker.call({"op": "load", "path": write("deep.yaml", text.encode())}, timeout=20), "3000-level nesting")


def test_non_utf8_scenario_is_a_config_error(worker):
    """A scenario file that is not UTF-8 is refused with a ConfigError naming the file."""
    outcome = worker.call({"op": "load", "path": str(CORPUS / "non-utf8.yaml")}, timeout=20)
    assert_clean_naming(outcome, "non-UTF-8 scenario", "non-utf8.yaml")


# --- values that must be refused -----------------------------------------------------------------

REFUSED = {
    "swap_space_gb .inf": (quickstart("cluster.pools.0.scheduler={kind: vllm, preemption_mode: swap, swap_space_gb: .inf}"), ("swap_space_gb",)),
    "user GPU memory_bytes .inf": ({"op": "simulate", "scenario": on_user_gpu(memory_bytes=math.inf)}, ("memory_bytes",)),
    "requests 1e29": (quickstart("workload.requests=1e29"), ("requests",)),
    "requests 2**64": (quickstart("workload.requests=18446744073709551616"), ("requests",)),
    "lognormal prompt_median 1e300": (quickstart("workload.lengths={kind: lognormal, prompt_median: 1e300, prompt_sigma: 1, output_median: 50, output_sigma: 1}"), ("prompt_median", "median")),
    "seed 2**64": (quickstart("seed=18446744073709551616"), ("seed",)),
    "seed 10**30": (quickstart("seed=1000000000000000000000000000000"), ("seed",)),
    "num_kv_heads 7 of 32 heads": ({"op": "simulate", "scenario": tiny(models={"odd": {"num_layers": 2, "hidden_size": 4096, "num_heads": 32, "num_kv_heads": 7, "head_dim": 128, "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192}}, cluster={"pools": [{"name": "main", "gpu": "h100-sxm", "model": "odd"}]})}, ("num_kv_heads",)),
    "prefixes.groups 2**64": (quickstart("workload.prefixes={groups: 18446744073709551616, prefix_tokens: 64, fraction: 0.5}"), ("groups",)),
    "slo.ttft .inf": (quickstart("slo.ttft=.inf"), ("ttft",)),
    "pool count 2**32": (quickstart("cluster.pools.0.count=4294967296"), ("count",)),
    "pool count 2**64": (quickstart("cluster.pools.0.count=18446744073709551616"), ("count",)),
    "lognormal output_sigma 1e19 with sessions": (quickstart("workload.lengths={kind: lognormal, prompt_median: 500, prompt_sigma: 1, output_median: 50, output_sigma: 1e19}", "workload.sessions={turns_mean: 2, think_time_s: 1}"), ("output_sigma", "sigma")),
    "constant output 10**30": (quickstart("workload.lengths={kind: constant, prompt: 100, output: 1000000000000000000000000000000}"), ("output",)),
    "constant prompt 2**63": (quickstart("workload.lengths={kind: constant, prompt: 9223372036854775808, output: 5}"), ("prompt",)),
    "uniform prompt_max 2**64": (quickstart("workload.lengths={kind: uniform, prompt_min: 1, prompt_max: 18446744073709551616, output_min: 1, output_max: 5}"), ("prompt_max",)),
    "router policy named ':'": (quickstart("cluster.router={kind: policy, name: ':'}"), ("':'", "name")),
    "scheduler policy named ':'": (quickstart("cluster.pools.0.scheduler={kind: policy, name: ':'}"), ("':'", "name")),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_values_are_refused_naming_the_field(worker, case):
    """Non-finite, overflowing or inconsistent values end in an error naming the field (or run correctly)."""
    request, words = REFUSED[case]
    assert_clean_naming(worker.call(request, timeout=15), case, *words)


def test_set_path_with_a_non_ascii_digit_index_is_a_config_error(worker):
    """``--set cluster.pools.².count=1`` ('²'.isdigit() is True, int('²') raises) is a ConfigError."""
    assert_clean(worker.call(quickstart("cluster.pools.\u00b2.count=1"), timeout=20), "--set cluster.pools.\u00b2.count=1")


# --- memory hazards (the worker's address space is limited to 3 GB) ------------------------------


def test_prefix_tokens_beyond_the_context_are_refused_before_allocating(worker):
    """prefix_tokens 10,000,000 (18 GB before) is refused against the model's context length."""
    outcome = worker.call(quickstart("workload.prefixes={groups: 4, prefix_tokens: 10000000, fraction: 1.0}"), timeout=30, fresh=True)
    assert_clean_naming(outcome, "prefix_tokens 1e7", "prefix_tokens")


def test_million_token_prompts_are_bounded_in_memory(worker):
    """A constant 1,000,000-token prompt in the batchllm scenario's 3,000 requests (10.5 GB, then
    MemoryError before): prompts beyond the context cost no memory for their tokens."""
    request = {"op": "load", "path": str(REPO / "scenarios" / "batchllm.yaml"), "overrides": ["workload.lengths={kind: constant, prompt: 1000000, output: 10}"]}
    assert_clean(worker.call(request, timeout=60, fresh=True), "1M-token prompts")


def test_megabyte_pool_name_is_bounded_in_memory(worker):
    """A 1 MB pool name on the full quickstart (3,000 requests; 6 GB before) is refused or cheap."""
    request = {"op": "load", "path": str(QUICKSTART), "overrides": ["cluster.pools.0.name=" + "p" * 1_000_000]}
    assert_clean_naming(worker.call(request, timeout=60, fresh=True), "1 MB pool name", "name")


# --- liveness ------------------------------------------------------------------------------------


def test_shortest_prompt_first_finishes_every_request_under_memory_pressure(worker):
    """The built-in shortest-prompt-first policy under memory pressure is live: every request
    finishes (the issue's 3,000 requests at 200/s and utilization 0.24, cut to 200 at 1000/s and
    0.22, which starve the same way). A built-in policy may not end in an error here."""
    request = quickstart("workload.arrivals.rate=1000", "cluster.pools.0.memory.gpu_memory_utilization=0.22", "cluster.pools.0.scheduler={kind: policy, name: shortest-prompt-first}", requests=200)
    outcome = worker.call(request, timeout=45)
    assert outcome["outcome"] == "ok", f"shortest-prompt-first starvation: {outcome}"
    assert_clean(outcome, "shortest-prompt-first starvation")


@pytest.mark.parametrize("field, action", [("token_budget", ["plan", 2**63 - 1, 16, "none", "none", None]), ("max_num_seqs", ["plan", 512, 2**63 - 1, "none", "none", None]), ("max_prefill_chunk", ["plan", 512, 16, "none", "none", 2**40])])
def test_plan_values_beyond_u32_name_the_field(worker, field, action):
    """A plan whose budget, sequence limit or chunk is beyond 32 bits is a PolicyError naming the
    field and its range (it was 'raised OverflowError: out of range integral type conversion')."""
    scheduler = {"kind": "policy", "name": "fuzz_policies:ScriptedScheduler", "params": {"script": [action]}, "max_num_seqs": 64, "max_num_batched_tokens": 4096}
    sc = tiny(cluster={"pools": [{"name": "main", "gpu": "h100-sxm", "model": "llama-3-8b", "scheduler": scheduler}]})
    assert_clean_naming(worker.call({"op": "simulate", "scenario": sc}, timeout=20), f"plan {field} beyond u32", field)
