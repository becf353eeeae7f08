"""Request results stream out of the core as requests finish (rust/core/src/sim/retire.rs: a
finished request's record is written into result columns and dropped): the request table keeps its
int64 columns and values, and a run that stops part way still reports every request, what
finished before the stop being exactly the same requests of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import fleetwise
import fleetwise.policy as P

from conftest import small_scenario


class StopsAt:
    """The built-in round-robin router until request ``stop`` arrives, then an error."""

    def __init__(self, stop: int):
        self.inner = P.create("router", "round-robin")
        self.stop = stop

    def route(self, request, endpoints):
        if request.id >= self.stop:
            raise RuntimeError("router stopped")
        return self.inner.route(request, endpoints)


def test_request_table_keeps_its_int64_columns():
    r = fleetwise.simulate(small_scenario())
    t = r.requests
    for col in ("instance", "prefill_instance", "preemptions", "generated_tokens", "first_token_ns", "completion_ns"):
        assert t.schema[col] == pl.Int64, col
    assert (t["status"] == "finished").all() and t.height == 600
    assert (t["prefill_instance"] == -1).all(), "colocated: no separate prefill instance"
    assert set(t["instance"].unique()) == {0, 1}
    assert (t["generated_tokens"] == t["output_tokens"]).all()


def test_a_stopped_run_reports_every_request_and_what_finished_matches_a_full_run():
    sc = small_scenario()
    full = fleetwise.simulate(sc, router=P.create("router", "round-robin")).requests
    stop = 400
    with pytest.raises(fleetwise.PolicyError, match="router stopped") as info:
        fleetwise.simulate(sc, router=StopsAt(stop))
    kept = info.value.requests
    assert kept.height == 600
    # Requests that finished before request `stop` arrived cannot depend on anything after it.
    cutoff = int(full["arrival_ns"][stop])
    early = full.filter(pl.col("completion_ns") < cutoff)["request_id"]
    assert 100 < early.len() < stop
    same = pl.col("request_id").is_in(early.implode())
    # (A stopped run's table has no idealized columns: compare the columns it has.)
    assert kept.filter(same).equals(full.select(kept.columns).filter(same))
    # Those that never arrived are unfinished, unrouted, with nothing generated.
    never = kept.filter(pl.col("request_id") >= stop)
    assert never.height == 600 - stop
    assert (never["status"] == "unfinished").all() and never["pool"].is_null().all()
    assert (never["instance"] == -1).all() and (never["generated_tokens"] == 0).all() and never["first_token_ns"].is_null().all()


# The request table is a LazyFrame over the core's compact columns until read
# (fleetwise/request_table.py); summaries read it a column at a time (metrics/table_reads.py).

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@pytest.mark.parametrize("scenario", ["quickstart.yaml", "splitwise.yaml", "splitwise-mixed-pool.yaml"])
def test_the_streamed_table_file_and_the_lazy_table_equal_the_built_table(scenario, tmp_path):
    r = fleetwise.simulate(SCENARIOS / scenario)
    lazy = r.scan_requests().collect()
    r.write(tmp_path)  # requests.parquet streamed from the compact columns
    built = r.requests
    assert lazy.equals(built) and pl.read_parquet(tmp_path / "requests.parquet").equals(built)
    assert built.schema["status"] == pl.String and built.schema["request_id"] == pl.Int64
    assert built["request_id"].to_list() == list(range(built.height))
    if scenario == "quickstart.yaml":  # colocated: the constant columns are not stored, still reported
        assert (built["prefill_instance"] == -1).all() and (built["kv_transfer_ns"] == 0).all()
    else:
        assert (built["prefill_instance"] >= 0).any() and (built["kv_transfer_ns"] > 0).any()


def test_summaries_read_in_chunks_equal_those_read_whole(monkeypatch):
    from fleetwise.metrics import table_reads
    from fleetwise.metrics.vllm_bench import vllm_bench_result

    sc = SCENARIOS / "splitwise.yaml"
    whole = fleetwise.simulate(sc)
    monkeypatch.setattr(table_reads, "CHUNK_ROWS", 7)  # chunk boundaries everywhere, a ragged last one
    chunked = fleetwise.simulate(sc)
    assert chunked.summary == whole.summary
    eager = vllm_bench_result(whole.requests, whole.summary, goodput_ms={"ttft": 300, "tpot": 40})
    assert vllm_bench_result(chunked.scan_requests(), chunked.summary, goodput_ms={"ttft": 300, "tpot": 40}) == eager
    done = whole.requests.filter(pl.col("status") == "finished")
    assert table_reads.finished_column(chunked.scan_requests(), "tpot_s", drop_nulls=True).tolist() == done["tpot_s"].drop_nulls().to_list()
    assert 0 < eager["request_goodput"] < eager["request_throughput"]


def test_a_distribution_may_reorder_its_input_and_gives_the_same_numbers():
    import numpy as np

    from fleetwise.metrics import distribution

    values = np.random.default_rng(3).lognormal(size=1001)
    kept = values.copy()
    copy = distribution(values)
    assert (values == kept).all()
    assert distribution(values, reorder=True) == copy
    assert copy["p50"] == float(np.sort(kept)[500]) and copy["mean"] == float(np.mean(kept))
