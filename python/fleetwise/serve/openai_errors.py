"""OpenAI-style error responses and request-body parsing shared by the router and the engine."""

from __future__ import annotations


def error_response(status: int, message: str, kind: str = "BadRequestError", headers: dict | None = None):
    """A JSON error in the OpenAI API's shape (as vLLM returns them)."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status_code=status, headers=headers)


async def json_body(request):
    """The request's JSON object, or an error response saying why it is not one."""
    try:
        body = await request.json()
    except Exception:
        return None, error_response(400, "the request body is not JSON")
    if not isinstance(body, dict):
        return None, error_response(400, "the request body must be a JSON object")
    return body, None
