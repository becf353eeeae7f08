"""Request text helpers shared by the router and the emulated engine.

Neither server loads a tokenizer. Token counts are approximated as one token per
:data:`CHARS_PER_TOKEN` characters of prompt text (rounded up, at least one) — close to what BPE
tokenizers of Llama-class models give on English text. A prompt given as a list of token ids counts
exactly. The emulated engine's output is deterministic dummy text, one word per token.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

CHARS_PER_TOKEN = 4
"""Characters of text taken as one token."""

_WORDS = ("the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")


def _show(value: Any, limit: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "..."


def _all_ids(values: list) -> bool:
    """Whether every value is an integer (not a boolean): token ids."""
    return set(map(type, values)) == {int} or all(isinstance(t, int) and not isinstance(t, bool) for t in values)


def _prompt_ids(ids: list, where: str) -> list[int]:
    if not _all_ids(ids):
        raise ValueError(f"{where} must be text or a list of integer token ids")
    return list(ids)


def _messages_text(messages: Any) -> str:
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list of message objects, got {_show(messages)}")
    if not messages:  # vLLM: a chat needs at least one message
        raise ValueError("messages must hold at least one message, got an empty list")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with role and content, got {_show(m)}")
        role, content = m.get("role", "user"), m.get("content", "")
        if not isinstance(role, str):
            raise ValueError(f"messages[{i}].role must be text, got {_show(role)}")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = []
            for j, p in enumerate(content):
                if not isinstance(p, dict):
                    raise ValueError(f"messages[{i}].content[{j}] must be a content-part object, got {_show(p)}")
                t = p.get("text", "")
                if not isinstance(t, str):
                    raise ValueError(f"messages[{i}].content[{j}].text must be text, got {_show(t)}")
                texts.append(t)
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be text, a list of content parts or null, got {_show(content)}")
        parts.append(f"{role}: {content or ''}\n")
    return "".join(parts)


def _prompt(prompt: Any) -> str | list[int]:
    if isinstance(prompt, list):
        if prompt and _all_ids(prompt):
            return list(prompt)
        if len(prompt) == 1 and isinstance(prompt[0], str) and prompt[0]:
            return prompt[0]
        if len(prompt) == 1 and isinstance(prompt[0], list):
            if not prompt[0]:  # vLLM: an empty prompt is refused, as token ids too
                raise ValueError("prompt[0] is an empty list of token ids: the prompt cannot be empty")
            return _prompt_ids(prompt[0], "prompt[0]")
        if len(prompt) == 1 and prompt[0] == "":
            raise ValueError("prompt is required and cannot be empty: give text or a list of integer token ids")
        raise ValueError("only one prompt per request is supported: prompt must be text, a list of token ids, or a list holding one of those")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text or a list of integer token ids, got {_show(prompt)}")
    return prompt


def prompt_text(body: dict[str, Any], chat: bool) -> str | list[int]:
    """The prompt of an OpenAI request: for ``/v1/completions`` (``chat`` false) its ``prompt``
    (text or token ids), for ``/v1/chat/completions`` its ``messages`` flattened to
    ``role: content`` lines. Each endpoint reads only its own field, as vLLM does.

    Raises ValueError naming the field when that field is missing or has a shape the API does not
    allow (``messages`` not a non-empty list of objects, content neither text nor a list of parts,
    a ``prompt`` that is empty or neither text nor token ids, or more than one prompt)."""
    if chat:
        if body.get("messages") is None:
            hint = " (prompt is read by /v1/completions only)" if "prompt" in body else ""
            raise ValueError(f"messages is required on /v1/chat/completions: give a list of message objects{hint}")
        return _messages_text(body["messages"])
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:  # vLLM: the prompt must be given and not empty
        hint = " (messages is read by /v1/chat/completions only)" if prompt is None and "messages" in body else ""
        raise ValueError(f"prompt is required and cannot be empty: give text or a list of integer token ids{hint}")
    return _prompt(prompt)


INT_FIELDS = {"n": 1, "best_of": 1, "top_k": None, "seed": None, "min_tokens": 0, "top_logprobs": 0}
"""Sampling fields that must be whole numbers (or null), with their least value (None: any)."""
NUMBER_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "length_penalty")
"""Sampling fields that must be numbers (or null)."""


def sampling_settings(body: dict[str, Any]) -> None:
    """Checks the common sampling fields as vLLM's request model does (pydantic's lax mode: a
    whole number, a numeric string or a boolean is an integer; a number, a numeric string or a
    boolean is a number; anything else is refused), then ``n`` at least 1, ``temperature`` at
    least 0 and ``top_p`` in (0, 1], as vLLM's sampling parameters. Raises ValueError naming the
    field."""
    from pydantic import TypeAdapter, ValidationError

    values: dict[str, float] = {}
    for keys, adapter, what in ((INT_FIELDS, TypeAdapter(int), "an integer"), (NUMBER_FIELDS, TypeAdapter(float), "a number")):
        for key in keys:
            v = body.get(key)
            if v is None:
                continue
            try:
                values[key] = adapter.validate_python(v)
            except ValidationError:
                raise ValueError(f"{key} must be {what}, got {_show(v)}") from None
    for key, least in INT_FIELDS.items():
        if least is not None and key in values and values[key] < least:
            raise ValueError(f"{key} must be at least {least}, got {_show(body[key])}")
    if (t := values.get("temperature")) is not None and not t >= 0:
        raise ValueError(f"temperature must be at least 0, got {_show(body['temperature'])}")
    if (p := values.get("top_p")) is not None and not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {_show(body['top_p'])}")


def approx_tokens(prompt: str | list[int]) -> int:
    """Approximate token count: ``ceil(chars / CHARS_PER_TOKEN)`` for text, the length for token ids."""
    if isinstance(prompt, list):
        return max(len(prompt), 1)
    return max(math.ceil(len(prompt) / CHARS_PER_TOKEN), 1)


MAX_PREFIX_BLOCKS = 1 << 15
"""Leading blocks of a prompt the router hashes (2 MiB of text at 64 characters a block, 512k
token ids at 16): a longer prompt's later blocks are not matched, so that one huge prompt cannot
hold the router for seconds."""


def prefix_hashes(prompt: str | list[int], block_chars: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's full leading blocks of ``block_chars`` characters (or
    ``block_chars // CHARS_PER_TOKEN`` token ids), at most :data:`MAX_PREFIX_BLOCKS` of them:
    hash ``i`` covers everything up to block ``i``."""
    if isinstance(prompt, list):
        size = max(block_chars // CHARS_PER_TOKEN, 1)
        end = min(len(prompt) - size + 1, MAX_PREFIX_BLOCKS * size)
        blocks = [",".join(map(str, prompt[i : i + size])).encode() for i in range(0, end, size)]
    else:
        data = prompt[: MAX_PREFIX_BLOCKS * block_chars].encode("utf-8", "surrogatepass")
        end = min(len(data) - block_chars + 1, MAX_PREFIX_BLOCKS * block_chars)
        blocks = [data[i : i + block_chars] for i in range(0, end, block_chars)]
    out, prev = [], b""
    for b in blocks:
        prev = hashlib.blake2b(prev + b, digest_size=8).digest()
        out.append(int.from_bytes(prev, "big"))
    return tuple(out)


MAX_LOGGED_USER = 256
"""Characters of a request's ``user`` field kept in the router's and the engine's request logs."""


def logged_user(value: Any) -> str | None:
    """A request's ``user`` field as the logs keep it: text up to :data:`MAX_LOGGED_USER`
    characters (longer text cut, with ``...``), anything else shown the same way; None if absent."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_LOGGED_USER else text[:MAX_LOGGED_USER] + "..."


def dummy_token(i: int) -> str:
    """The emulated engine's ``i``-th output token (deterministic filler text)."""
    return _WORDS[i % len(_WORDS)]


def max_tokens(body: dict[str, Any], default: int) -> int:
    """The request's output limit: ``max_completion_tokens`` or ``max_tokens``, else ``default``.

    Raises ValueError unless the value is a whole number of at least 0 (``16.0`` is read as 16;
    engines reject 0 themselves where they need at least one token)."""
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError(f"{key} must be a whole number of tokens, got {_show(v)}")
        if v < 0:
            raise ValueError(f"{key} must be at least 0, got {_show(v)}")
        return int(v)
    return default


def stream_settings(body: dict[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of a request: ``stream`` must be a boolean (or absent/null),
    ``stream_options`` an object (or absent/null) whose ``include_usage`` is a boolean. Raises
    ValueError naming the field otherwise."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ValueError(f"stream must be true or false, got {_show(stream)}")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not isinstance(options, dict):
        raise ValueError(f"stream_options must be an object such as {{\"include_usage\": true}}, got {_show(options)}")
    usage = options.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise ValueError(f"stream_options.include_usage must be true or false, got {_show(usage)}")
    return bool(stream), bool(usage)
