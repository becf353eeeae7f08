"""The emulated engine (``fleetwise serve-engine``): OpenAI API shapes, latencies from the cost model
in real time, vLLM's metric names and the prefill/decode ``kv_transfer_params`` handshake.

Engines run in-process with uvicorn on background threads; no vLLM needed."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fleetwise.serve import prom  # noqa: E402
from fleetwise.serve.background import BackgroundServer  # noqa: E402
from fleetwise.serve.emulator import EmulatedEngine  # noqa: E402
from fleetwise.serve.engine_app import create_engine_app  # noqa: E402
from fleetwise.serve.text import approx_tokens  # noqa: E402


@pytest.fixture(scope="module")
def engine():
    eng = EmulatedEngine("llama-3-8b", "h100-sxm")
    with BackgroundServer(create_engine_app(eng)) as srv:
        yield eng, srv.url


def sse(lines) -> list[dict]:
    """The JSON payloads of an SSE stream, ``[DONE]`` as the string."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            p = line[6:]
            out.append(p if p == "[DONE]" else json.loads(p))
    return out


def timed_stream(url: str, body: dict) -> tuple[float, list[dict]]:
    """Seconds to the first content chunk, and every payload."""
    t0 = time.monotonic()
    first, payloads = None, []
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line:
                continue
            d = sse([line])[0]
            if first is None and d != "[DONE]" and d["choices"] and (d["choices"][0].get("text") or d["choices"][0].get("delta", {}).get("content")):
                first = time.monotonic() - t0
            payloads.append(d)
    return first, payloads


def test_ttft_follows_the_cost_model(engine):
    eng, url = engine
    prompt = "word " * 4000  # 20,000 characters: 5,000 approximate tokens
    n = approx_tokens(prompt)
    assert n == 5000
    predicted = eng.predict_ttft(n)
    assert 0.05 < predicted < 1.0
    def ttft_metric():
        s = prom.parse(httpx.get(url + "/metrics").text)
        return prom.total(s, "vllm:time_to_first_token_seconds_sum") or 0.0

    client, server = [], []
    for _ in range(3):
        before = ttft_metric()
        client.append(timed_stream(url + "/v1/completions", {"prompt": prompt, "max_tokens": 1, "stream": True})[0])
        server.append(ttft_metric() - before)
    # The engine's own TTFT (vllm:time_to_first_token_seconds, from admission to the token) is the
    # predicted prefill plus the event loop's wake-up latency (uvloop's timers have 1 ms granularity).
    # Only lower bounds are asserted: the engine never answers before its prediction, and a loaded
    # machine can only delay it (an upper bound on wall time would flake; httpx's timeout guards hangs).
    assert min(server) >= predicted * 0.99 - 0.002, (server, predicted)
    # The client also sees HTTP and request parsing.
    assert min(client) >= predicted * 0.98, (client, predicted)


def test_iterations_sleep_as_predicted(engine):
    eng, url = engine
    busy, pred, its = eng.busy_seconds, eng.predicted_seconds, eng.iterations
    r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 40}, timeout=60)
    assert r.json()["usage"]["completion_tokens"] == 40
    assert eng.iterations - its == 40
    expected = eng.predict_ttft(1) + sum(eng.cost.iteration_seconds([], [1 + i]) for i in range(1, 40))
    assert eng.predicted_seconds - pred == pytest.approx(expected, rel=1e-9)
    # Each iteration sleeps its predicted time; timer and loop overhead come on top (about 0.1-1 ms each).
    assert expected * 0.99 - 0.002 <= eng.busy_seconds - busy <= expected * 1.2 + 0.002 * 40


def test_speedup_runs_faster_than_real_time():
    eng = EmulatedEngine("llama-3-8b", "h100-sxm", speedup=10.0)
    assert eng.predict_ttft(5000) == pytest.approx(EmulatedEngine().predict_ttft(5000) / 10)
    with BackgroundServer(create_engine_app(eng)) as srv:
        httpx.post(srv.url + "/v1/completions", json={"prompt": "word " * 4000, "max_tokens": 20}, timeout=60)
    assert eng.predicted_seconds / 10 * 0.99 - 0.002 <= eng.busy_seconds <= eng.predicted_seconds / 10 * 1.2 + 0.002 * eng.iterations


