"""OpenAI-style error responses and request-body parsing shared by the router and the engine."""

from __future__ import annotations

import json
import math
from typing import Any


def error_payload(status: int, message: str, kind: str = "BadRequestError") -> dict[str, Any]:
    """The body of an error in the OpenAI API's shape (as vLLM sends them, also as a stream event)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def error_response(status: int, message: str, kind: str = "BadRequestError", headers: dict | None = None):
    """A JSON error in the OpenAI API's shape (as vLLM returns them)."""
    from fastapi.responses import JSONResponse

    return JSONResponse(error_payload(status, message, kind), status_code=status, headers=headers)


def error_event(status: int, message: str, kind: str) -> bytes:
    """A server-sent event carrying an error, as vLLM sends one when a stream fails midway."""
    return b"data: " + json.dumps(error_payload(status, message, kind)).encode() + b"\n\n"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def unreadable_value(value: Any) -> str | None:
    """Why a parsed JSON body cannot be served (a number that does not fit a double, such as
    ``1e400``, or ``NaN``; a string with a lone UTF-16 surrogate, such as ``"\\ud800"``), naming the
    field path; None when every value is fine."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        v, path = stack.pop()
        where = path or "the body"
        if isinstance(v, float):
            if not math.isfinite(v):
                return f"{where}: the number is not finite or does not fit a 64-bit float (parsed as {v})"
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"{where}: the text has a lone surrogate {v[e.start]!r} at character {e.start} ({_short(v)!r}), which is not valid Unicode"
        elif isinstance(v, dict):
            for k, x in reversed(list(v.items())):
                key = f"{path}.{k}" if path else str(k)
                stack.append((x, key))
                stack.append((k, f"{key} (the key)"))
        elif isinstance(v, list):
            # Whole numbers, booleans and nulls are always fine: a list of token ids is skipped
            # without a path per element (a 20 MB prompt of ids took seconds).
            if set(map(type, v)) <= _ALWAYS_READABLE:
                continue
            stack.extend((x, f"{path}[{i}]") for i, x in reversed(list(enumerate(v))) if type(x) not in _ALWAYS_READABLE)
    return None


_ALWAYS_READABLE = {int, bool, type(None)}
"""JSON value types ``unreadable_value`` never refuses."""


async def json_body(request):
    """The request's JSON object, or an error response (400) saying why it is not one."""
    try:
        body = await request.json()
    except Exception:
        return None, error_response(400, "the request body is not JSON")
    if not isinstance(body, dict):
        return None, error_response(400, "the request body must be a JSON object")
    if (why := unreadable_value(body)) is not None:
        return None, error_response(400, why)
    return body, None
