"""Trace and length files of every format (azure, mooncake, burstgpt, parquet, csv, sharegpt,
vllm-bench) with hostile rows and bytes, read directly and replayed: each ends in a clean
fleetwise error or a result whose invariants all hold, with no well-formed row dropped silently."""

from __future__ import annotations

from hypothesis import given

from fuzz_settings import fuzz_settings
from fuzz_traces import read_request, trace_cases, trace_request
from fuzz_worker import assert_clean
from fuzz_fixtures import worker  # noqa: F401  (the module's sandboxed worker fixture)


@fuzz_settings(max_examples=70)
@given(case=trace_cases())
def test_trace_readers_fail_cleanly_or_return_valid_frames(worker, case):
    """A reader raises a FleetwiseError or returns int64 counts >= 1 and arrivals from 0, non-decreasing."""
    assert_clean(worker.call(read_request(case), timeout=20), {k: v if k != "data" else v[:300] for k, v in case.items()})


@fuzz_settings(max_examples=70)
@given(case=trace_cases())
def test_replayed_traces_fail_cleanly_or_hold_invariants(worker, case):
    """A scenario on a fuzzed file raises a FleetwiseError or simulates with every invariant."""
    assert_clean(worker.call(trace_request(case), timeout=20), {k: v if k != "data" else v[:300] for k, v in case.items()})
