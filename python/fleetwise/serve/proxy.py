"""Forwarding one OpenAI request through ``fleetwise serve-router``.

:func:`forward` validates the body (malformed ones get an OpenAI-style 400), asks the router state
for a decision, and sends the request (and, for a disaggregated decision, its prefill leg first).
A connection that fails before any byte reached the engine is retried on another endpoint (see
:mod:`fleetwise.serve.failover`); a connection the engine closed before answering anything (the
keep-alive race: an idle pooled connection the engine is closing just as the request goes out) is
sent once more to the same engine on a new connection; every other failure is answered: a read timeout with 504, other
transport errors with 502, and a 200 answer that is not a JSON object with 502 too. A streamed answer is relayed event by event with httpx-sse; when the
engine fails midway (or sends a chunk that is not a completion chunk) the client gets an error event (``data: {"error": {...}}``, then
``data: [DONE]``, as vLLM ends a failed stream), never a made-up usage chunk. Whatever a request
added to the endpoints' load counters is released on every path.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse
from httpx_sse import EventSource, ServerSentEvent, SSEError

from fleetwise.serve.openai_errors import error_event, error_response as _error, json_body
from fleetwise.serve.router_app import BadRequest, TrackedLoad, prefill_request
from fleetwise.serve.text import stream_settings

CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
"""Failures that happen before the engine got any byte of the request: safe to retry elsewhere."""
DROPPED_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
"""Failures of a connection that the engine closed or reset before its answer arrived (a streamed
answer: before its status line): sent once more on a new connection (the engine answered nothing, and vLLM aborts a request whose connection
closed, so nothing is lost or answered twice)."""
TRANSPORT_FAILURES = (httpx.HTTPError, OSError, AttributeError, RuntimeError)
"""Failures of an upstream exchange answered with a 502 (a 504 for timeouts) or an error event:
httpx's own errors, and what its transport lets through unwrapped when an engine dies at the wrong
moment (an ``AttributeError: 'NoneType' object has no attribute 'getpeername'`` from anyio when
the engine resets a connection just as it opens, seen while killing an engine under load), which
would otherwise reach the client as a plain-text 500 and a traceback in the log."""
DONE = b"data: [DONE]\n\n"
CLIENT_POLL_S = 0.25
"""How often a request waiting for an engine's answer checks whether its own client is still there."""
CLIENT_GONE = 499
"""Status of the (unread) answer to a client that left before its answer came (nginx's code)."""


class ClientLeft(Exception):
    """The client disconnected while the router was waiting for an engine's answer."""


class Unreached(Exception):
    """The connection to endpoint ``index`` failed before the request was sent."""

    def __init__(self, index: int, error: Exception):
        super().__init__(f"endpoint {index}: {error!r}")
        self.index, self.error = index, error


async def _send(request_fn):
    """``await request_fn()``, once more if the connection was dropped before any answer arrived."""
    try:
        return await request_fn()
    except DROPPED_ERRORS:
        return await request_fn()


async def _send_while_connected(request, request_fn):
    """``await _send(request_fn)`` unless ``request``'s client disconnects first (checked every
    :data:`CLIENT_POLL_S`): then the upstream request is cancelled, which closes its connection so
    that the engine aborts it (as vLLM does when its client leaves), and :class:`ClientLeft` is
    raised. Without a ``request`` (None) it is plain :func:`_send`."""
    if request is None:
        return await _send(request_fn)
    task = asyncio.ensure_future(_send(request_fn))
    answered = False
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_POLL_S)
            if done:
                answered = True
                return task.result()
            if await request.is_disconnected():
                raise ClientLeft()
    finally:
        if not answered:
            task.cancel()
            (result,) = await asyncio.gather(task, return_exceptions=True)
            if isinstance(result, httpx.Response):  # the answer came just as the client left
                await result.aclose()


def _failure(state, i: int, exc: Exception) -> tuple[int, str, str]:
    """(status, OpenAI error type, message) of a transport failure of endpoint ``i`` after the
    request reached it; counts the error, and a read timeout as a failed health check."""
    name = state.endpoints[i].name
    state.m_errors.inc(endpoint=name)
    if isinstance(exc, httpx.TimeoutException):
        state.health.failed(i, "timeout", repr(exc))
        return 504, "GatewayTimeoutError", f"endpoint {name} sent nothing for {state.failover.read_timeout:g} s (the read timeout): {exc!r}"
    return 502, "BadGatewayError", f"endpoint {name} failed: {exc!r}"


