"""Replaying one request sequence through a router and finding which engine served each request,
to compare routers (``fleetwise serve-router`` against vllm-router) on the same requests.

The engine that served a request is read from the engines themselves, so any router can be
compared: requests are sent one at a time, and after each one's first streamed token the
engines' ``vllm:prompt_tokens_total`` counters show which engine computed its prompt. With
``hold=True`` every stream stays open (unread) until the whole sequence is sent, so a router's
in-flight load at each decision is exactly the requests it placed before — deterministic for
routers that count in-flight requests (vllm-router) or outstanding tokens (fleetwise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from fleetwise.serve import prom


@dataclass
class Replay:
    """Which engine served each request, by index into the engine list given to :func:`replay`."""

    choices: list[int]
    engines: list[str]


def _prompt_counters(client, engines: Sequence[str]) -> list[float]:
    """Each engine's ``vllm:prompt_tokens_total``. A scrape whose pooled connection the engine had
    closed ("Server disconnected", seen on a loaded CI machine) is retried on a new one, twice.
    Raises RuntimeError naming the engine when its ``/metrics`` cannot be read or parsed."""
    import httpx

    def scrape(e: str) -> str:
        for _ in range(2):
            try:
                return client.get(e + "/metrics").text
            except httpx.RemoteProtocolError:
                pass
        return client.get(e + "/metrics").text

    out = []
    for e in engines:
        try:
            out.append(prom.total(prom.parse(scrape(e)), "vllm:prompt_tokens_total") or 0.0)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"engine {e}: its /metrics could not be read: {exc!r}") from None
        except ValueError as exc:
            raise RuntimeError(f"engine {e}: its /metrics is not a Prometheus exposition: {exc}") from None
    return out


def replay(router: str, engines: Sequence[str], prompts: Sequence[str | list[int]], model: str | None = None, max_tokens: int = 256, hold: bool = True,
           timeout: float = 30.0, extra: dict | None = None) -> Replay:
    """Sends ``prompts`` (text or token ids) in order to ``router``'s ``/v1/completions`` (streamed) and attributes each
    to the engine whose prompt-token counter grew. Raises RuntimeError when none or several grew, and
    when the router or an engine cannot be reached or answers an error."""
    import httpx

    choices, open_streams = [], []
    with httpx.Client(timeout=timeout) as client:
        before = _prompt_counters(client, engines)
        try:
            for i, p in enumerate(prompts):
                body = {"prompt": p, "max_tokens": max_tokens, "stream": True, "ignore_eos": True, **(extra or {})}
                if model is not None:
                    body["model"] = model
                cm = client.stream("POST", router + "/v1/completions", json=body)
                try:
                    resp = cm.__enter__()
                except httpx.HTTPError as exc:
                    raise RuntimeError(f"request {i}: the router {router} could not be reached: {exc!r}") from None
                try:
                    if resp.status_code != 200:
                        raise RuntimeError(f"request {i}: the router {router} answered {resp.status_code} {resp.read()[:300]!r}")
                    lines = resp.iter_lines()
                    for line in lines:
                        if line.startswith("data: "):
                            break
                except BaseException:
                    cm.__exit__(None, None, None)
                    raise
                open_streams.append(cm)  # closed at the end (or below, when not held), however the replay ends
                deadline = time.monotonic() + timeout
                while True:
                    after = _prompt_counters(client, engines)
                    grew = [k for k, (a, b) in enumerate(zip(after, before)) if a > b]
                    if grew or time.monotonic() > deadline:
                        break
                    time.sleep(0.005)
                if len(grew) != 1:
                    raise RuntimeError(f"request {i}: the prompt-token counters of {len(grew)} engines grew; cannot attribute it")
                choices.append(grew[0])
                before = after
                if not hold:
                    for _ in lines:
                        pass
                    open_streams.remove(cm)
                    cm.__exit__(None, None, None)
        finally:
            for cm in open_streams:
                cm.__exit__(None, None, None)
    return Replay(choices=choices, engines=list(engines))


def shared_prefix_prompts(groups: int = 4, per_group: int = 4, prefix_chars: int | Sequence[int] = 600, suffix_chars: int = 120, seed: int = 0) -> list[str]:
    """Prompts in ``groups`` that share a system prompt (``prefix_chars`` characters, or one length
    per group), each with its own ``suffix_chars``-character question; interleaved (one of each
    group in turn), so a router must remember prefixes to keep a group together."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november"]

    def text(n: int) -> str:
        out = ""
        while len(out) < n:
            out += rng.choice(words) + " "
        return out[:n]

    lengths = [prefix_chars] * groups if isinstance(prefix_chars, int) else list(prefix_chars)
    if len(lengths) != groups:
        raise ValueError(f"prefix_chars: {len(lengths)} lengths for {groups} groups")
    prefixes = [f"system {g}: " + text(n - 10) for g, n in enumerate(lengths)]
    return [prefixes[g] + f" question {q}: " + text(suffix_chars) for q in range(per_group) for g in range(groups)]


def agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Fraction of positions where two choice sequences agree."""
    if len(a) != len(b) or not a:
        raise ValueError("the sequences must be equally long and not empty")
    return sum(x == y for x, y in zip(a, b)) / len(a)
