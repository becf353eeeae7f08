"""The command line end to end: run writes results, estimate predicts, catalog lists."""

from __future__ import annotations

import json

import polars as pl
import pytest

from conftest import REPO, run_cli, small_scenario


def test_run_quickstart_writes_parquet_and_summary(tmp_path):
    out = tmp_path / "qs"
    r = run_cli("run", str(REPO / "scenarios" / "quickstart.yaml"), "--set", "workload.requests=300", "-o", str(out), "--iterations")
    assert r.returncode == 0, r.stderr
    assert "TTFT" in r.stdout and "TPOT" in r.stdout and "E2E" in r.stdout
    req = pl.read_parquet(out / "requests.parquet")
    assert req.height == 300
    assert {"arrival_ns", "first_token_ns", "completion_ns", "prompt_tokens", "output_tokens", "instance", "preemptions"} <= set(req.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 300
    assert pl.read_parquet(out / "iterations.parquet").height > 0
    # A second run into the same directory, without --iterations, leaves no file of the first:
    # report read the old iterations.parquet beside the new requests (a mixed time series, exit 0).
    r = run_cli("run", str(REPO / "scenarios" / "quickstart.yaml"), "--set", "workload.requests=50", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert not (out / "iterations.parquet").exists()
    assert pl.read_parquet(out / "requests.parquet").height == 50


def test_trace_replay_scenario_and_malformed_row(tmp_path, write_yaml):
    r = run_cli("run", str(REPO / "scenarios" / "azure-replay.yaml"), "-o", str(tmp_path / "az"))
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(tmp_path / "az" / "requests.parquet").height == 500
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,three,28\n")
    sc = small_scenario()
    sc["workload"] = {"arrivals": {"kind": "trace", "path": str(bad), "format": "azure"}}
    r = run_cli("run", str(write_yaml(sc)))
    assert r.returncode == 2
    assert "bad.csv" in r.stderr and "line 3" in r.stderr and "Traceback" not in r.stderr


def test_estimate_json_has_seconds_and_memory():
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--decode-batch", "16", "--context", "1000", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["seconds"] > 0 and d["memory_bytes"] > 16e9
    # Weights + KV of 16 x 1001 tokens (128 KiB each) + activations.
    m = d["memory"]
    assert m["kv_cache"] == 16 * 1001 * 131072
    assert d["memory_bytes"] == m["weights"] + m["kv_cache"] + m["activations"]


def test_estimate_mixed_batch_costs_more_than_either_part_and_less_than_both():
    def secs(*args):
        r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--engine", "fleetwise-torch", *args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["seconds"]

    p = secs("--prefill", "512", "--prefill-context", "1024")
    d = secs("--decode-batch", "32", "--context", "2000")
    both = secs("--prefill", "512", "--prefill-context", "1024", "--decode-batch", "32", "--context", "2000")
    assert max(p, d) < both < p + d, "decodes piggybacked on a prefill share its weight reads"


@pytest.mark.parametrize("args", [("--gpu", "h100-sxm", "--decode-batch", "4", "--context", "10"), ("--model", "llama-3-8b", "--gpu", "h100-sxm")])
def test_estimate_usage_errors_exit_2(args):
    r = run_cli("estimate", *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_catalog_lists_required_gpus_and_models():
    r = run_cli("catalog", "--json")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert {"a100-80gb-sxm", "h100-sxm", "h200", "b200", "l40s"} <= set(d["gpus"])
    assert {"llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "mistral-7b"} <= set(d["models"])


def test_user_defined_model_and_gpu_in_scenario():
    import fleetwise

    sc = small_scenario(
        models={"my-3b": {"num_layers": 26, "hidden_size": 3072, "num_heads": 24, "num_kv_heads": 8, "head_dim": 128, "intermediate_size": 8192, "vocab_size": 128256, "max_position_embeddings": 8192}},
    )
    sc["cluster"]["pools"][0]["model"] = "my-3b"
    small = fleetwise.simulate(sc)
    big = fleetwise.simulate(small_scenario())
    assert small.summary["finished"] == 600
    assert small.summary["tpot_s"]["p50"] < big.summary["tpot_s"]["p50"]


def test_ctrl_c_cancels_a_long_run_cleanly(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    sc = small_scenario()
    sc["workload"].update(requests=3_000_000, lengths={"kind": "constant", "prompt": 100, "output": 50})
    sc["workload"]["arrivals"]["rate"] = 200.0
    sc["cluster"]["pools"][0]["count"] = 8
    import yaml

    p = tmp_path / "long.yaml"
    p.write_text(yaml.safe_dump(sc))
    proc = subprocess.Popen([sys.executable, "-m", "fleetwise", "run", str(p), "-o", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(4.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # a hang guard only: the core stops within a few thousand events
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_running_out_of_memory_is_a_one_line_error_with_exit_2(monkeypatch, capsys, tmp_path):
    # A MemoryError anywhere under a command (here the core's simulate) was a traceback, exit 1.
    import sys

    import fleetwise.cli  # noqa: F401 - loads fleetwise.cli.app

    cli_app, sim = sys.modules["fleetwise.cli.app"], sys.modules["fleetwise.simulate"]

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(sim, "simulate", no_memory)
    monkeypatch.setattr("sys.argv", ["fleetwise", "run", str(REPO / "scenarios" / "quickstart.yaml"), "-o", str(tmp_path / "out")])
    codes = []
    monkeypatch.setattr(cli_app, "_exit", codes.append)
    cli_app.main()
    assert codes == [2]
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "Traceback" not in err
