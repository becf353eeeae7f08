"""Random command lines for the commands that take numbers and names directly (estimate,
check-policy, compare, sweep), run through ``fleetwise.cli.main`` in the sandboxed worker: each
exits 2 with a message and no traceback, or succeeds (``estimate --json`` printing strict JSON with
no NaN or negative number)."""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzz_invariants import check_summary, strict_json_loads
from fuzz_settings import fuzz_settings
from fuzz_worker import assert_clean_cli
from fuzz_fixtures import worker  # noqa: F401  (the module's sandboxed worker fixture)

_SCRATCH = Path(tempfile.mkdtemp(prefix="fleetwise-fuzz-cli-args-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
(_SCRATCH / "tiny.yaml").write_text(yaml.safe_dump({
    "name": "tiny", "seed": 1,
    "cluster": {"pools": [{"name": "main", "count": 1, "gpu": "h100-sxm", "model": "llama-3-8b"}]},
    "workload": {"arrivals": {"kind": "poisson", "rate": 10.0}, "lengths": {"kind": "constant", "prompt": 200, "output": 20}, "requests": 10},
}))

_NUMBERS = ["0", "1", "2", "8", "-1", "3", "1e9", "1e300", "nan", "inf", "-inf", "9223372036854775808", "1.5", "abc", ""]
_MODELS = ["llama-3-8b", "mixtral-8x7b", "deepseek-v2-lite", "llama-3-70b", "nope", ""]
_GPUS = ["h100-sxm", "l40s", "mi300x", "b200", "nope"]


def _opt(flag: str, values) -> st.SearchStrategy:
    """``[flag, value]`` or nothing."""
    return st.one_of(st.just([]), st.tuples(st.just(flag), values).map(list))


@st.composite
def estimate_args(draw) -> list[str]:
    """``estimate`` with random shapes, parallelism, power cap, PIM and offload settings."""
    small = st.sampled_from(["1", "16", "512", "4096"])
    args = ["estimate", "--model", draw(st.sampled_from(_MODELS)), "--gpu", draw(st.sampled_from(_GPUS)), "--json"]
    args += draw(_opt("--prefill", st.one_of(small, st.sampled_from(_NUMBERS))))
    args += draw(_opt("--decode-batch", st.one_of(small, st.sampled_from(_NUMBERS))))
    args += draw(_opt("--context", st.one_of(small, st.sampled_from(_NUMBERS))))
    args += draw(_opt("--prefill-context", st.one_of(small, st.sampled_from(_NUMBERS))))
    args += draw(_opt("--tp", st.sampled_from(["1", "2", "8", "3", "0", "16", "9223372036854775808"])))
    args += draw(_opt("--pp", st.sampled_from(["1", "2", "4", "0", "1000"])))
    args += draw(_opt("--ep", st.sampled_from(["1", "2", "8"])))
    args += draw(_opt("--power-cap", st.sampled_from(["1", "300", "1e300", "nan", "inf", "0.5"])))
    args += draw(_opt("--pim", st.sampled_from(["attacc-hbm3-pim", "logic-pim", "nope"])))
    if draw(st.booleans()):
        args += ["--offload", draw(st.sampled_from(["dram", "flash", "tape"]))]
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from(["layer_fraction", "ffn_load_fraction", "dram_cache_fraction", "overlap", "storage", "queue_depth", "read_chunk_kb", "bogus"]))
            args += ["--offload-set", f"{key}={draw(st.sampled_from(_NUMBERS + ['true', 'nvme-gen5', '{a: 1}', '.inf']))}"]
    return args


@st.composite
def check_policy_args(draw) -> list[str]:
    """``check-policy`` with registered, scripted, missing and odd policy names and parameters."""
    kind = draw(st.sampled_from(["router", "scheduler", "prefix-cache", "expert-cache", "bogus"]))
    name = draw(st.sampled_from(["round-robin", "cache-aware", "fcfs", "shortest-prompt-first", "decode-budget", "lru", "lfu", "static", "fuzz_policies:ScriptedRouter", "fuzz_policies:ScriptedScheduler", "nope", "os:getcwd", "fleetwise.policy:Router", ":", "a:b:c", "fuzz_policies:", "math:inf", "fleetwise.nonexistent:X"]))
    args = ["check-policy", kind, name]
    for _ in range(draw(st.integers(0, 2))):
        args += ["--param", draw(st.sampled_from(["script=[[\"valid\"]]", "script=[[\"raise\", \"value\"]]", "script=[[\"return\", \"none\"]]", "seed=1", "max_num_seqs=0", "max_num_seqs=-1", "token_budget=1e400", "nokey", "=1", "bogus=1", "prefix_weight=NaN"]))]
    return args


@st.composite
def compare_and_sweep_args(draw) -> list[str]:
    """``compare`` with odd ``--variant`` texts, or a tiny ``sweep`` with odd ``--grid`` texts."""
    tiny = str(_SCRATCH / "tiny.yaml")
    out = str(_SCRATCH / f"out{draw(st.integers(0, 3))}")
    if draw(st.booleans()):
        variants = draw(st.lists(st.sampled_from(["a: cluster.pools.0.count=2", "b: workload.requests=5", "a: cluster.router.kind=random", "x", ": =", "c: a=b", "d: cluster.pools.0.count=0", "e: ; ;", "f: workload.requests=1e29", "g: seed=-1"]), min_size=1, max_size=3))
        args = ["compare", tiny, "-o", out]
        for v in variants:
            args += ["--variant", v]
        return args
    grids = draw(st.lists(st.sampled_from(["cluster.pools.0.count=1,2", "workload.requests=5,10", "seed=1,2", "cluster.pools.0.count=", "=1,2", "seed=1,,2", "seed=1,1", "workload.arrivals.rate=nan,1", "cluster.pools.9.count=1", "a.b=1"]), min_size=1, max_size=2))
    args = ["sweep", tiny, "-j", "1", "--no-requests", "-o", out]
    for g in grids:
        args += ["--grid", g]
    return args


def _call(worker, args: list[str]) -> dict:
    return worker.call({"op": "cli", "args": args, "cwd": str(_SCRATCH)}, timeout=30)


@fuzz_settings(max_examples=60)
@given(args=estimate_args())
def test_estimate_exits_2_or_prints_valid_json(worker, args):
    """``estimate --json`` exits 2 cleanly or prints strict JSON without NaN or infinity."""
    outcome = _call(worker, args)
    assert_clean_cli(outcome, args)
    if outcome["exit_code"] == 0:
        data = strict_json_loads(outcome["stdout"])
        bad = [v for v in check_summary(data) if "negative" not in v]
        assert not bad, f"{args}: {bad}"
        assert all(math.isfinite(x) for x in (data["seconds"], data["power_watts_per_gpu"])) and data["seconds"] > 0, f"{args}: {data['seconds']}"


@fuzz_settings(max_examples=40)
@given(args=check_policy_args())
def test_check_policy_reports_or_exits_2(worker, args):
    """``check-policy`` passes (0), reports a failed check (1) or exits 2 — never a traceback."""
    assert_clean_cli(_call(worker, args), args, also_allowed=(1,))


@fuzz_settings(max_examples=15)
@given(args=compare_and_sweep_args())
def test_compare_and_sweep_exit_0_or_2(worker, args):
    """``compare`` and ``sweep`` with odd variants and grids exit 0 or 2 — never a traceback."""
    assert_clean_cli(_call(worker, args), args)