def test_stream_has_usage_in_the_last_chunk(engine):
    _, url = engine
    _, p = timed_stream(url + "/v1/completions", {"prompt": "abcd" * 10, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}})
    assert p[-1] == "[DONE]"
    assert p[-2]["choices"] == [] and p[-2]["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": None}
    texts = [c["choices"][0]["text"] for c in p[:-2]]
    assert len(texts) == 5 and p[-3]["choices"][0]["finish_reason"] == "length"
    _, p = timed_stream(url + "/v1/completions", {"prompt": "abcd", "max_tokens": 3, "stream": True})
    assert all("usage" not in c for c in p[:-1]) and len(p) == 4


def test_chat_stream_and_non_stream(engine):
    _, url = engine
    body = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 4}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).json()
    assert r["object"] == "chat.completion" and r["usage"]["completion_tokens"] == 4
    assert r["choices"][0]["message"]["content"] == "the quick brown fox"
    _, p = timed_stream(url + "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert p[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in p if c != "[DONE]" and c["choices"]) == "the quick brown fox"
    assert p[-2]["usage"]["completion_tokens"] == 4


def test_models_health_and_errors(engine):
    _, url = engine
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "llama-3-8b"
    r = httpx.post(url + "/v1/completions", json={"model": "other", "prompt": "x"})
    assert r.status_code == 404
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 9000})
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]
    for body in ({"prompt": None}, {"max_tokens": 4}, {"prompt": ""}):  # vLLM: a prompt is required, not empty
        r = httpx.post(url + "/v1/completions", json=body)
        assert r.status_code == 400 and "prompt is required and cannot be empty" in r.json()["error"]["message"], body


@pytest.mark.parametrize("path, body, message", [
    ("/v1/completions", {"messages": [{"role": "user", "content": "hi"}]}, "prompt is required and cannot be empty"),
    ("/v1/chat/completions", {"prompt": "hi"}, "messages is required on /v1/chat/completions"),
    ("/v1/chat/completions", {"messages": []}, "messages must hold at least one message"),
    ("/v1/completions", {"prompt": [[]]}, "prompt[0] is an empty list of token ids"),
    ("/v1/completions", {"prompt": [""]}, "prompt is required and cannot be empty"),
    ("/v1/completions", {"prompt": "hi", "n": [1]}, "n must be an integer, got [1]"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature must be a number, got 'hot'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": {"t": 1}}, "temperature must be a number"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p must be in (0, 1]"),
])
def test_each_endpoint_reads_its_own_prompt_field_and_sampling_types(engine, path, body, message):
    _, url = engine
    before = len(httpx.get(url + "/fleetwise/requests").json()["requests"])
    r = httpx.post(url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and message in err["message"], err
    assert len(httpx.get(url + "/fleetwise/requests").json()["requests"]) == before  # nothing was served


def test_valid_sampling_fields_and_chat_with_a_stray_prompt_are_served(engine):
    _, url = engine
    ok = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1, "n": 1, "temperature": 0, "top_p": 1, "seed": 3, "messages": "ignored"}, timeout=30)
    assert ok.status_code == 200, ok.text
    # What vLLM's request model (pydantic, lax) takes: numeric strings and booleans as numbers.
    lax = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1, "n": True, "temperature": "0.7", "seed": "7"}, timeout=30)
    assert lax.status_code == 200, lax.text
    chat = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "prompt": [[]], "max_tokens": 1, "temperature": 0.7}, timeout=30)
    assert chat.status_code == 200 and chat.json()["usage"]["prompt_tokens"] == approx_tokens("user: hi\n"), chat.text


def test_metrics_use_vllm_names(engine):
    _, url = engine
    httpx.post(url + "/v1/completions", json={"prompt": "abcd" * 25, "max_tokens": 3}, timeout=30)
    s = prom.parse(httpx.get(url + "/metrics").text)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:request_success_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_sum", "vllm:request_time_per_output_token_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count"):
        assert name in s, name
    assert prom.total(s, "vllm:prompt_tokens_total") >= 25
    assert all(labels["model_name"] == "llama-3-8b" for labels, _ in s["vllm:num_requests_running"])


def _streaming_clients(url: str, n: int, body: dict):
    """``n`` threads each streaming ``body`` from ``url`` until ``stop`` is set; leaving the stream
    closes the connection (a client going away)."""
    import threading

    stop = threading.Event()

    def client():
        with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    return stop, threads


def _poll_metrics(url: str, until, timeout: float = 60.0) -> dict:
    s = prom.parse(httpx.get(url + "/metrics").text)
    deadline = time.monotonic() + timeout  # a hang guard only: the condition is about engine state
    while not until(s) and time.monotonic() < deadline:
        time.sleep(0.02)
        s = prom.parse(httpx.get(url + "/metrics").text)
    return s


