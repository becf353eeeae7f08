"""``fleetwise serve-router`` under what real deployments do: an engine dies and comes back, an engine
freezes, a stream breaks midway, clients send malformed bodies (its configuration checks: tests/test_router_config.py).

Everything runs in-process on 127.0.0.1 (emulated engines and small fake engines, each a
BackgroundServer stopped by the test that started it). Timeouts passed to httpx are hang guards
only: no test asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import ExitStack

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx_sse")
httpx = pytest.importorskip("httpx")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse  # noqa: E402

from fleetwise.policy import RouteDecision, create  # noqa: E402
from fleetwise.serve import prom  # noqa: E402
from fleetwise.serve.background import BackgroundServer  # noqa: E402
from fleetwise.serve.emulator import EmulatedEngine  # noqa: E402
from fleetwise.serve.engine_app import create_engine_app  # noqa: E402
from fleetwise.serve.failover import FailoverSettings  # noqa: E402
from fleetwise.serve.router_app import Endpoint, RouterState, create_router_app  # noqa: E402

GUARD = 60.0
"""Hang guard (seconds) for every client call and every wait."""


def engine(port: int = 0) -> BackgroundServer:
    return BackgroundServer(create_engine_app(EmulatedEngine(speedup=5.0)), port=port).start()


def name(server: BackgroundServer) -> str:
    return server.url.removeprefix("http://")


def start_router(urls, policy="round-robin", **failover) -> tuple[BackgroundServer, RouterState]:
    state = RouterState([Endpoint(u) for u in urls], create("router", policy) if isinstance(policy, str) else policy, scrape_interval=0,
                        failover=FailoverSettings(**failover))
    return BackgroundServer(create_router_app(state)).start(), state


def metrics(router: BackgroundServer) -> dict:
    return prom.parse(httpx.get(router.url + "/metrics", timeout=GUARD).text)


def value(samples: dict, metric: str, **labels) -> float:
    return sum(v for lbl, v in samples.get(metric, []) if all(lbl.get(k) == x for k, x in labels.items()))


def endpoint_state(router: BackgroundServer) -> dict[str, dict]:
    return {e["name"]: e for e in httpx.get(router.url + "/fleetwise/endpoints", timeout=GUARD).json()["endpoints"]}


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({GUARD:g} s hang guard) for {what}")
        time.sleep(0.05)


def sse(text: str) -> list:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def complete(router: BackgroundServer, i: int, stream: bool = False, **extra) -> httpx.Response:
    body = {"prompt": f"request {i}", "max_tokens": 3, "stream": stream, **extra}
    return httpx.post(router.url + "/v1/completions", json=body, timeout=GUARD)


def assert_no_load_left(router: BackgroundServer) -> None:
    for e in endpoint_state(router).values():
        assert (e["in_flight"], e["outstanding_tokens"]) == (0, 0), e


# -- an engine dies ------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["round-robin", "least-outstanding-tokens"])
def test_a_dead_engine_is_ejected_and_its_request_retried(policy):
    # The dead engine is listed first: least-outstanding-tokens breaks ties towards it.
    with ExitStack() as stack:
        dead, alive = engine(), stack.enter_context(engine())
        dead_name = name(dead)
        dead.stop()
        r, _ = start_router([dead.url, alive.url], policy, health_interval=0)  # no probes: only requests find the dead one
        stack.enter_context(r)
        out = [complete(r, i, stream=i % 2 == 1) for i in range(6)]
        s = metrics(r)
        ep = endpoint_state(r)
    assert [x.status_code for x in out] == [200] * 6
    assert {x.headers["x-fleetwise-endpoint"] for x in out} == {name(alive)}
    assert [x.headers["x-fleetwise-retries"] for x in out] == ["1"] + ["0"] * 5  # only the first one tried the dead engine
    assert sse(out[1].text)[-1] == "[DONE]" and out[0].json()["usage"]["completion_tokens"] == 3
    assert value(s, "fleetwise_router_ejections_total", endpoint=dead_name, check="connect") == 1
    assert value(s, "fleetwise_router_retries_total", endpoint=dead_name) == 1
    assert value(s, "fleetwise_router_endpoint_healthy", endpoint=dead_name) == 0
    assert value(s, "fleetwise_router_endpoint_healthy", endpoint=name(alive)) == 1
    assert value(s, "fleetwise_router_errors_total") == 0
    assert ep[dead_name]["healthy"] is False and "ConnectError" in ep[dead_name]["last_error"]


def test_a_killed_engine_is_ejected_then_readmitted_when_restarted():
    with ExitStack() as stack:
        a, b = stack.enter_context(engine()), engine()
        r, _ = start_router([a.url, b.url], "round-robin", health_interval=0.05)
        stack.enter_context(r)
        try:
            before = [complete(r, i).headers["x-fleetwise-endpoint"] for i in range(4)]
            port, b_name = b.port, name(b)
            b.stop()
            during = [complete(r, i, stream=i % 2 == 0) for i in range(8)]
            wait_until(lambda: not endpoint_state(r)[b_name]["healthy"], "the probe to eject the stopped engine")
            ejected = metrics(r)
            settled = [complete(r, i) for i in range(2)]  # the policy no longer offers the ejected engine
            b = engine(port)  # the same address again
            wait_until(lambda: endpoint_state(r)[b_name]["healthy"], "the probe to re-admit the restarted engine")
            after = [complete(r, i).headers["x-fleetwise-endpoint"] for i in range(4)]
            s = metrics(r)
            received = len(httpx.get(b.url + "/fleetwise/requests", timeout=GUARD).json()["requests"])
        finally:
            b.stop()
    assert sorted(before) == sorted([name(a)] * 2 + [b_name] * 2)
    assert [x.status_code for x in during] == [200] * 8
    assert {x.headers["x-fleetwise-endpoint"] for x in during} == {name(a)}
    assert [(x.status_code, x.headers["x-fleetwise-endpoint"], x.headers["x-fleetwise-retries"]) for x in settled] == [(200, name(a), "0")] * 2
    assert value(ejected, "fleetwise_router_ejections_total", endpoint=b_name) == 1
    assert value(ejected, "fleetwise_router_endpoint_healthy", endpoint=b_name) == 0
    assert sorted(after) == sorted([name(a)] * 2 + [b_name] * 2)  # round-robin over both again
    assert received == 2  # the restarted engine really served them
    assert value(s, "fleetwise_router_readmissions_total", endpoint=b_name) == 1
    assert value(s, "fleetwise_router_endpoint_healthy", endpoint=b_name) == 1


def test_the_policy_sees_only_healthy_endpoints_with_their_own_indices():
    seen = []

    class LastOffered:
        def route(self, request, endpoints):
            seen.append([e.index for e in endpoints])
            return RouteDecision(instance=endpoints[-1].index)

    with ExitStack() as stack:
        e0, e1, e2 = (stack.enter_context(engine()) for _ in range(3))
        r, _ = start_router([e0.url, e2.url, e1.url], LastOffered(), health_interval=0)  # e1 (index 2) goes down
        stack.enter_context(r)
        e1.stop()
        out = [complete(r, i) for i in range(3)]
        log = httpx.get(r.url + "/fleetwise/decisions", timeout=GUARD).json()["decisions"]
    assert seen == [[0, 1, 2], [0, 1], [0, 1], [0, 1]]
    assert [x.headers["x-fleetwise-endpoint"] for x in out] == [name(e2)] * 3  # index 1 is e2, whatever was ejected
    assert [(d["index"], d["attempt"], d["offered"]) for d in log] == [(2, 0, [0, 1, 2]), (1, 1, [0, 1]), (1, 0, [0, 1]), (1, 0, [0, 1])]


def test_every_endpoint_unreachable_gives_502_and_releases_the_load():
    with ExitStack() as stack:
        dead = [engine(), engine()]
        for d in dead:
            d.stop()
        r, _ = start_router([d.url for d in dead], "round-robin", health_interval=0, retries=5)
        stack.enter_context(r)
        before = httpx.get(r.url + "/health", timeout=GUARD)  # nothing has failed yet
        first, second = complete(r, 0), complete(r, 1, stream=True)
        after = httpx.get(r.url + "/health", timeout=GUARD)
        s = metrics(r)
        assert_no_load_left(r)
    assert first.status_code == second.status_code == 502
    assert "no endpoint could be reached (2 tried" in first.json()["error"]["message"]
    assert before.status_code == 200 and after.status_code == 503  # the router is not ready: nothing to route to
    assert after.text.startswith("unhealthy: every engine is ejected (2 of 2; last errors: ")
    assert first.json()["error"]["type"] == "BadGatewayError"
    assert value(s, "fleetwise_router_ejections_total") == 2 and value(s, "fleetwise_router_retries_total") == 2
    assert value(s, "fleetwise_router_errors_total") == 2


# -- frozen and broken engines -------------------------------------------------------------------

def fake_engine(release: threading.Event):
    """An engine whose answer depends on the prompt: ``freeze`` (never answers), ``freeze-mid``
    (one event, then nothing), ``break`` (two events, then the connection breaks), ``truncate`` (two
    events, then a clean end without [DONE]), ``report`` (one event, then vLLM's error event),
    ``choices-int`` / ``delta-str`` (one event, then a chunk whose ``choices`` is 5 / whose delta is
    text), ``html`` (not streamed: a 200 whose body is HTML). A
    frozen handler waits until ``release`` is set (set it before stopping the server)."""
    app = FastAPI()

    def chunk(text: str, usage: bool) -> bytes:
        d = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m", "choices": [{"index": 0, "text": text, "finish_reason": None}]}
        if usage:
            d["usage"] = None
        return b"data: " + json.dumps(d).encode() + b"\n\n"

    async def frozen():
        while not release.is_set():
            await asyncio.sleep(0.02)

    @app.get("/health")
    async def health():
        return PlainTextResponse("")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        mode, usage = body["prompt"], bool((body.get("stream_options") or {}).get("include_usage"))
        if mode == "freeze":
            await frozen()
            return {"choices": []}
        if mode == "html":
            return HTMLResponse("<html>oops</html>")

        async def events():
            yield chunk("the", usage)
            if mode == "freeze-mid":
                await frozen()
                return
            if mode in ("choices-int", "delta-str"):
                yield b'data: {"id": "cmpl-1", "choices": 5}\n\n' if mode == "choices-int" else b'data: {"id": "cmpl-1", "choices": [{"index": 0, "delta": "x"}]}\n\n'
                yield b"data: [DONE]\n\n"
                return
            if mode == "report":
                yield b'data: {"error": {"object": "error", "message": "engine core died", "type": "InternalServerError", "code": 500}}\n\n'
                yield b"data: [DONE]\n\n"
                return
            yield chunk(" quick", usage)
            if mode == "break":
                raise RuntimeError("the engine crashed mid-stream (expected by the test)")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def broken_router():
    release = threading.Event()
    eng = BackgroundServer(fake_engine(release)).start()
    r, state = start_router([eng.url], "round-robin", read_timeout=0.5, health_interval=0)
    try:
        yield r, eng
    finally:
        release.set()
        r.stop()
        eng.stop()


def test_a_frozen_engine_gets_a_504_not_a_hang(broken_router):
    r, eng = broken_router
    plain = httpx.post(r.url + "/v1/completions", json={"prompt": "freeze"}, timeout=GUARD)
    streamed = httpx.post(r.url + "/v1/completions", json={"prompt": "freeze", "stream": True}, timeout=GUARD)
    mid = httpx.post(r.url + "/v1/completions", json={"prompt": "freeze-mid", "stream": True}, timeout=GUARD)
    s = metrics(r)
    assert plain.status_code == streamed.status_code == 504
    for resp in (plain, streamed):
        err = resp.json()["error"]
        assert err["type"] == "GatewayTimeoutError" and err["code"] == 504 and "read timeout" in err["message"], err
    events = sse(mid.text)
    assert mid.status_code == 200 and events[0]["choices"][0]["text"] == "the"
    assert events[1]["error"]["code"] == 504 and "after 1 tokens" in events[1]["error"]["message"] and events[2] == "[DONE]"
    assert value(s, "fleetwise_router_errors_total", endpoint=name(eng)) == 3
    assert value(s, "fleetwise_router_ejections_total", endpoint=name(eng), check="timeout") == 1
    assert_no_load_left(r)


@pytest.mark.parametrize("usage", [False, True])
def test_a_broken_stream_ends_in_an_error_event(broken_router, usage):
    r, eng = broken_router
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    out = {mode: sse(httpx.post(r.url + "/v1/completions", json={"prompt": mode, "stream": True, **extra}, timeout=GUARD).text)
           for mode in ("break", "truncate", "report")}
    s = metrics(r)
    for mode in ("break", "truncate"):
        events = out[mode]
        assert [e["choices"][0]["text"] for e in events[:2]] == ["the", " quick"], events
        assert events[2]["error"]["type"] == "BadGatewayError" and events[2]["error"]["code"] == 502, events
        assert events[3:] == ["[DONE]"]  # no made-up usage chunk after the error
    assert "after 2 tokens" in out["break"][2]["error"]["message"]
    assert "without [DONE]" in out["truncate"][2]["error"]["message"]
    assert out["report"][1]["error"]["message"] == "engine core died" and out["report"][2:] == ["[DONE]"]
    assert value(s, "fleetwise_router_errors_total", endpoint=name(eng)) == 3
    assert_no_load_left(r)


@pytest.mark.parametrize("usage", [False, True])
def test_a_malformed_chunk_ends_the_stream_in_an_error_event(broken_router, usage):
    r, eng = broken_router
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    out = {mode: httpx.post(r.url + "/v1/completions", json={"prompt": mode, "stream": True, **extra}, timeout=GUARD) for mode in ("choices-int", "delta-str")}
    s = metrics(r)
    for mode, why in (("choices-int", "choices must be a list, got 5"), ("delta-str", "choices[0].delta must be an object, got 'x'")):
        assert out[mode].status_code == 200
        events = sse(out[mode].text)
        assert events[0]["choices"][0]["text"] == "the", events
        err = events[1]["error"]
        assert err["type"] == "BadGatewayError" and err["code"] == 502, err
        assert f"endpoint {name(eng)} sent a malformed chunk after 1 tokens: {why}" == err["message"], err
        assert events[2:] == ["[DONE]"]
    assert value(s, "fleetwise_router_errors_total", endpoint=name(eng)) == 2
    assert_no_load_left(r)


def test_a_200_answer_that_is_not_json_gets_a_502(broken_router):
    r, eng = broken_router
    resp = httpx.post(r.url + "/v1/completions", json={"prompt": "html"}, timeout=GUARD)
    assert resp.status_code == 502, resp.text
    err = resp.json()["error"]
    assert err["type"] == "BadGatewayError" and err["code"] == 502
    assert f"endpoint {name(eng)} answered 200 with something other than a JSON object" in err["message"] and "<html>oops" in err["message"]
    assert value(metrics(r), "fleetwise_router_errors_total", endpoint=name(eng)) == 1
    assert_no_load_left(r)


class RaisingPolicy:
    """A user policy whose route() has a bug."""

    def __init__(self, exc: Exception):
        self.exc = exc

    def route(self, request, endpoints):
        raise self.exc


@pytest.mark.parametrize("exc", [TypeError("can't multiply sequence by non-int of type 'float'"), KeyError("weight"), ZeroDivisionError("division by zero")])
def test_an_exception_in_the_policy_gets_a_json_500(exc):
    with engine() as eng:
        r, _ = start_router([eng.url], RaisingPolicy(exc), health_interval=0)
        with r:
            resp = complete(r, 0)
            assert resp.status_code == 500, resp.text
            err = resp.json()["error"]
            assert err["type"] == "InternalServerError" and err["code"] == 500
            assert err["message"].startswith(f"the policy's route() raised {type(exc).__name__}: "), err
            assert_no_load_left(r)


# -- malformed bodies ----------------------------------------------------------------------------

MALFORMED = [
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 1e400}', "max_tokens"),
    ("/v1/completions", '{"prompt": "hi", "temperature": NaN}', "temperature"),
    ("/v1/chat/completions", '{"messages": "hello"}', "messages must be a list"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": 7}]}', "messages[0].content"),
    ("/v1/completions", '{"prompt": "caf\\ud800e"}', "lone surrogate"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\udc00"}]}', "messages[0].content"),
    ("/v1/completions", '{"prompt": "hi", "stream": true, "stream_options": "x"}', "stream_options must be an object"),
    ("/v1/completions", '{"prompt": "hi", "stream": "yes"}', "stream must be true or false"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 2.5}', "max_tokens must be a whole number"),
    ("/v1/completions", '{"prompt": {"text": "hi"}}', "prompt must be text"),
    ("/v1/completions", '[1, 2]', "JSON object"),
    ("/v1/completions", '{"messages": [{"role": "user", "content": "hi"}]}', "prompt is required"),
    ("/v1/chat/completions", '{"prompt": "hi"}', "messages is required on /v1/chat/completions"),
    ("/v1/chat/completions", '{"messages": []}', "messages must hold at least one message"),
    ("/v1/completions", '{"prompt": [[]]}', "prompt[0] is an empty list of token ids"),
    ("/v1/completions", '{"prompt": []}', "prompt is required and cannot be empty"),
    ("/v1/completions", '{"prompt": "hi", "n": "two"}', "n must be an integer, got 'two'"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "n": 1.5}', "n must be an integer"),
    ("/v1/completions", '{"prompt": "hi", "n": 0}', "n must be at least 1"),
    ("/v1/completions", '{"prompt": "hi", "temperature": "hot"}', "temperature must be a number, got 'hot'"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "top_p": false}', "top_p must be in (0, 1]"),  # false is 0, as in vLLM
    ("/v1/completions", '{"prompt": "hi", "temperature": -1}', "temperature must be at least 0"),
    ("/v1/completions", '{"prompt": "hi", "seed": "seven"}', "seed must be an integer"),
    ("/v1/completions", '{"prompt": ', "not JSON"),
]


@pytest.fixture(scope="module")
def engine_and_router():
    with engine() as eng:
        r, _ = start_router([eng.url], "round-robin", health_interval=0)
        with r:
            yield eng, r


@pytest.mark.parametrize("path, raw, message", MALFORMED, ids=[m[1][:30] for m in MALFORMED])
def test_malformed_bodies_get_openai_400s_from_router_and_engine(engine_and_router, path, raw, message):
    eng, r = engine_and_router
    received = len(httpx.get(eng.url + "/fleetwise/requests", timeout=GUARD).json()["requests"])
    for server in (r, eng):
        resp = httpx.post(server.url + path, content=raw.encode(), headers={"content-type": "application/json"}, timeout=GUARD)
        assert resp.status_code == 400, (server.url, resp.text)
        err = resp.json()["error"]
        assert err["type"] == "BadRequestError" and err["code"] == 400 and message in err["message"], (server.url, err)
    assert len(httpx.get(eng.url + "/fleetwise/requests", timeout=GUARD).json()["requests"]) == received  # nothing was served
    assert_no_load_left(r)
    assert complete(r, 0).status_code == 200  # and the router still serves


# -- an engine drops a connection before answering -------------------------------------------------

class DroppingEngine:
    """A raw HTTP/1.1 engine on 127.0.0.1 that reads each request and resets the connection without
    answering for the first ``drops`` requests (what a request sent on a keep-alive connection the
    engine is closing meets), then answers a two-event stream or a JSON completion."""

    def __init__(self, drops: int):
        import socket

        self.drops, self.requests = drops, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import socket
        import struct

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests += 1
                if self.requests <= self.drops:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
                    continue
                if json.loads(body).get("stream"):
                    events = [{"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [{"index": 0, "text": "ok", "finish_reason": None}]},
                              {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}]
                    payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
                    kind = b"text/event-stream"
                else:
                    payload, kind = json.dumps({"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": "ok"}]}).encode(), b"application/json"
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-length: " + str(len(payload)).encode() + b"\r\nconnection: close\r\n\r\n" + payload)

    def stop(self) -> None:
        self.sock.close()
        self.thread.join(GUARD)


@pytest.mark.parametrize("stream", [False, True])
def test_a_connection_dropped_before_the_answer_is_sent_once_more(stream):
    eng = DroppingEngine(drops=1)
    r, _ = start_router([eng.url], "round-robin", health_interval=0)
    try:
        resp = complete(r, 0, stream=stream)
        assert resp.status_code == 200, resp.text
        assert eng.requests == 2  # dropped once, answered on the second connection
        if stream:
            assert [e["choices"][0]["text"] for e in sse(resp.text)[:1]] == ["ok"] and sse(resp.text)[-1] == "[DONE]"
        else:
            assert resp.json()["choices"][0]["text"] == "ok"
        assert_no_load_left(r)
    finally:
        r.stop()
        eng.stop()


def test_an_engine_that_drops_every_connection_gets_a_502_after_one_more_try():
    eng = DroppingEngine(drops=10)
    r, _ = start_router([eng.url], "round-robin", health_interval=0)
    try:
        resp = complete(r, 0, stream=True)
        assert resp.status_code == 502 and resp.json()["error"]["type"] == "BadGatewayError", resp.text
        assert eng.requests == 2
        assert value(metrics(r), "fleetwise_router_errors_total", endpoint=name(eng)) == 1
        assert_no_load_left(r)
    finally:
        r.stop()
        eng.stop()


def test_a_disaggregated_router_is_unhealthy_while_a_whole_role_is_ejected():
    from fleetwise.serve.failover import EndpointHealth

    eps = [Endpoint("http://p0:1", "prefill", "p0"), Endpoint("http://d0:1", "decode", "d0"), Endpoint("http://d1:1", "decode", "d1")]
    health = EndpointHealth(eps, FailoverSettings(eject_after=1))
    assert health.unservable() is None
    health.failed(1, "connect", "refused")
    assert health.unservable() is None  # d1 still decodes
    health.failed(2, "health", "HTTP 500")
    assert health.unservable() == "every decode engine is ejected"
    health.succeeded(2, readmit=True)
    assert health.unservable() is None
    mixed = [Endpoint("http://m:1", "mixed", "m"), Endpoint("http://p:1", "prefill", "p")]
    health = EndpointHealth(mixed, FailoverSettings(eject_after=1))
    health.failed(1, "connect", "refused")
    assert health.unservable() is None  # the mixed engine serves whole requests
