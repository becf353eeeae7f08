"""``fleetwise serve-router``: an OpenAI-compatible HTTP router driven by a fleetwise Router policy.

For each ``POST /v1/completions`` or ``/v1/chat/completions`` the router builds a
:class:`~fleetwise.policy.RequestView` (approximate prompt tokens, chained prompt-block hashes) and
one :class:`~fleetwise.policy.EndpointView` per endpoint from three sources:

* its own bookkeeping: ``outstanding_tokens`` are the prompt plus streamed output tokens of the
  unfinished requests it sent there;
* each engine's ``/metrics``, scraped every ``scrape_interval`` seconds: ``waiting``
  (``vllm:num_requests_waiting``), ``running`` (``vllm:num_requests_running``) and ``kv_usage``
  (``vllm:kv_cache_usage_perc``);
* its approximate prefix index (:class:`~fleetwise.serve.prefix_index.PrefixIndex`):
  ``cached_prefix_tokens`` is how much of this prompt's prefix it sent there before.

The policy sees only the healthy endpoints (each view keeps its index in the full list; see
:mod:`fleetwise.serve.failover` for ejection, re-admission, retries and timeouts). It then asks
the policy for a :class:`~fleetwise.policy.RouteDecision` and proxies the request
(:mod:`fleetwise.serve.proxy`): streamed responses pass through event by event (the router always
asks the engine for usage in the last chunk and drops that chunk again when the client did not ask
for it); with a ``prefill`` endpoint in the decision it runs vLLM's disaggregated-prefill handshake
(see :func:`prefill_request`). Every response carries ``x-fleetwise-endpoint`` (and
``x-fleetwise-prefill-endpoint``), and ``GET /fleetwise/decisions`` lists the decisions made.
"""


import asyncio
import copy
import itertools
import math
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlparse

from fleetwise.errors import ConfigError
from fleetwise.policy.decisions import RouteDecision
from fleetwise.policy.views import EndpointView, RequestView
from fleetwise.policy.watchdog import PolicyTimeout, deadline
from fleetwise.serve import prom
from fleetwise.serve.failover import EndpointHealth, FailoverSettings
from fleetwise.serve.prefix_index import PrefixIndex
from fleetwise.serve.openai_errors import error_response as _error
from fleetwise.serve.text import approx_tokens, logged_user, max_tokens, prefix_hashes, prompt_text, sampling_settings

ROLES = ("mixed", "prefill", "decode")


@dataclass
class Endpoint:
    """One engine behind the router and what the router knows about it."""

    url: str
    role: str = "mixed"
    name: str = ""
    in_flight: int = 0
    outstanding_tokens: int = 0
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    scraped_at: float | None = None
    """When its /metrics was last read successfully (``time.monotonic()``), None if never."""
    healthy: bool = True
    """False while it is ejected (the policy does not see it)."""
    failures: int = 0
    """Failed checks in a row (connects, read timeouts, health probes, scrapes)."""
    last_error: str | None = None
    """The last failed check and its error."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"endpoint {self.url}: role must be one of {', '.join(ROLES)}, not {self.role!r}")
        try:
            u = urlparse(self.url)
        except ValueError as e:  # "Invalid IPv6 URL": an unclosed bracket
            raise ConfigError(f"endpoint {self.url!r} is not an http(s) URL: {e}") from None
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ConfigError(f"endpoint {self.url!r} is not an http(s) URL")
        host_port = u.netloc.rsplit("@", 1)[-1]  # without user:password@, which must not reach names, headers and metrics
        if not u.hostname or any(c.isspace() for c in host_port):
            raise ConfigError(f"endpoint {self.url!r} names no valid host")
        given = ":" in host_port.rsplit("]", 1)[-1]  # a port after the host (IPv6 in brackets)
        try:
            port = u.port  # raises for a port above 65535 or not a number
        except ValueError:
            port = None
        if given and not port:
            raise ConfigError(f"endpoint {self.url!r}: the port must be a number from 1 to 65535")
        self.url = self.url.rstrip("/")
        self.name = self.name or host_port


def _redacted(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part (if any) replaced by ``***``."""
    u = urlparse(url)
    if u.password is None:
        return url
    return u._replace(netloc=f"{u.username}:***@{u.netloc.rsplit('@', 1)[-1]}").geturl()


def parse_endpoint(spec: str) -> Endpoint:
    """``URL`` or ``URL,ROLE`` (role mixed, prefill or decode) as an :class:`Endpoint`."""
    url, _, role = spec.partition(",")
    return Endpoint(url=url.strip(), role=(role.strip() or "mixed"))


PD_PREFILL_PARAMS = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None, "remote_block_ids": None, "remote_host": None, "remote_port": None}
"""``kv_transfer_params`` of the prefill leg, as vLLM's disaggregated-serving proxies send them."""


