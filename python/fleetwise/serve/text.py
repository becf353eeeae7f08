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


def prompt_text(body: dict[str, Any]) -> str | list[int]:
    """The prompt of an OpenAI completions or chat request: the ``prompt`` (text or token ids), or
    the chat messages flattened to ``role: content`` lines."""
    if "messages" in body:
        parts = []
        for m in body.get("messages") or []:
            content = m.get("content", "")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{m.get('role', 'user')}: {content or ''}\n")
        return "".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return prompt[0]
        if len(prompt) == 1 and isinstance(prompt[0], list):
            return list(prompt[0])
        raise ValueError("only one prompt per request is supported")
    return str(prompt)


def approx_tokens(prompt: str | list[int]) -> int:
    """Approximate token count: ``ceil(chars / CHARS_PER_TOKEN)`` for text, the length for token ids."""
    if isinstance(prompt, list):
        return max(len(prompt), 1)
    return max(math.ceil(len(prompt) / CHARS_PER_TOKEN), 1)


def prefix_hashes(prompt: str | list[int], block_chars: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's full leading blocks of ``block_chars`` characters (or
    ``block_chars // CHARS_PER_TOKEN`` token ids): hash ``i`` covers everything up to block ``i``."""
    if isinstance(prompt, list):
        size = max(block_chars // CHARS_PER_TOKEN, 1)
        blocks = [",".join(map(str, prompt[i : i + size])).encode() for i in range(0, len(prompt) - size + 1, size)]
    else:
        data = prompt.encode("utf-8", "surrogatepass")
        blocks = [data[i : i + block_chars] for i in range(0, len(data) - block_chars + 1, block_chars)]
    out, prev = [], b""
    for b in blocks:
        prev = hashlib.blake2b(prev + b, digest_size=8).digest()
        out.append(int.from_bytes(prev, "big"))
    return tuple(out)


def dummy_token(i: int) -> str:
    """The emulated engine's ``i``-th output token (deterministic filler text)."""
    return _WORDS[i % len(_WORDS)]


def max_tokens(body: dict[str, Any], default: int) -> int:
    """The request's output limit: ``max_completion_tokens`` or ``max_tokens``, else ``default``."""
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if v is not None:
            return int(v)
    return default
