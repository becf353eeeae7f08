"""fleetwise against a real serving engine on an H100 (docs/serving-fidelity.md).

The measurements in calibration/h100/serving/ were taken by fleetwise/fidelity/torch_engine.py on
an H100; these tests re-run the comparison on them, so a change to the cost model, the scheduler or
the metrics that moves the simulated latencies away from the measured ones fails here.
"""

from __future__ import annotations

import csv
import math

import polars as pl
import pytest

from fleetwise.fidelity import compare as fc


@pytest.fixture(scope="module")
def result() -> dict:
    return fc.compare(fc.DATA)


def errors(result: dict, trace: str, metric: str) -> list[float]:
    m = result["traces"][trace]["metrics"]
    return [m[f"{metric}_p{p}"]["error"] for p in (50, 90, 99)]


def test_overhead_fitted_on_the_calibration_trace_only(result):
    fit = result["fit"]
    _, iters = fc.load_run(fc.DATA)
    assert fit["iterations"] == len(iters.filter(pl.col("trace") == "calibration"))
    # the engine's host work per iteration plus what the cost model misses: 1.33 ms measured
    assert 1.0e-3 < fit["iteration_overhead"] < 1.7e-3
    assert result["calibration"]["iteration_overhead"] == pytest.approx(fit["iteration_overhead"], abs=1e-7)
    assert set(result["traces"]) == {"rate6", "rate12"}, "the calibration trace is not validated on"


def test_rate6_within_target(result):
    # measured: TPOT and E2E within 2% at p50/p90/p99; TTFT -7.4% at p50, within 1% at p90/p99
    for metric in ("tpot", "e2e"):
        assert all(abs(e) < 0.03 for e in errors(result, "rate6", metric)), (metric, errors(result, "rate6", metric))
    p50, p90, p99 = errors(result, "rate6", "ttft")
    assert abs(p50) < 0.09 and abs(p90) < 0.02 and abs(p99) < 0.02


def test_rate12_ttft_within_target_tpot_underpredicted(result):
    # measured: TTFT within 4%; TPOT and E2E 16-18% low (decode iterations of 24+ sequences run
    # 1.7-2.9 ms longer than the cost model predicts: docs/serving-fidelity.md, caveats)
    assert all(abs(e) < 0.05 for e in errors(result, "rate12", "ttft"))
    for metric in ("tpot", "e2e"):
        assert all(-0.20 < e < -0.13 for e in errors(result, "rate12", metric)), (metric, errors(result, "rate12", metric))


def test_every_request_measured_and_simulated(result):
    reqs = pl.read_csv(fc.DATA / "requests.csv")
    for name, t in result["traces"].items():
        trace = pl.read_csv(fc.DATA / f"{name}.csv")
        assert t["requests"] == len(trace)
        for m in t["metrics"].values():
            assert m["measured"] > 0 and m["simulated"] > 0 and math.isfinite(m["error"])
    done = reqs.filter(pl.col("first_token_s") >= pl.col("arrival_s"), pl.col("last_token_s") >= pl.col("first_token_s"))
    assert len(done) == len(reqs)


def test_traces_are_fleetwise_generated():
    for name, spec in fc.TRACES.items():
        committed = pl.read_csv(fc.DATA / f"{name}.csv")
        assert fc.make_trace(spec).equals(committed), name


def test_iteration_shapes_follow_the_vllm_policy():
    # prefill-first: an iteration is all prefills or all decodes; prompts fit the token budget
    # unless alone; never more than max_num_seqs running
    with (fc.DATA / "iterations.csv").open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        prefill, decode = int(r["prefill_tokens"]), int(r["decode_seqs"])
        assert (prefill > 0) != (decode > 0)
        lens = [int(x) for x in r["prefill_lens"].split(";")] if r["prefill_lens"] else []
        assert sum(lens) == prefill
        assert len(lens) <= 1 or prefill <= fc.MAX_NUM_BATCHED_TOKENS
        assert decode <= fc.MAX_NUM_SEQS and int(r["running"]) <= fc.MAX_NUM_SEQS


def test_engine_serves_a_tiny_trace_on_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    from fleetwise.fidelity import torch_engine as te

    torch.manual_seed(0)
    cfg = te.Config(layers=1, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=50,
                    max_num_seqs=3, max_num_batched_tokens=64, max_len=96)
    engine = te.Engine(te.Model(cfg, "cpu"))
    trace = [{"request_id": i, "arrival_s": 0.002 * i, "prompt_tokens": p, "output_tokens": o}
             for i, (p, o) in enumerate([(40, 3), (30, 5), (20, 2), (50, 4), (10, 6)])]
    reqs, iters = engine.serve(trace)
    assert [r["request_id"] for r in reqs] == list(range(5))
    assert all(r["arrival_s"] <= r["first_token_s"] <= r["last_token_s"] for r in reqs)
    # tokens emitted: one per prefill, one per decode of each running request
    emitted = sum(len(i["prefill_lens"].split(";")) if i["prefill_lens"] else i["decode_seqs"] for i in iters)
    assert emitted == sum(t["output_tokens"] for t in trace)
    assert iters[0]["prefill_lens"] == "40"
    assert all(i["prefill_tokens"] <= 64 and i["running"] <= 3 for i in iters)
