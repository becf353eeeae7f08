"""The router's view of endpoint health: timeouts, ejection, re-admission and retry settings.

Every check of an endpoint reports success or failure to :class:`EndpointHealth`: the periodic
``GET /health`` probe, each ``/metrics`` scrape, and each proxied request (a connect error or a read
timeout is a failure; any HTTP answer is a success). After ``eject_after`` failures in a row the
endpoint is *ejected*: the routing policy no longer sees it. The health probe keeps probing it, and
its first successful probe *re-admits* it. When every endpoint is ejected the policy sees them all
again (Envoy's "panic" routing): better to try than to refuse everything.

A request whose connection to the chosen engine failed (the engine never got a byte of it) is safe
to send elsewhere: the router ejects-or-counts the failure and routes it again among the endpoints
it has not tried, at most ``retries`` times. A request that reached an engine is never sent to another
one; only a connection the engine closed before answering anything is tried once more, on the same
engine (``proxy.DROPPED_ERRORS``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from fleetwise.errors import ConfigError
from fleetwise.serve import prom

if TYPE_CHECKING:
    from fleetwise.serve.router_app import Endpoint


@dataclass(frozen=True)
class FailoverSettings:
    """How long the router waits on engines and when it gives up on one."""

    connect_timeout: float = 5.0
    """Seconds to open a connection to an engine; past it the request is retried elsewhere."""
    read_timeout: float = 300.0
    """Seconds to wait for the next bytes of an engine's answer (the whole answer of a
    non-streamed request, the next event of a streamed one); past it the client gets a 504."""
    health_interval: float = 1.0
    """Seconds between ``GET /health`` probes of every endpoint (0: never probe; ejected
    endpoints then stay out)."""
    health_timeout: float = 5.0
    """Seconds a health probe or a ``/metrics`` scrape may take before it counts as failed."""
    eject_after: int = 1
    """Failures in a row that eject an endpoint."""
    retries: int = 2
    """How many times a request that never reached an engine is routed again to another one."""

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "health_timeout"):
            v = getattr(self, name)
            if not v > 0:
                raise ConfigError(f"serve-router: {name.replace('_', '-')} must be a positive number of seconds, got {v}")
        if not self.health_interval >= 0:
            raise ConfigError(f"serve-router: health-interval must be 0 (never) or a positive number of seconds, got {self.health_interval}")
        if self.eject_after < 1:
            raise ConfigError(f"serve-router: eject-after must be at least 1, got {self.eject_after}")
        if self.retries < 0:
            raise ConfigError(f"serve-router: retries must be at least 0, got {self.retries}")


class EndpointHealth:
    """Health bookkeeping of the router's endpoints and its metrics (ejections, re-admissions,
    retries, a healthy gauge per endpoint)."""

    def __init__(self, endpoints: Sequence["Endpoint"], settings: FailoverSettings):
        self.endpoints = endpoints
        self.settings = settings
        self.m_healthy = prom.Gauge("fleetwise_router_endpoint_healthy", "1 while the endpoint is routed to, 0 while it is ejected.")
        self.m_ejections = prom.Counter("fleetwise_router_ejections", "Times an endpoint was ejected, by the check that failed last (connect, timeout, health, scrape).")
        self.m_readmissions = prom.Counter("fleetwise_router_readmissions", "Times an ejected endpoint passed a health probe and was routed to again.")
        self.m_retries = prom.Counter("fleetwise_router_retries", "Requests routed again because the connection to this endpoint failed.")

    def routable(self, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """Indices of the endpoints a request may go to: the healthy ones not in ``exclude``, or,
        when none is healthy, every one not in ``exclude``."""
        left = [i for i in range(len(self.endpoints)) if i not in exclude]
        healthy = [i for i in left if self.endpoints[i].healthy]
        return healthy or left

    def unservable(self) -> str | None:
        """Why no request can be served now (None when one can): every engine is ejected, or every
        prefill or every decode engine of a disaggregated deployment is."""
        healthy = {e.role for e in self.endpoints if e.healthy}
        if not healthy:
            last = "; ".join(f"{e.name}: {e.last_error}" for e in self.endpoints if e.last_error)
            return f"every engine is ejected ({len(self.endpoints)} of {len(self.endpoints)}; last errors: {last or 'none'})"
        if "mixed" in healthy:
            return None
        roles = {e.role for e in self.endpoints}
        missing = [role for role in ("prefill", "decode") if role in roles and role not in healthy]
        return f"every {' and every '.join(missing)} engine is ejected" if missing else None

    def failed(self, i: int, check: str, error: str) -> None:
        """Endpoint ``i`` failed ``check`` (connect, timeout, health or scrape) with ``error``."""
        e = self.endpoints[i]
        e.failures += 1
        e.last_error = f"{check}: {error}"
        if e.healthy and e.failures >= self.settings.eject_after:
            e.healthy = False
            self.m_ejections.inc(endpoint=e.name, check=check)

    def succeeded(self, i: int, readmit: bool = False) -> None:
        """Endpoint ``i`` answered; ``readmit`` (the health probe) also brings an ejected one back."""
        e = self.endpoints[i]
        if e.healthy:
            e.failures = 0
        elif readmit:
            e.healthy, e.failures = True, 0
            self.m_readmissions.inc(endpoint=e.name)

    async def probe_once(self, client) -> None:
        """``GET /health`` of every endpoint once (a 200 within ``health_timeout`` passes)."""

        async def one(i: int) -> None:
            e = self.endpoints[i]
            try:
                r = await client.get(e.url + "/health", timeout=self.settings.health_timeout)
            except Exception as exc:  # connect errors, timeouts, protocol errors: all mean unhealthy
                self.failed(i, "health", repr(exc))
                return
            if r.status_code == 200:
                self.succeeded(i, readmit=True)
            else:
                self.failed(i, "health", f"HTTP {r.status_code}")

        await asyncio.gather(*(one(i) for i in range(len(self.endpoints))))

    async def probe_forever(self, client) -> None:
        """Probes every ``health_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.settings.health_interval)
            await self.probe_once(client)

    def metrics(self) -> list[prom.Metric]:
        """The health metrics, the healthy gauge brought up to date."""
        for e in self.endpoints:
            self.m_healthy.set(1 if e.healthy else 0, endpoint=e.name)
        return [self.m_healthy, self.m_ejections, self.m_readmissions, self.m_retries]
