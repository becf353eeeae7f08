"""Bounds on what one request costs the router and the emulated engine: a huge prompt's prefix
hashing, a huge ``user`` field in the logs, the engine's request log."""

from __future__ import annotations

import json

from fleetwise.serve.openai_errors import unreadable_value
from fleetwise.serve.text import MAX_LOGGED_USER, MAX_PREFIX_BLOCKS, logged_user, prefix_hashes, prompt_text


def test_prefix_hashes_stop_after_the_leading_blocks_but_keep_their_values():
    ids = list(range(MAX_PREFIX_BLOCKS * 16 + 5000))
    long = prefix_hashes(ids, 64)
    assert len(long) == MAX_PREFIX_BLOCKS
    # The leading blocks hash as before: a shorter prompt with the same start matches them all.
    short = prefix_hashes(ids[:16 * 100 + 3], 64)
    assert len(short) == 100 and long[:100] == short
    chars = "abcd" * (MAX_PREFIX_BLOCKS * 16 + 10)
    assert len(prefix_hashes(chars, 64)) == MAX_PREFIX_BLOCKS
    assert prefix_hashes(chars, 64)[:7] == prefix_hashes(chars[: 64 * 7 + 1], 64)


def test_a_long_list_of_token_ids_is_read_and_odd_values_inside_lists_are_still_found():
    body = json.loads(json.dumps({"prompt": list(range(200_000)), "max_tokens": 4}))
    assert unreadable_value(body) is None
    assert prompt_text(body, False) == list(range(200_000))
    assert unreadable_value({"prompt": [1, 2, float("nan")]}) .startswith("prompt[2]: the number is not finite")
    assert unreadable_value({"a": [1, [None, True, "\ud800"]]}).startswith("a[1][2]: the text has a lone surrogate")
    assert unreadable_value({"a": [1, {"b": float("inf")}]}).startswith("a[1].b: the number is not finite")


def test_logged_user_is_cut_to_its_limit():
    assert logged_user(None) is None
    assert logged_user("alice") == "alice"
    long = logged_user("u" * 10_000_000)
    assert len(long) == MAX_LOGGED_USER + 3 and long.endswith("...")
    assert logged_user({"id": 7}) == "{'id': 7}"


def test_the_emulated_engines_request_log_keeps_the_latest(monkeypatch):
    from fastapi.testclient import TestClient

    from fleetwise.serve import engine_app
    from fleetwise.serve.emulator import EmulatedEngine

    monkeypatch.setattr(engine_app, "RECEIVED_LOG", 3)
    app = engine_app.create_engine_app(EmulatedEngine("llama-3-8b", "h100-sxm", speedup=1e6))
    with TestClient(app) as client:
        for i in range(5):
            r = client.post("/v1/completions", json={"prompt": "hello there", "max_tokens": 2, "user": f"u{i}" + "x" * (1000 if i == 4 else 0)})
            assert r.status_code == 200, r.text
        got = client.get("/fleetwise/requests").json()["requests"]
    assert [g["user"][:2] for g in got] == ["u2", "u3", "u4"]
    assert len(got[-1]["user"]) == MAX_LOGGED_USER + 3
