"""Links shared by concurrent flows, with max-min fair rates: the network the reference's KV
handoffs cross, written from the core's documented rules (``rust/core/src/network.rs``).

A flow first waits the sum of its links' latencies (rounded to integer ns, halves away from zero),
then transfers; transferring flows share each link max-min fairly (progressive filling), and rates
are recomputed whenever a flow starts transferring or completes. A flow whose rate changes gets a
completion time ``now + ceil(remaining / rate)`` (with a 1e-14 relative slack); one whose rate is
unchanged keeps its completion time. Everything iterates in flow-id and link order, and every float
operation is done in the same order as the core's, so times agree to the nanosecond.

The event loop drives it with the versioned protocol: after a start or an advance, if ``version``
changed, schedule a wake-up at ``next_event()`` tagged with the version; a wake-up whose tag is
stale is dropped.
"""

from __future__ import annotations

import math

NS_PER_SEC = 1e9


def secs_to_ns(secs: float) -> int:
    """Seconds to integer ns, rounded half away from zero, at least 1 (0 for non-positive)."""
    if secs <= 0.0:
        return 0
    x = secs * NS_PER_SEC
    f = math.floor(x)
    return max(1, int(f) + (1 if x - f >= 0.5 else 0))


def transfer_ns(remaining: float, rate: float) -> int:
    """Nanoseconds, rounded up, to move ``remaining`` bytes at ``rate`` bytes/s."""
    if remaining <= 0.0:
        return 0
    ns = remaining * NS_PER_SEC / rate
    return math.ceil(ns - ns * 1e-14)


class _Flow:
    __slots__ = ("path", "bytes", "start", "active_at", "transferring", "remaining", "rate", "finish_at")

    def __init__(self, path: list[int], nbytes: int, start: int, active_at: int) -> None:
        self.path = path
        self.bytes = nbytes
        self.start = start
        self.active_at = active_at
        self.transferring = False
        self.remaining = float(nbytes)
        self.rate = 0.0
        self.finish_at = active_at

    def next_time(self) -> int:
        return self.finish_at if self.transferring else self.active_at


class ReferenceNetwork:
    """Links (``(bandwidth bytes/s, latency s)``) and the flows crossing them."""

    def __init__(self, links: list[tuple[float, float]]) -> None:
        self.links = links
        self.flows: dict[int, _Flow] = {}  # insertion order is id order
        self.finished: list[tuple[int, int]] = []  # (flow id, end) completed, not yet returned
        self.next_id = 0
        self.now = 0
        self.version = 0

    def start_flow(self, now: int, path: list[int], nbytes: int) -> int:
        """Starts ``nbytes`` along ``path`` at ``now``; returns the flow id."""
        assert now >= self.now and path
        latency = 0.0
        for link in path:
            latency += self.links[link][1]
        self._run_until(now)
        fid = self.next_id
        self.next_id += 1
        self.flows[fid] = _Flow(list(path), nbytes, now, now + secs_to_ns(latency))
        self._process_due(now)
        self.version += 1
        return fid

    def next_event(self) -> int | None:
        """Time of the earliest pending internal event (the clock if a completion awaits advance)."""
        if self.finished:
            return self.now
        return self._next_flow_time()

    def advance(self, now: int) -> list[tuple[int, int]]:
        """Runs to ``now``; returns the ``(flow id, end)`` completed since the last call."""
        assert now >= self.now
        self._run_until(now)
        if self.finished:
            self.version += 1
        done, self.finished = self.finished, []
        return done

    def _next_flow_time(self) -> int | None:
        best = None
        for flow in self.flows.values():
            t = flow.next_time()
            if best is None or t < best:
                best = t
        return best

    def _run_until(self, until: int) -> None:
        while True:
            t = self._next_flow_time()
            if t is None or t > until:
                break
            self._progress_to(t)
            self._process_due(t)
        self._progress_to(until)

    def _progress_to(self, t: int) -> None:
        if t <= self.now:
            return
        dt = float(t - self.now)
        for flow in self.flows.values():
            if flow.transferring:
                moved = flow.rate * dt / NS_PER_SEC
                flow.remaining = max(flow.remaining - moved, 0.0)
        self.now = t

    def _process_due(self, t: int) -> None:
        due = [fid for fid, f in self.flows.items() if f.next_time() <= t]
        if not due:
            return
        for fid in due:
            flow = self.flows[fid]
            if not flow.transferring and flow.bytes > 0:
                flow.transferring = True
            else:
                del self.flows[fid]
                self.finished.append((fid, t))
        self._recompute_rates()
        self.version += 1

    def _recompute_rates(self) -> None:
        residual = [bw for bw, _ in self.links]
        count = [0] * len(self.links)
        unfrozen = []
        for fid, flow in self.flows.items():
            if flow.transferring:
                unfrozen.append(fid)
                for link in flow.path:
                    count[link] += 1
        rates: dict[int, float] = {}
        level = 0.0
        while unfrozen:
            delta = math.inf
            for link in range(len(residual)):
                if count[link] > 0:
                    delta = min(delta, residual[link] / count[link])
            level += delta
            bound = delta * (1.0 + 1e-12)
            saturated = [count[link] > 0 and residual[link] / count[link] <= bound for link in range(len(residual))]
            for link in range(len(residual)):
                if count[link] > 0:
                    residual[link] = 0.0 if saturated[link] else residual[link] - delta * count[link]
            still = []
            for fid in unfrozen:
                path = self.flows[fid].path
                if any(saturated[link] for link in path):
                    rates[fid] = level
                    for link in path:
                        count[link] -= 1
                else:
                    still.append(fid)
            unfrozen = still
        for fid in sorted(rates):
            flow = self.flows[fid]
            rate = rates[fid]
            if flow.rate != rate:
                flow.rate = rate
                flow.finish_at = self.now + transfer_ns(flow.remaining, rate)