def test_running_waiting_and_kv_usage_under_load_then_abort_on_disconnect():
    # Twenty times slower than real time, so no request finishes while the test looks (each
    # decode step of 300 takes ~0.1 s): the gauges show the scheduler's state, not a race.
    eng = EmulatedEngine("llama-3-8b", "h100-sxm", scheduler={"kind": "vllm", "max_num_seqs": 2}, speedup=0.05)
    with BackgroundServer(create_engine_app(eng)) as srv:
        stop, threads = _streaming_clients(srv.url, 5, {"prompt": "abcd" * 500, "max_tokens": 300})
        running = lambda s: prom.total(s, "vllm:num_requests_running")
        waiting = lambda s: prom.total(s, "vllm:num_requests_waiting")
        loaded = _poll_metrics(srv.url, lambda s: running(s) == 2 and waiting(s) == 3)
        stop.set()
        for t in threads:
            t.join()
        # Every client left: vLLM aborts their requests and frees their KV at once.
        idle = _poll_metrics(srv.url, lambda s: prom.total(s, "fleetwise:aborted_requests_total") == 5)
    assert (running(loaded), waiting(loaded)) == (2, 3)
    assert 0 < prom.total(loaded, "vllm:kv_cache_usage_perc") < 0.01
    assert prom.total(idle, "fleetwise:aborted_requests_total") == 5
    assert (running(idle), waiting(idle), prom.total(idle, "vllm:kv_cache_usage_perc")) == (0, 0, 0)
    assert not idle.get("vllm:request_success_total")  # none finished: no success sample at all
    assert eng.scheduler.used_blocks() == 0 and not eng.requests


def test_non_streaming_request_aborted_when_its_client_times_out():
    eng = EmulatedEngine("llama-3-8b", "h100-sxm", speedup=0.01)
    with BackgroundServer(create_engine_app(eng)) as srv:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url + "/v1/completions", json={"prompt": "abcd" * 100, "max_tokens": 500}, timeout=1.0)
        idle = _poll_metrics(srv.url, lambda s: prom.total(s, "fleetwise:aborted_requests_total") == 1)
    assert prom.total(idle, "fleetwise:aborted_requests_total") == 1
    assert prom.total(idle, "vllm:num_requests_running") == 0 and eng.scheduler.used_blocks() == 0


def test_non_streaming_request_aborted_when_its_client_leaves_while_tokens_flow():
    # Tokens come every ~13 ms (half real time), far more often than the 0.25 s disconnect poll;
    # the 8,000 tokens would take well over the hang guard if the client's leaving went unnoticed.
    eng = EmulatedEngine("llama-3-8b", "h100-sxm", speedup=0.5)
    with BackgroundServer(create_engine_app(eng)) as srv:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url + "/v1/completions", json={"prompt": "abcd", "max_tokens": 8000}, timeout=1.0)
        idle = _poll_metrics(srv.url, lambda s: prom.total(s, "fleetwise:aborted_requests_total") == 1, timeout=30.0)
    assert prom.total(idle, "fleetwise:aborted_requests_total") == 1
    assert not idle.get("vllm:request_success_total")  # it did not run to its end
    assert prom.total(idle, "vllm:num_requests_running") == 0 and eng.scheduler.used_blocks() == 0


def test_prefill_and_decode_roles_exchange_kv_transfer_params():
    prefill = EmulatedEngine(role="prefill")
    decode = EmulatedEngine(role="decode")
    with BackgroundServer(create_engine_app(prefill)) as p, BackgroundServer(create_engine_app(decode)) as d:
        prompt = "word " * 4000
        params = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None, "remote_block_ids": None, "remote_host": None, "remote_port": None}
        r = httpx.post(p.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1, "kv_transfer_params": params}, timeout=30).json()
        kv = r["kv_transfer_params"]
        assert kv["do_remote_prefill"] is True and kv["remote_engine_id"] == prefill.engine_id and len(kv["remote_block_ids"]) == 5000 // 16 + 1
        # The decode engine skips the prompt: its first token costs one token after 4,999 cached ones.
        first, payloads = timed_stream(d.url + "/v1/completions", {"prompt": prompt, "max_tokens": 2, "stream": True, "kv_transfer_params": kv})
    # The engine's own account of its work (the cost model's predictions, not the wall clock, which a
    # loaded machine stretches): the decode engine prefilled one token, not the 5,000-token prompt.
    one_token = decode.cost.iteration_seconds([(1, 4999, True)], [])
    assert decode.iterations == 2 and one_token <= decode.predicted_seconds < prefill.predict_ttft(5000) / 2
    assert first >= one_token * 0.9
    assert payloads[-1] == "[DONE]"
