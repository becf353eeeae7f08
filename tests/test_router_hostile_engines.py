"""``fleetwise serve-router`` in front of engines that misbehave in ways tests/test_router_failover.py
does not cover: an engine that answers garbage as server-sent events, an error status with a body
that is not JSON, a stream kept open after ``[DONE]``, and clients that leave while the router
waits for an engine's answer. Also the replay helper of ``fleetwise.serve.compare`` against
endpoints that cannot be reached.

Everything runs in-process on 127.0.0.1 (a small fake engine and emulated engines, each a
BackgroundServer stopped by the test that started it). Timeouts are hang guards only: no test
asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx_sse")
httpx = pytest.importorskip("httpx")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import PlainTextResponse, Response, StreamingResponse  # noqa: E402

from fleetwise.policy import create  # noqa: E402
from fleetwise.serve import prom  # noqa: E402
from fleetwise.serve.background import BackgroundServer  # noqa: E402
from fleetwise.serve.compare import replay  # noqa: E402
from fleetwise.serve.emulator import EmulatedEngine  # noqa: E402
from fleetwise.serve.engine_app import create_engine_app  # noqa: E402
from fleetwise.serve.failover import FailoverSettings  # noqa: E402
from fleetwise.serve.router_app import Endpoint, RouterState, create_router_app  # noqa: E402

GUARD = 30.0
"""Hang guard (seconds) for every client call and every wait."""


def chunk(text) -> bytes:
    d = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m", "choices": [{"index": 0, "text": text, "finish_reason": None}]}
    return b"data: " + json.dumps(d).encode() + b"\n\n"


def hostile_engine(release: threading.Event, seen: list):
    """An engine whose answer depends on the prompt: ``garbage`` / ``list`` / ``text-int`` (one
    event, then ``data: this is not json`` / ``data: [1, 2]`` / a chunk whose text is 5),
    ``500-text`` / ``500-empty`` (HTTP 500 with a plain-text / empty body), ``linger`` (a complete
    stream, then the connection stays open until ``release``), ``slow`` (answers nothing, polling
    for its client to leave; appends ``slow-left`` to ``seen`` when it does)."""
    app = FastAPI()

    @app.get("/health")
    async def health():
        return PlainTextResponse("")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        mode = body["prompt"]
        seen.append(mode)
        if mode == "500-text":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if mode == "500-empty":
            return Response(b"", status_code=500)
        if mode == "slow":
            while not release.is_set():
                if await request.is_disconnected():
                    seen.append("slow-left")
                    return Response(b"", status_code=499)
                await asyncio.sleep(0.01)
            return {"choices": []}

        async def events():
            yield chunk("the")
            if mode == "linger":
                yield b"data: [DONE]\n\n"
                while not release.is_set():
                    await asyncio.sleep(0.02)
                return
            yield {"garbage": b"data: this is not json\n\n", "list": b"data: [1, 2]\n\n", "text-int": chunk(5)}[mode]
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def start_router(urls, policy="round-robin", roles=None, **failover) -> tuple[BackgroundServer, RouterState]:
    roles = roles or ["mixed"] * len(urls)
    state = RouterState([Endpoint(u, r) for u, r in zip(urls, roles)], create("router", policy), scrape_interval=0,
                        failover=FailoverSettings(health_interval=0, **failover))
    return BackgroundServer(create_router_app(state)).start(), state


@pytest.fixture
def hostile():
    release, seen = threading.Event(), []
    eng = BackgroundServer(hostile_engine(release, seen)).start()
    r, state = start_router([eng.url], read_timeout=120.0)  # longer than any client here waits
    try:
        yield r, state, seen
    finally:
        release.set()
        r.stop()
        eng.stop()


def sse(text: str) -> list:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def errors_total(r: BackgroundServer) -> float:
    return prom.total(prom.parse(httpx.get(r.url + "/metrics", timeout=GUARD).text), "fleetwise_router_errors_total") or 0.0


def assert_no_load_left(state: RouterState) -> None:
    assert [(e.in_flight, e.outstanding_tokens) for e in state.endpoints] == [(0, 0)] * len(state.endpoints)


@pytest.mark.parametrize("mode, why", [("garbage", "not a JSON object: 'this is not json'"), ("list", "not a JSON object: '[1, 2]'"),
                                       ("text-int", "choices[0].text must be text, got 5")])
def test_a_stream_event_that_is_not_a_completion_chunk_ends_in_an_error_event(hostile, mode, why):
    r, state, _ = hostile
    resp = httpx.post(r.url + "/v1/completions", json={"prompt": mode, "stream": True}, timeout=GUARD)
    events = sse(resp.text)
    assert resp.status_code == 200 and events[0]["choices"][0]["text"] == "the", resp.text
    err = events[1]["error"]
    assert err["type"] == "BadGatewayError" and err["code"] == 502 and err["message"].endswith(why), err
    assert events[2:] == ["[DONE]"]  # the garbage never reaches the client
    assert errors_total(r) == 1
    assert_no_load_left(state)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode, shown", [("500-text", "b'Internal Server Error'"), ("500-empty", "b''")])
def test_an_engine_error_that_is_not_json_becomes_a_json_error(hostile, mode, shown, stream):
    r, state, _ = hostile
    resp = httpx.post(r.url + "/v1/completions", json={"prompt": mode, "stream": stream}, timeout=GUARD)
    assert resp.status_code == 500 and resp.headers["content-type"] == "application/json", resp.text
    err = resp.json()["error"]
    assert err["type"] == "InternalServerError" and err["code"] == 500, err
    assert err["message"].startswith(f"endpoint {state.endpoints[0].name} answered HTTP 500 with something other than a JSON error") and shown in err["message"], err
    assert errors_total(r) == 1
    assert_no_load_left(state)


def test_a_stream_ends_at_done_even_when_the_engine_keeps_the_connection_open(hostile):
    r, state, _ = hostile
    # The client's timeout (GUARD) is shorter than the router's read timeout: reading on after
    # [DONE] would hold the client until it gives up.
    resp = httpx.post(r.url + "/v1/completions", json={"prompt": "linger", "stream": True, "stream_options": {"include_usage": True}}, timeout=GUARD)
    events = sse(resp.text)
    assert events[0]["choices"][0]["text"] == "the" and events[1]["usage"]["completion_tokens"] == 1 and events[2:] == ["[DONE]"], events
    assert errors_total(r) == 0
    assert_no_load_left(state)


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({GUARD:g} s hang guard) for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_before_the_answer_cancels_the_engine_request(hostile, stream):
    r, state, seen = hostile
    with pytest.raises(httpx.TimeoutException):
        httpx.post(r.url + "/v1/completions", json={"prompt": "slow", "stream": stream}, timeout=0.5)
    wait_until(lambda: "slow-left" in seen, "the engine to see the router's upstream request closed")
    wait_until(lambda: state.endpoints[0].in_flight == 0, "the router to release the request's load")
    assert_no_load_left(state)
    assert errors_total(r) == 0 and state.endpoints[0].healthy  # the client left: not the engine's failure
    assert httpx.post(r.url + "/v1/completions", json={"prompt": "garbage", "stream": True}, timeout=GUARD).status_code == 200  # still serving


def test_a_client_that_leaves_during_the_prefill_leg_cancels_it():
    release, seen = threading.Event(), []
    prefill = BackgroundServer(hostile_engine(release, seen)).start()
    decode = BackgroundServer(create_engine_app(EmulatedEngine(role="decode", speedup=5.0))).start()
    r, state = start_router([prefill.url, decode.url], "disaggregated", roles=["prefill", "decode"], read_timeout=120.0)
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(r.url + "/v1/completions", json={"prompt": "slow"}, timeout=0.5)  # the fake prefill engine reads the prompt as its mode
        wait_until(lambda: "slow-left" in seen, "the prefill engine to see the router's upstream request closed")
        wait_until(lambda: state.endpoints[0].in_flight == 0, "the router to release the request's load")
        assert_no_load_left(state)
        assert httpx.get(decode.url + "/fleetwise/requests", timeout=GUARD).json()["requests"] == []  # the decode leg never started
    finally:
        release.set()
        r.stop()
        prefill.stop()
        decode.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_transport_failure_outside_httpx_errors_gets_a_json_502(monkeypatch, stream):
    # What httpx's transport raised once while an engine was killed under load: anyio's socket
    # attributes of a connection the engine reset just as it opened.
    send = httpx.AsyncClient.send

    async def failing_send(self, request, **kwargs):
        if request.url.path == "/v1/completions":
            raise AttributeError("'NoneType' object has no attribute 'getpeername'")
        return await send(self, request, **kwargs)

    with BackgroundServer(create_engine_app(EmulatedEngine(speedup=5.0))) as eng:
        r, state = start_router([eng.url])
        with r:
            monkeypatch.setattr(httpx.AsyncClient, "send", failing_send)  # the router's client only: the test's is synchronous
            resp = httpx.post(r.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": stream}, timeout=GUARD)
            monkeypatch.undo()
            err = resp.json()["error"]
            assert resp.status_code == 502 and err["type"] == "BadGatewayError", resp.text
            assert err["message"] == f"endpoint {state.endpoints[0].name} failed: AttributeError(\"'NoneType' object has no attribute 'getpeername'\")", err
            assert errors_total(r) == 1
            assert_no_load_left(state)
            assert httpx.post(r.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=GUARD).status_code == 200


def test_replay_names_the_router_or_engine_it_cannot_reach():
    with BackgroundServer(create_engine_app(EmulatedEngine(speedup=5.0))) as eng:
        gone = BackgroundServer(create_engine_app(EmulatedEngine()))  # bound, never started: its port refuses
        gone.sock.close()
        with pytest.raises(RuntimeError, match=f"request 0: the router {gone.url} could not be reached: ConnectError"):
            replay(gone.url, [eng.url], ["hello"], max_tokens=2, timeout=GUARD)
        with pytest.raises(RuntimeError, match=f"engine {gone.url}: its /metrics could not be read: ConnectError"):
            replay(eng.url, [eng.url, gone.url], ["hello"], max_tokens=2, timeout=GUARD)
