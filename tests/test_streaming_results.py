"""Request results stream out of the core as requests finish (rust/core/src/sim/retire.rs: a
finished request's record is written into result columns and dropped): the request table keeps its
int64 columns and values, and a run that stops part way still reports every request, what
finished before the stop being exactly the same requests of an uninterrupted run."""

from __future__ import annotations

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
