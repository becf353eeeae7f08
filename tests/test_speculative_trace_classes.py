"""Acceptance classes named by the workload (``Workload.acceptance_class``, a native trace's
``acceptance_class`` column; docs/speculative-decoding.md, "Acceptance by request"): a named
request is in that class whatever the shares say, an unnamed (null) one is drawn by share; a run
naming every request's class is the run of that class alone; a name no pool has, or a column of
the wrong type, is refused naming the file and column (exit 2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import yaml

import fleetwise
from conftest import run_cli
from fleetwise.workload import Workload, build_workload
from fleetwise.config.load import as_scenario
from test_speculative import _scenario
from test_speculative_classes import CODE_AND_CHAT, EAGLE


def _trace(tmp_path, names: list, n: int = 40) -> tuple:
    """A native trace of ``n`` requests (500 + 400 tokens, arriving 10 ms apart) whose
    ``acceptance_class`` column repeats ``names``, and a scenario replaying it on the Llama-3-70B
    EAGLE pool with ``CODE_AND_CHAT``'s classes."""
    frame = pl.DataFrame({
        "arrival_ns": np.arange(n, dtype=np.int64) * 10_000_000,
        "prompt_tokens": np.full(n, 500), "output_tokens": np.full(n, 400),
        "acceptance_class": pl.Series([names[i % len(names)] for i in range(n)], dtype=pl.String),
    })
    frame.write_parquet(tmp_path / "trace.parquet")
    scenario = _scenario({**EAGLE, "acceptance_classes": CODE_AND_CHAT})
    scenario["workload"] = {"arrivals": {"kind": "trace", "format": "parquet", "path": "trace.parquet"}}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return frame, path


def test_the_trace_names_each_requests_class(tmp_path):
    # Four in five named code (the shares say three in ten), one in five unnamed: drawn by share.
    frame, path = _trace(tmp_path, ["code", "code", "code", "code", None])
    res = fleetwise.simulate(path)
    got = res.requests.sort("request_id")["acceptance_class"].cast(pl.String).to_list()
    named = frame["acceptance_class"].to_list()
    assert all(g == n for g, n in zip(got, named) if n is not None)
    assert got.count("code") >= 32 and got.count("chat") <= 8
    # Each class accepts at its own rate: (a + ... + a^4) / 4 of the verified drafts.
    s = res.summary["speculative"]
    assert s["per_class_acceptance_rate"][0] == pytest.approx((0.9 + 0.81 + 0.729 + 0.6561) / 4, rel=0.05)
    assert s["per_class_draft_tokens"][0] > 3 * s["per_class_draft_tokens"][1]
    tpot = res.requests.group_by("acceptance_class").agg(pl.col("tpot_s").mean())
    by = dict(zip(tpot["acceptance_class"].cast(pl.String), tpot["tpot_s"]))
    assert by["code"] < 0.75 * by["chat"], by


def test_naming_every_request_is_the_run_of_that_class_alone():
    # The class draws are their own stream (seed and request index): naming every request "chat"
    # gives, to the bit, the run whose only rate is chat's.
    sc = as_scenario(_scenario({**EAGLE, "acceptance_classes": CODE_AND_CHAT}, requests=48))
    workload = build_workload(sc.workload, sc.seed, None)
    named = fleetwise.simulate(sc, workload=dataclasses.replace(workload, acceptance_class=["chat"] * len(workload)))
    alone = fleetwise.simulate(_scenario({**EAGLE, "acceptance_rate": 0.45}, requests=48), workload=workload)
    assert named.requests.drop("acceptance_class").equals(alone.requests)
    assert named.summary["speculative"]["per_class_draft_tokens"][0] == 0
    assert named.summary["speculative"]["num_accepted_tokens"] == alone.summary["speculative"]["num_accepted_tokens"]
    # Unnamed, a third of them are drawn into code and decode faster.
    drawn = fleetwise.simulate(sc, workload=workload)
    assert drawn.summary["tpot_s"]["mean"] < 0.95 * named.summary["tpot_s"]["mean"]


def test_the_column_survives_a_round_trip_through_parquet(tmp_path):
    w = Workload([0, 5, 9], [10, 20, 30], [4, 5, 6], acceptance_class=["code", None, "chat"])
    w.to_frame().write_parquet(tmp_path / "w.parquet")
    from fleetwise.workload.native import load_parquet

    assert load_parquet(tmp_path / "w.parquet")["acceptance_class"].to_list() == ["code", None, "chat"]
    with pytest.raises(ValueError, match="acceptance_class must be strings"):
        Workload([0], [1], [1], acceptance_class=[3])
    with pytest.raises(ValueError, match="2 entries for 3 requests"):
        Workload([0, 5, 9], [10, 20, 30], [4, 5, 6], acceptance_class=["code", "chat"])