def prefill_request(body: dict[str, Any]) -> dict[str, Any]:
    """The prefill leg of a disaggregated request, as vLLM's NixlConnector proxy builds it: the same
    request with ``max_tokens=1`` (and ``max_completion_tokens=1`` when given), not streamed, no
    ``stream_options``, and ``kv_transfer_params`` asking for a remote decode. The decode leg is
    the original request plus the ``kv_transfer_params`` the prefill answers."""
    p = copy.deepcopy(body)
    p["max_tokens"] = 1
    if "max_completion_tokens" in p:
        p["max_completion_tokens"] = 1
    p["stream"] = False
    p.pop("stream_options", None)
    p["kv_transfer_params"] = dict(PD_PREFILL_PARAMS)
    return p


@dataclass
class TrackedLoad:
    """One in-flight request's contribution to its endpoints' in-flight count and outstanding
    tokens; whoever adds to it releases it when the request ends, however it ends."""

    state: "RouterState"
    parts: dict[int, int] = field(default_factory=dict)
    handed_off: bool = False
    """Set once a streamed response owns the release (it releases when the stream ends)."""

    def add(self, ep: int, tokens: int) -> None:
        """Counts ``tokens`` more on endpoint ``ep`` (and the request in flight there, once)."""
        e = self.state.endpoints[ep]
        if ep not in self.parts:
            e.in_flight += 1
            self.parts[ep] = 0
        e.outstanding_tokens += tokens
        self.parts[ep] += tokens

    def release(self, ep: int) -> None:
        """Takes back everything counted on ``ep``."""
        if ep in self.parts:
            e = self.state.endpoints[ep]
            e.outstanding_tokens -= self.parts.pop(ep)
            e.in_flight -= 1

    def release_all(self) -> None:
        """Releases every endpoint's share (idempotent)."""
        for ep in list(self.parts):
            self.release(ep)


class BadRequest(ValueError):
    """A request the router cannot read (answered with 400)."""


