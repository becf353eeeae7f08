"""Hypothesis strategies for ``--set PATH=VALUE`` overrides, applied by ``load_scenario`` as the CLI
applies them, on a tiny base scenario.

Paths are the scenario's real ones (so that many cases validate and run), hostile ones (out of
range, negative or non-ASCII-digit indices, empty segments, descending into a value) and new ones;
values are YAML texts, sane for the path or hostile (non-finite, huge, wrong type, recursive
aliases, YAML 1.1 oddities such as ``1:30``).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import strategies as st

BASE_SCENARIO = {
    "name": "fuzz-set",
    "seed": 5,
    "cluster": {
        "pools": [{"name": "main", "count": 2, "gpu": "h100-sxm", "model": "llama-3-8b", "scheduler": {"kind": "vllm", "max_num_seqs": 64}}],
        "router": {"kind": "least-outstanding-tokens"},
    },
    "workload": {
        "arrivals": {"kind": "poisson", "rate": 20.0},
        "lengths": {"kind": "lognormal", "prompt_median": 800, "prompt_sigma": 0.8, "prompt_max": 4000, "output_median": 60, "output_sigma": 0.8, "output_max": 300},
        "requests": 30,
    },
    "slo": {"ttft": 0.5, "tpot": 0.05},
}
"""The scenario every override list is applied to (30 requests on two instances)."""

SANE = {
    "name": ["x", "run-1"],
    "seed": ["0", "1", "4294967295"],
    "cluster.pools.0.count": ["1", "3"],
    "cluster.pools.0.gpu": ["h200", "a100-80gb-sxm", "l40s", "mi300x"],
    "cluster.pools.0.model": ["mistral-7b", "llama-2-7b", "qwen1.5-moe-a2.7b"],
    "cluster.pools.0.parallelism.tp": ["1", "2", "4"],
    "cluster.pools.0.parallelism.pp": ["1", "2"],
    "cluster.pools.0.scheduler": ["{kind: vllm-v1}", "{kind: sarathi-serve, token_budget: 256}", "{kind: orca}", "{kind: batchllm}", "{kind: sarathi}", "{kind: policy, name: fcfs}", "{kind: vllm, preemption_mode: swap}"],
    "cluster.pools.0.scheduler.max_num_seqs": ["1", "8", "256"],
    "cluster.pools.0.scheduler.max_num_batched_tokens": ["512", "8192"],
    "cluster.pools.0.memory.gpu_memory_utilization": ["0.3", "0.5", "0.95"],
    "cluster.pools.0.memory.block_size": ["8", "16", "32"],
    "cluster.pools.0.calibration": ["{iteration_overhead: 0.002}", "{gemm_compute: 0.5}", "{memory: 0.7, collective: 0.5}"],
    "cluster.pools.0.calibration.iteration_overhead": ["0", "0.001"],
    "cluster.pools.0.power_cap_watts": ["400", "700"],
    "cluster.pools.0.prefix_caching": ["true", "false"],
    "cluster.router.kind": ["round-robin", "random", "prefix-affinity"],
    "cluster.router": ["{kind: policy, name: cache-aware}", "{kind: policy, name: round-robin}"],
    "cluster.pools": ["[{name: p, gpu: h100-sxm, model: llama-3-8b, role: prefill}, {name: d, gpu: h100-sxm, model: llama-3-8b, role: decode}]"],
    "workload.arrivals.rate": ["1", "100", "1000"],
    "workload.arrivals": ["{kind: gamma, rate: 10, cv: 3}", "{kind: onoff, rate: 50, on_s: 1, off_s: 2}", "{kind: diurnal, mean_rate: 5, amplitude: 1, period_s: 10}", "{kind: ramp, start_rate: 0, end_rate: 50, duration_s: 2}"],
    "workload.lengths": ["{kind: constant, prompt: 100, output: 10}", "{kind: uniform, prompt_min: 1, prompt_max: 8000, output_min: 1, output_max: 100}"],
    "workload.lengths.prompt_median": ["100", "3000"],
    "workload.requests": ["1", "10", "40"],
    "workload.prefixes": ["{groups: 2, prefix_tokens: 512, fraction: 0.5}", "{groups: 1, prefix_tokens: 100, fraction: 1.0}"],
    "workload.sessions": ["{turns_mean: 3, think_time_s: 1}"],
    "cluster.pools.0.pim": ["attacc-hbm3-pim", "logic-pim"],
    "cluster.pools.0.offload": ["{tier: dram}", "{tier: flash, layer_fraction: 0.5}", "{tier: dram, read_chunk_kb: 1}"],
    "cluster.pools.0.offload.read_chunk_kb": ["64", "0.001"],
    "cluster.pools.0.experts": ["{placement: dram}", "{placement: flash, cache: {policy: lfu, experts_per_layer: 8}}", "{prefetch: {accuracy: 0.9}}"],
    "cluster.pools.0.parallelism.ep": ["1", "2"],
    "slo.ttft": ["0.1", "2"],
    "slo": ["{e2e: 5}", "null"],
}
"""Paths of the base scenario with values that keep it valid."""

HOSTILE_PATHS = [
    "cluster.pools.1.count", "cluster.pools.-1.count", "cluster.pools.\u00b2.count", "cluster.pools.\u0660.count",
    "cluster.pools.999999999999999999999.count", "cluster.pools.00.count", "cluster.pools.0x0.count", "",
    ".", "..", "a..b", "cluster..pools", "cluster.pools.0.count.x", "workload.requests.0", " name ", "name.",
    "gpus.new.peak_flops", "models.m", "cluster.pools.0.calibration.nope", "workload.arrivals.rate.deeper.still",
    "cluster", "workload", "cluster.pools.0", "__class__", "cluster.pools.0.__dict__",
]
"""Paths a user could mistype or abuse."""

HOSTILE_VALUES = [
    "0", "-1", "1e29", ".inf", "-.inf", ".nan", "1e300", "1e-300", "99999999999999999999", "0x10", "0o17",
    "true", "null", "~", "", "abc", "[1, 2]", "{a: 1}", "{kind: vllm}", "[", "{", "'", "&a [*a]",
    "!!binary aGVsbG8=", "!!python/object/apply:os.system [echo]", "2023-01-01", "1_000", "+1", ".5",
    "1:30", "=", "a=b", "{iteration_overhead: 1e9}", "{gemm_compute: 1e-300}", "\x00", "\xff",
]
"""YAML value texts: non-finite, huge, wrong types, unparsable, recursive, YAML 1.1 oddities."""

_SCRATCH = Path(tempfile.mkdtemp(prefix="fleetwise-fuzz-set-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
BASE_PATH = _SCRATCH / "base.yaml"
BASE_PATH.write_text(yaml.safe_dump(BASE_SCENARIO, sort_keys=False))


def _override() -> st.SearchStrategy:
    sane = st.sampled_from(sorted(SANE)).flatmap(lambda p: st.tuples(st.just(p), st.one_of(st.sampled_from(SANE[p]), st.sampled_from(SANE[p]), st.sampled_from(HOSTILE_VALUES))))
    hostile = st.tuples(st.sampled_from(HOSTILE_PATHS), st.one_of(st.sampled_from(HOSTILE_VALUES), st.sampled_from(["1", "x", "{}"])))
    return st.one_of(sane, sane, sane, hostile).map(lambda pv: f"{pv[0]}={pv[1]}")


def override_lists() -> st.SearchStrategy:
    """One to three ``PATH=VALUE`` overrides."""
    return st.lists(_override(), min_size=1, max_size=3)


def override_request(overrides: list[str]) -> dict:
    """The worker request loading the base scenario with ``overrides`` and simulating it."""
    return {"op": "load", "path": str(BASE_PATH), "overrides": overrides}