def test_a_name_no_pool_has_is_refused_naming_the_column(tmp_path):
    _, path = _trace(tmp_path, ["code", "chat", "prose"])
    r = run_cli("run", str(path), "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    for says in ("scenario.yaml", "trace.parquet", "column acceptance_class", "request 2", "'prose'", "pool 'main'", "code, chat"):
        assert says in r.stderr, (says, r.stderr)


def test_a_column_of_numbers_is_refused_naming_the_file(tmp_path):
    _, path = _trace(tmp_path, ["code"])
    frame = pl.read_parquet(tmp_path / "trace.parquet").with_columns(acceptance_class=pl.lit(1))
    frame.write_parquet(tmp_path / "trace.parquet")
    r = run_cli("run", str(path), "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "trace.parquet" in r.stderr and "column acceptance_class must be strings" in r.stderr, r.stderr


def _first_timestamp_ns(path) -> int:
    """The first row's TIMESTAMP of an Azure 2023 CSV, nanoseconds since the epoch."""
    return pl.read_csv(path, n_rows=1)["TIMESTAMP"].str.to_datetime("%Y-%m-%d %H:%M:%S%.f").dt.epoch("ns")[0]


def test_azure_code_and_conversation_named_by_trace_against_drawn_by_share(tmp_path):
    # Azure's 2023 code and conversation traces merged on their own clocks, each request named by
    # its trace (code 0.9 a position, conversation 0.45), replayed for 20 minutes on three
    # Llama-3-70B TP4 instances with an EAGLE head drafting 4. Code outputs are short (median 13
    # tokens against 129): named, the code class drafts little, and the run accepts 0.21 of its
    # drafts; drawn by the same shares, 0.29, overstating the E2E gain over no speculation
    # (24% against 19%) and the conversation requests' TPOT gain.
    from fleetwise.workload.azure import load_azure_csv
    from trace_helpers import shared_trace

    code_csv, conv_csv = shared_trace("azure_llm_2023_code.csv"), shared_trace("azure_llm_2023_conv.csv")
    start = min(_first_timestamp_ns(code_csv), _first_timestamp_ns(conv_csv))
    parts = [load_azure_csv(p).with_columns(pl.col("arrival_ns") + (_first_timestamp_ns(p) - start), acceptance_class=pl.lit(name))
             for p, name in ((code_csv, "code"), (conv_csv, "chat"))]
    merged = pl.concat(parts).sort("arrival_ns", maintain_order=True)
    merged.write_parquet(tmp_path / "azure_code_conv.parquet")
    share = float((merged["acceptance_class"] == "code").mean())
    classes = [{"name": "code", "share": round(share, 3), "acceptance_rate": 0.9}, {"name": "chat", "share": round(1 - round(share, 3), 3), "acceptance_rate": 0.45}]
    scenario = _scenario({**EAGLE, "acceptance_classes": classes})
    scenario["cluster"]["pools"][0]["count"] = 3
    scenario["workload"] = {"arrivals": {"kind": "trace", "format": "parquet", "path": str(tmp_path / "azure_code_conv.parquet"), "duration_s": 1200}}
    sc = as_scenario(scenario)
    workload = build_workload(sc.workload, sc.seed, None)
    named = fleetwise.simulate(sc, workload=workload)
    drawn = fleetwise.simulate(sc, workload=dataclasses.replace(workload, acceptance_class=None))
    plain = fleetwise.simulate({**scenario, "cluster": {"pools": [{**scenario["cluster"]["pools"][0], "speculative": None}]}}, workload=workload)
    acc = {r: res.summary["speculative"]["acceptance_rate"] for r, res in (("named", named), ("drawn", drawn))}
    assert acc["named"] == pytest.approx(0.21, abs=0.03) and acc["drawn"] == pytest.approx(0.29, abs=0.03), acc
    e2e = {r: res.summary["e2e_s"]["mean"] for r, res in (("named", named), ("drawn", drawn), ("plain", plain))}
    assert e2e["drawn"] < e2e["named"] < e2e["plain"], e2e
    assert 1 - e2e["drawn"] / e2e["plain"] > 1 - e2e["named"] / e2e["plain"] + 0.03, e2e

    def chat_tpot(res) -> float:
        rows = res.requests.sort("request_id").with_columns(trace=workload.acceptance_class)
        return rows.filter(pl.col("trace") == "chat")["tpot_s"].mean()

    assert chat_tpot(drawn) < 0.92 * chat_tpot(named) < 0.92 * chat_tpot(plain)


@pytest.mark.parametrize("classes", [
    [{"name": "code", "share": 0.5, "acceptance_rate": 0.9}, {"name": "code", "share": 0.5, "acceptance_rate": 0.2}],
    [{"name": "class 1", "share": 0.5, "acceptance_rate": 0.9}, {"share": 0.5, "acceptance_rate": 0.2}],
])
def test_two_classes_with_one_label_are_refused(classes, write_yaml):
    # A trace, and the request table, name a class by its label: each must be its own.
    path = write_yaml(_scenario({**EAGLE, "acceptance_classes": classes}, requests=2))
    r = run_cli("run", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cluster.pools.0.speculative.acceptance_classes.1.name" in r.stderr and "already labels class 0" in r.stderr, r.stderr
