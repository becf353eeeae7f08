"""The emulated engine's HTTP face: vLLM's OpenAI-compatible API and ``/metrics``.

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming as server-sent
events, with the usage-only last chunk when ``stream_options.include_usage`` is set, as vLLM
sends it; ``kv_transfer_params`` in and out), ``GET /v1/models``, ``GET /health``, ``GET /metrics``
(vLLM's metric names) and ``GET /fleetwise/engine`` (the emulated model, GPU and counters).
"""


import asyncio
import json
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager

from fleetwise.serve.emulator import EmulatedEngine
from fleetwise.serve.openai_errors import error_response as _error, json_body
from fleetwise.serve.text import approx_tokens, logged_user, max_tokens, prompt_text, sampling_settings, stream_settings

DEFAULT_MAX_TOKENS = 16
"""Output limit of a request that gives none (the OpenAI completions default)."""
DISCONNECT_POLL_S = 0.25
"""How often a non-streaming request checks whether its client is still connected."""
RECEIVED_LOG = 10_000
"""Requests ``GET /fleetwise/requests`` keeps (the latest; older ones are dropped)."""


def create_engine_app(engine: EmulatedEngine):
    """A FastAPI app serving ``engine``; the engine's loop starts with the app."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="fleetwise emulated engine", lifespan=lifespan)
    app.state.engine = engine
    app.state.received = deque(maxlen=RECEIVED_LOG)

    @app.get("/fleetwise/requests")
    async def received():
        """The last :data:`RECEIVED_LOG` requests received, in order: request id, ``user`` field
        (shortened), approximate prompt tokens."""
        return {"requests": list(app.state.received)}

    @app.get("/health")
    async def health():
        return PlainTextResponse("")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "fleetwise",
                                            "root": engine.model, "parent": None, "max_model_len": engine.max_model_len}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(engine.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/fleetwise/engine")
    async def info():
        return {"model": engine.model, "gpu": engine.gpu, "tp": engine.tp, "role": engine.role, "speedup": engine.speedup, "engine_id": engine.engine_id,
                "num_blocks": engine.num_blocks, "block_size": engine.block_size, "iterations": engine.iterations,
                "predicted_busy_seconds": engine.predicted_seconds, "busy_seconds": engine.busy_seconds}

    async def serve(request: Request, chat: bool):
        body, bad = await json_body(request)
        if bad is not None:
            return bad
        model = body.get("model")
        if model not in (None, engine.served_model_name, engine.model):
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        try:
            prompt = prompt_text(body, chat)
            sampling_settings(body)
            n_prompt = approx_tokens(prompt)
            limit = max_tokens(body, DEFAULT_MAX_TOKENS)
            stream, include_usage = stream_settings(body)
            if body.get("n") not in (None, 1):
                raise ValueError(f"n: the emulated engine serves n=1 only, got {body.get('n')!r}")
            if not isinstance(body.get("kv_transfer_params"), (dict, type(None))):
                raise ValueError(f"kv_transfer_params must be an object, got {body.get('kv_transfer_params')!r}")
            req = engine.submit(n_prompt, limit, request.headers.get("x-request-id"), body.get("kv_transfer_params"))
            app.state.received.append({"request_id": req.request_id, "user": logged_user(body.get("user")), "prompt_tokens": n_prompt, "max_tokens": limit,
                                       "kv_transfer_params": body.get("kv_transfer_params"), "at": time.time()})
        except (ValueError, TypeError) as e:
            return _error(400, str(e))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        name = model or engine.served_model_name

        def usage(completion: int) -> dict:
            return {"prompt_tokens": n_prompt, "total_tokens": n_prompt + completion, "completion_tokens": completion, "prompt_tokens_details": None}

        if stream:
            obj = "chat.completion.chunk" if chat else "text_completion"

            def chunk(choice: dict, u=None) -> bytes:
                d = {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice] if choice else []}
                if include_usage:
                    d["usage"] = u
                return b"data: " + json.dumps(d).encode() + b"\n\n"

            async def events():
                try:
                    async for part in stream_events():
                        yield part
                finally:  # the client disconnected (the server cancels this generator): abort, as vLLM does
                    engine.abort(req)

            async def stream_events():
                if chat:
                    yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None})
                n = 0
                while True:
                    item = await req.tokens.get()
                    if item is None:
                        break
                    n += 1
                    last = n >= req.max_tokens
                    finish = "length" if last else None
                    if chat:
                        c = {"index": 0, "delta": {"content": item[1]}, "logprobs": None, "finish_reason": finish}
                    else:
                        c = {"index": 0, "text": item[1], "logprobs": None, "finish_reason": finish, "stop_reason": None}
                    if last and req.remote_decode:
                        c["kv_transfer_params"] = engine.kv_transfer_params(req)
                    yield chunk(c)
                if include_usage:
                    yield chunk({}, usage(n))
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        text = []
        checked = time.monotonic()
        try:
            while True:
                try:
                    item = await asyncio.wait_for(req.tokens.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    item = False
                # Checked every DISCONNECT_POLL_S whether or not tokens keep coming: a request whose
                # tokens arrive faster than that would otherwise run to its end after its client left.
                if item is False or time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return _error(499, "client disconnected")
                if item is False:
                    continue
                if item is None:
                    break
                text.append(item[1])
        finally:
            engine.abort(req)  # a no-op once finished; frees the KV of a request whose client left
        content = "".join(text)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content, "tool_calls": []}, "logprobs": None, "finish_reason": "length", "stop_reason": None}
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": "length", "stop_reason": None, "prompt_logprobs": None}
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created, "model": name, "choices": [choice],
                             "usage": usage(len(text)), "kv_transfer_params": engine.kv_transfer_params(req)})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await serve(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await serve(request, chat=True)

    return app