class RouterState:
    """The router's endpoints, policy, prefix index, decision log and counters."""

    def __init__(self, endpoints: Sequence[Endpoint], policy, block_chars: int = 64, scrape_interval: float = 1.0, log_size: int = 100_000,
                 failover: FailoverSettings | None = None, policy_timeout: float | None = 5.0):
        if not endpoints:
            raise ConfigError("serve-router needs at least one --endpoint")
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ConfigError(f"endpoints must be distinct, got {names}")
        if not hasattr(policy, "route"):
            raise ConfigError(f"the policy {policy!r} has no route(request, endpoints) method")
        roles = {e.role for e in endpoints}
        if getattr(policy, "disaggregated", False) is True and not {"prefill", "decode"} <= roles:
            raise ConfigError("the policy disaggregates (routes prefill/decode pairs) and needs at least one prefill and one decode endpoint "
                              f"(--endpoint URL,prefill and --endpoint URL,decode); got roles {', '.join(e.role for e in endpoints)}")
        self.endpoints = list(endpoints)
        self.policy = policy
        self.policy_timeout = policy_timeout
        """Most seconds one route() call may take (None: no limit); a longer one fails its request
        with a 500 instead of holding the event loop (enforced where the loop runs on the main
        thread, as under ``fleetwise serve-router``)."""
        self.prefixes = PrefixIndex(len(endpoints), block_chars)
        self.scrape_interval = scrape_interval
        self.failover = failover or FailoverSettings()
        self.health = EndpointHealth(self.endpoints, self.failover)
        self.decisions: deque = deque(maxlen=log_size)
        self.count = itertools.count()
        self.client = None
        self.m_requests = prom.Counter("fleetwise_router_requests", "Requests sent (or tried: see retries) to each endpoint, by leg (serve: whole request, prefill, decode).")
        self.m_errors = prom.Counter("fleetwise_router_errors", "Requests that failed, by endpoint: error answers, timeouts, broken streams, connect failures not retried.")
        self.m_in_flight = prom.Gauge("fleetwise_router_in_flight", "Requests the router has in flight per endpoint.")
        self.m_outstanding = prom.Gauge("fleetwise_router_outstanding_tokens", "Prompt plus streamed output tokens of in-flight requests per endpoint.")
        self.m_waiting = prom.Gauge("fleetwise_router_endpoint_waiting", "vllm:num_requests_waiting as last scraped.")
        self.m_running = prom.Gauge("fleetwise_router_endpoint_running", "vllm:num_requests_running as last scraped.")
        self.m_kv = prom.Gauge("fleetwise_router_endpoint_kv_usage", "vllm:kv_cache_usage_perc as last scraped.")
        self.m_decision = prom.Histogram("fleetwise_router_decision_seconds", "Time the policy took to route one request.", [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1])

    # -- engine metrics ------------------------------------------------------------------------

    async def scrape_once(self) -> None:
        """Reads every endpoint's ``/metrics`` once and updates waiting, running and KV usage. A
        scrape that gets no answer (connect error, timeout) is a failed health check; an answer
        that is not a Prometheus exposition leaves the values as they were."""

        async def one(i: int, e: Endpoint) -> None:
            try:
                r = await self.client.get(e.url + "/metrics", timeout=self.failover.health_timeout)
            except Exception as exc:  # no answer: transport errors and timeouts alike
                self.health.failed(i, "scrape", repr(exc))
                return
            self.health.succeeded(i)
            if r.status_code != 200:
                return
            try:
                s = prom.parse(r.text)
            except ValueError:
                return
            w, run = prom.total(s, "vllm:num_requests_waiting"), prom.total(s, "vllm:num_requests_running")
            kv = s.get("vllm:kv_cache_usage_perc") or s.get("vllm:gpu_cache_usage_perc")
            if w is not None and math.isfinite(w):
                e.waiting = int(w)
            if run is not None and math.isfinite(run):
                e.running = int(run)
            if kv and math.isfinite(top := max(v for _, v in kv)):
                e.kv_usage = top
            e.scraped_at = time.monotonic()

        await asyncio.gather(*(one(i, e) for i, e in enumerate(self.endpoints)))

    async def scrape_forever(self) -> None:
        """Scrapes every ``scrape_interval`` seconds until cancelled."""
        while True:
            await self.scrape_once()
            await asyncio.sleep(self.scrape_interval)

    # -- routing -------------------------------------------------------------------------------

    def views(self, hashes: Sequence[int], indices: Sequence[int] | None = None) -> list[EndpointView]:
        """The endpoints at ``indices`` (default all) as the policy sees them for a prompt with
        ``hashes``; each view's ``index`` is the endpoint's position in :attr:`endpoints`."""
        chosen = range(len(self.endpoints)) if indices is None else indices
        return [EndpointView(index=i, name=e.name, role=e.role, outstanding_tokens=e.outstanding_tokens, waiting=e.waiting, running=e.running,
                             kv_usage=e.kv_usage, cached_prefix_tokens=self.prefixes.cached_tokens(i, hashes)) for i in chosen for e in [self.endpoints[i]]]

    def route(self, body: dict[str, Any], request_id: str, exclude: frozenset[int] | set[int] = frozenset(),
              attempt: int = 0, chat: bool = False) -> tuple[RouteDecision, RequestView, list[EndpointView]]:
        """Asks the policy where ``body`` goes, among the routable endpoints (healthy, not in
        ``exclude``: those a retried request already failed to reach); ``chat``: a
        ``/v1/chat/completions`` body (its ``messages`` are the prompt), else a ``/v1/completions``
        one (its ``prompt``). Raises BadRequest for a request it cannot read, LookupError when no
        endpoint is left or the policy finds none, and ValueError on a bad answer or when the
        policy's route() raised."""
        try:
            prompt = prompt_text(body, chat)
            sampling_settings(body)
            limit = max_tokens(body, 16)
        except (ValueError, TypeError) as e:
            raise BadRequest(str(e)) from None
        indices = self.health.routable(exclude)
        if not indices:
            raise LookupError("every endpoint was tried")
        hashes = prefix_hashes(prompt, self.prefixes.block_chars)
        req = RequestView(id=request_id, prompt_tokens=approx_tokens(prompt), max_output_tokens=limit, arrival=time.time(), prefix_hashes=hashes)
        views = self.views(hashes, indices)
        t = time.perf_counter()
        try:
            with deadline(self.policy_timeout, "route()"):
                d = self.policy.route(req, views)
        except PolicyTimeout:
            raise ValueError(f"the policy's route() did not return within {self.policy_timeout:g} s (--policy-timeout)") from None
        except (KeyError, IndexError) as e:  # LookupErrors, but a policy's bug rather than "no endpoint"
            raise ValueError(f"the policy's route() raised {type(e).__name__}: {e}") from None
        except LookupError:
            raise
        except (KeyboardInterrupt, GeneratorExit, asyncio.CancelledError):
            raise  # the server's own shutdown and cancellation, not the policy's answer
        except BaseException as e:  # a policy's bug (sys.exit() or its own BaseException included) fails its request (500), never the router
            raise ValueError(f"the policy's route() raised {type(e).__name__}: {e}") from None
        self.m_decision.observe(time.perf_counter() - t)
        if not isinstance(d, RouteDecision):
            raise ValueError(f"the policy's route() must return a RouteDecision, got {d!r}")
        d = _checked_decision(d)
        if d.instance not in indices or (d.prefill is not None and d.prefill not in indices):
            raise ValueError(f"the policy chose {d}, not among the endpoint indices it was offered {indices}")
        for i in {d.instance, d.prefill} - {None}:
            self.prefixes.insert(i, hashes)
        self.decisions.append({"seq": next(self.count), "request_id": request_id, "endpoint": self.endpoints[d.instance].name, "index": d.instance,
                               "prefill": None if d.prefill is None else self.endpoints[d.prefill].name, "prefill_index": d.prefill,
                               "prompt_tokens": req.prompt_tokens, "cached_prefix_tokens": [v.cached_prefix_tokens for v in views],
                               "outstanding_tokens": [v.outstanding_tokens for v in views], "offered": indices, "attempt": attempt,
                               "user": logged_user(body.get("user")), "at": req.arrival})
        return d, req, views

    def metrics_text(self) -> str:
        """The router's own Prometheus metrics."""
        for e in self.endpoints:
            self.m_in_flight.set(e.in_flight, endpoint=e.name)
            self.m_outstanding.set(e.outstanding_tokens, endpoint=e.name)
            self.m_waiting.set(e.waiting, endpoint=e.name)
            self.m_running.set(e.running, endpoint=e.name)
            self.m_kv.set(e.kv_usage, endpoint=e.name)
        return prom.render([self.m_requests, self.m_errors, self.m_in_flight, self.m_outstanding, self.m_waiting, self.m_running, self.m_kv, self.m_decision,
                            *self.health.metrics()])