def _failure_response(state, i: int, exc: Exception, headers: dict) -> Response:
    status, kind, message = _failure(state, i, exc)
    return _error(status, message, kind, headers)


def _is_json_object(content: bytes) -> bool:
    try:
        return isinstance(json.loads(content), dict)
    except ValueError:  # not JSON, or not UTF-8
        return False


ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError", 422: "UnprocessableEntityError",
               429: "RateLimitError", 502: "BadGatewayError", 503: "ServiceUnavailableError", 504: "GatewayTimeoutError"}
"""OpenAI error types by status, for engine errors the router has to put in words."""


def _engine_error(name: str, status: int, content: bytes, content_type: str | None, headers: dict) -> Response:
    """An engine's error answer passed on with its status: as it is when its body is a JSON object
    (vLLM's errors are), else as a JSON error naming the endpoint and quoting the body (a crashed
    server's plain-text ``Internal Server Error``, an empty body, an HTML page of a proxy)."""
    if _is_json_object(content):
        return Response(content, status_code=status, media_type=content_type, headers=headers)
    kind = ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
    return _error(status, f"endpoint {name} answered HTTP {status} with something other than a JSON error "
                          f"({content_type or 'no content-type'}: {_short(content)})", kind, headers)


def _short(value, limit: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "..."


def malformed_chunk(d: dict) -> str | None:
    """Why a streamed completion chunk cannot be relayed (``choices`` not a list of objects, a
    ``delta`` that is not an object, ``usage`` that is not an object), or None when it can."""
    choices = d.get("choices")
    if choices is not None and not isinstance(choices, list):
        return f"choices must be a list, got {_short(choices)}"
    for i, c in enumerate(choices or ()):
        if not isinstance(c, dict):
            return f"choices[{i}] must be an object, got {_short(c)}"
        delta = c.get("delta")
        if delta is not None and not isinstance(delta, dict):
            return f"choices[{i}].delta must be an object, got {_short(delta)}"
        text = c.get("text")
        if text is not None and not isinstance(text, str):
            return f"choices[{i}].text must be text, got {_short(text)}"
        content = (delta or {}).get("content")
        if content is not None and not isinstance(content, str):
            return f"choices[{i}].delta.content must be text or null, got {_short(content)}"
    usage = d.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return f"usage must be an object or null, got {_short(usage)}"
    return None


def sse_bytes(event: ServerSentEvent) -> bytes:
    """``event`` written back as server-sent-event text."""
    lines = [] if event.event == "message" else [f"event: {event.event}"]
    if event.id:
        lines.append(f"id: {event.id}")
    if event.retry is not None:
        lines.append(f"retry: {event.retry}")
    lines += [f"data: {line}" for line in event.data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


async def forward(state, request, path: str) -> Response:
    """Routes and proxies one ``POST path`` request; retries it while its connection fails."""
    body, bad = await json_body(request)
    if bad is not None:
        return bad
    try:
        stream, wants_usage = stream_settings(body)
    except ValueError as e:
        return _error(400, str(e))
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    fwd_headers = {"x-request-id": request_id}
    if auth := request.headers.get("authorization"):
        fwd_headers["authorization"] = auth
    tried: dict[int, Unreached] = {}

    while True:
        try:
            decision, req, _ = state.route(body, request_id, exclude=frozenset(tried), attempt=len(tried), chat=path.endswith("/chat/completions"))
        except BadRequest as e:
            return _error(400, str(e))
        except ValueError as e:
            return _error(500, str(e), "InternalServerError")
        except LookupError as e:
            if not tried:
                return _error(503, f"no endpoint can serve this request: {e}", "ServiceUnavailableError")
            break
        if tried:
            state.health.m_retries.inc(endpoint=state.endpoints[next(reversed(tried))].name)
        headers = {"x-fleetwise-endpoint": state.endpoints[decision.instance].name, "x-request-id": request_id, "x-fleetwise-retries": str(len(tried))}
        track = TrackedLoad(state)
        try:
            return await _attempt(state, path, body, decision, req, track, fwd_headers, headers, stream, wants_usage, request)
        except ClientLeft:  # nobody reads this answer; the engine was told by the closed connection
            return _error(CLIENT_GONE, "the client disconnected before the answer came", "ClientClosedRequest", headers)
        except Unreached as u:
            tried[u.index] = u
            state.health.failed(u.index, "connect", repr(u.error))
            if len(tried) > state.failover.retries:
                break
        finally:
            if not track.handed_off:
                track.release_all()
    last = next(reversed(tried))
    state.m_errors.inc(endpoint=state.endpoints[last].name)
    reasons = "; ".join(f"{state.endpoints[i].name}: {u.error!r}" for i, u in tried.items())
    return _error(502, f"no endpoint could be reached ({len(tried)} tried: {reasons})", "BadGatewayError", {"x-request-id": request_id, "x-fleetwise-retries": str(len(tried) - 1)})


async def _attempt(state, path: str, body: dict[str, Any], decision, req, track, fwd_headers: dict, headers: dict, stream: bool, wants_usage: bool,
                   request=None) -> Response:
    """Sends one routed attempt. Raises :class:`Unreached` when a leg could not connect, and
    :class:`ClientLeft` when ``request``'s client disconnected while waiting for an engine."""
    client = state.client
    target = state.endpoints[decision.instance]
    upstream = dict(body)
    if decision.prefill is not None:
        p = state.endpoints[decision.prefill]
        headers["x-fleetwise-prefill-endpoint"] = p.name
        track.add(decision.prefill, req.prompt_tokens)
        state.m_requests.inc(endpoint=p.name, leg="prefill")
        try:
            r = await _send_while_connected(request, lambda: client.post(p.url + path, json=prefill_request(body), headers=fwd_headers))
        except CONNECT_ERRORS as e:
            raise Unreached(decision.prefill, e) from None
        except TRANSPORT_FAILURES as e:
            return _failure_response(state, decision.prefill, e, headers)
        finally:
            track.release(decision.prefill)
        state.health.succeeded(decision.prefill)
        if r.status_code != 200:
            state.m_errors.inc(endpoint=p.name)
            return _engine_error(p.name, r.status_code, r.content, r.headers.get("content-type"), headers)
        try:
            kv = r.json().get("kv_transfer_params")
        except (ValueError, AttributeError):
            state.m_errors.inc(endpoint=p.name)
            return _error(502, f"prefill endpoint {p.name} answered something other than a JSON object", "BadGatewayError", headers)
        if kv is not None:
            upstream["kv_transfer_params"] = kv
    state.m_requests.inc(endpoint=target.name, leg="serve" if decision.prefill is None else "decode")
    track.add(decision.instance, req.prompt_tokens)
    if not stream:
        try:
            r = await _send_while_connected(request, lambda: client.post(target.url + path, json=upstream, headers=fwd_headers))
        except CONNECT_ERRORS as e:
            raise Unreached(decision.instance, e) from None
        except TRANSPORT_FAILURES as e:
            return _failure_response(state, decision.instance, e, headers)
        state.health.succeeded(decision.instance)
        if r.status_code != 200:
            state.m_errors.inc(endpoint=target.name)
            return _engine_error(target.name, r.status_code, r.content, r.headers.get("content-type"), headers)
        if not _is_json_object(r.content):
            state.m_errors.inc(endpoint=target.name)
            return _error(502, f"endpoint {target.name} answered 200 with something other than a JSON object "
                               f"({r.headers.get('content-type') or 'no content-type'}: {_short(r.content)})", "BadGatewayError", headers)
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"), headers=headers)

    upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    try:
        resp = await _send_while_connected(request, lambda: client.send(
            client.build_request("POST", target.url + path, json=upstream, headers={**fwd_headers, "accept": "text/event-stream"}), stream=True))
    except CONNECT_ERRORS as e:
        raise Unreached(decision.instance, e) from None
    except TRANSPORT_FAILURES as e:
        return _failure_response(state, decision.instance, e, headers)
    state.health.succeeded(decision.instance)
    if resp.status_code != 200:
        try:
            content = await resp.aread()
        except TRANSPORT_FAILURES as e:
            return _failure_response(state, decision.instance, e, headers)
        finally:
            await resp.aclose()
        state.m_errors.inc(endpoint=target.name)
        return _engine_error(target.name, resp.status_code, content, resp.headers.get("content-type"), headers)
    relay = StreamRelay(state, decision.instance, resp, track, req.prompt_tokens, wants_usage)
    track.handed_off = True
    return RelayResponse(relay, media_type="text/event-stream", headers=headers)


class StreamRelay:
    """Relays one engine's event stream to the client, counting streamed tokens into the
    endpoint's outstanding tokens and ending in an error event when the engine fails midway."""

    def __init__(self, state, index: int, resp: httpx.Response, track, prompt_tokens: int, wants_usage: bool):
        self.state, self.index, self.resp, self.track = state, index, resp, track
        self.prompt_tokens, self.wants_usage = prompt_tokens, wants_usage

    async def close(self) -> None:
        """Releases the request's load and closes the upstream stream (idempotent); closing it
        makes the engine abort a request whose client left."""
        self.track.release_all()
        await self.resp.aclose()

    async def events(self):
        """The events sent to the client."""
        name = self.state.endpoints[self.index].name
        seen_usage, failed, done, generated = False, False, False, 0
        last_id = last_model = obj = None
        try:
            async for ev in EventSource(self.resp).aiter_sse():
                if ev.data.strip() == "[DONE]":
                    if self.wants_usage and not seen_usage and not failed and last_id is not None:
                        u = {"prompt_tokens": self.prompt_tokens, "completion_tokens": generated, "total_tokens": self.prompt_tokens + generated}
                        yield b"data: " + json.dumps({"id": last_id, "object": obj, "created": int(time.time()), "model": last_model, "choices": [], "usage": u}).encode() + b"\n\n"
                    done = True
                    yield DONE
                    return  # the answer is complete: an engine that keeps the connection open after [DONE] must not hold the client
                if not ev.data.strip():  # an event without data (a keep-alive): nothing to relay
                    continue
                try:
                    d = json.loads(ev.data)
                except ValueError:
                    d = None
                if not isinstance(d, dict):  # garbage from the engine: end the stream as a failed one
                    if not failed:
                        self.state.m_errors.inc(endpoint=name)
                    yield error_event(502, f"endpoint {name} sent a malformed chunk after {generated} tokens: not a JSON object: {_short(ev.data)}", "BadGatewayError")
                    yield DONE
                    return
                if d.get("error") is not None:  # the engine reports its own failure: pass it on
                    if not failed:
                        self.state.m_errors.inc(endpoint=name)
                    failed = True
                    yield sse_bytes(ev)
                    continue
                if (why := malformed_chunk(d)) is not None:  # garbage from the engine: end the stream as a failed one
                    if not failed:
                        self.state.m_errors.inc(endpoint=name)
                    yield error_event(502, f"endpoint {name} sent a malformed chunk after {generated} tokens: {why}", "BadGatewayError")
                    yield DONE
                    return
                last_id, last_model, obj = d.get("id", last_id), d.get("model", last_model), d.get("object", obj)
                choices = d.get("choices") or []
                tokens = sum(1 for c in choices if c.get("text") or (c.get("delta") or {}).get("content"))
                if tokens:
                    generated += tokens
                    self.track.add(self.index, tokens)
                if d.get("usage"):
                    seen_usage = True
                if self.wants_usage:
                    yield sse_bytes(ev)
                elif choices:
                    d.pop("usage", None)
                    yield b"data: " + json.dumps(d).encode() + b"\n\n"
        except (*TRANSPORT_FAILURES, SSEError) as exc:
            if done:  # the answer was complete; only the connection's end went wrong
                return
            status, kind, message = _failure(self.state, self.index, exc)
            yield error_event(status, f"the stream broke off after {generated} tokens: {message}", kind)
            yield DONE
            return
        finally:
            await self.close()
        if not done:
            if not failed:
                self.state.m_errors.inc(endpoint=name)
                yield error_event(502, f"endpoint {name} ended the stream after {generated} tokens without [DONE]", "BadGatewayError")
            yield DONE


class RelayResponse(StreamingResponse):
    """A streamed response that closes its :class:`StreamRelay` however the response ends, even
    when the client left before the first event (the event generator never ran)."""

    def __init__(self, relay: StreamRelay, **kwargs):
        super().__init__(relay.events(), **kwargs)
        self.relay = relay

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.close()