def _checked_decision(d: RouteDecision) -> RouteDecision:
    """``d`` with plain int indices (a numpy integer becomes an int, so the decision log stays
    JSON); ValueError naming the field when an index is not an integer (a float, a bool, text)."""
    from fleetwise.policy.bridge import checked_count  # its PolicyAnswerError is a ValueError

    return RouteDecision(checked_count(d.instance, "the policy's RouteDecision.instance", low=0),
                         checked_count(d.prefill, "the policy's RouteDecision.prefill", low=0, allow_none=True))


def create_router_app(state: RouterState):
    """A FastAPI app routing with ``state``; it opens its HTTP client (with the connect and read
    timeouts of ``state.failover``) and starts scraping and health probing with the app."""
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import PlainTextResponse, Response

    from fleetwise.serve.proxy import forward

    @asynccontextmanager
    async def lifespan(app):
        f = state.failover
        timeout = httpx.Timeout(connect=f.connect_timeout, read=f.read_timeout, write=f.read_timeout, pool=None)
        # Idle upstream connections are dropped after 2 s, before the engines' own keep-alive timeout
        # (uvicorn's, vLLM's server: 5 s) closes them: reusing a connection the engine is closing at
        # that moment fails the request with a ReadError and no response (seen on a loaded machine).
        limits = httpx.Limits(max_connections=4096, max_keepalive_connections=512, keepalive_expiry=2.0)
        state.client = httpx.AsyncClient(timeout=timeout, limits=limits)
        loop = asyncio.get_running_loop()
        tasks = []
        if state.scrape_interval > 0:
            tasks.append(loop.create_task(state.scrape_forever()))
        if f.health_interval > 0:
            tasks.append(loop.create_task(state.health.probe_forever(state.client)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.client.aclose()

    app = FastAPI(title="fleetwise router", lifespan=lifespan)
    app.state.router = state

    @app.get("/health")
    async def health():
        # 503 while no request could be served (a load balancer's readiness check takes it out).
        why = state.health.unservable()
        return PlainTextResponse("" if why is None else f"unhealthy: {why}\n", status_code=200 if why is None else 503)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/fleetwise/decisions")
    async def decisions(since: int = 0):
        return {"decisions": [d for d in state.decisions if d["seq"] >= since]}

    @app.get("/fleetwise/endpoints")
    async def endpoints():
        return {"endpoints": [{"name": e.name, "url": _redacted(e.url), "role": e.role, "healthy": e.healthy, "failures": e.failures, "last_error": e.last_error,
                               "in_flight": e.in_flight, "outstanding_tokens": e.outstanding_tokens,
                               "waiting": e.waiting, "running": e.running, "kv_usage": e.kv_usage} for e in state.endpoints]}

    @app.get("/v1/models")
    async def models():
        order = sorted(state.endpoints, key=lambda e: (not e.healthy, e.role == "prefill"))
        for e in order:
            try:
                r = await state.client.get(e.url + "/v1/models", timeout=state.failover.health_timeout)
                return Response(r.content, status_code=r.status_code, media_type="application/json")
            except httpx.HTTPError:
                continue
        return _error(502, "no endpoint answered /v1/models", "BadGatewayError")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await forward(state, request, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await forward(state, request, "/v1/chat/completions")

    return app
