"""Disaggregation in the reference model: requests prefilled on prefill instances move to decode
instances, their KV crossing the max-min fair network (``reference.network``)."""

from __future__ import annotations

from collections import deque

import simpy

from reference.instance import ReferenceInstance
from reference.network import ReferenceNetwork
from reference.requests import ReferenceRequest


class ReferenceHandoffs:
    """Moves requests prefilled on prefill instances to decode instances (serialized KV transfer).

    After a prefill instance's iteration ends, each request it handed off, in order, goes to the
    decode instance with the fewest outstanding tokens (lowest index on ties) that can reserve its
    blocks; its KV (``prompt`` tokens at the tp=1 KV size) then flows over the prefill instance's
    ``kv_out`` link and the decode instance's ``kv_in`` link. When the flow completes the prefill
    instance frees the blocks and the decode instance takes the request as a running decode.
    Handoffs that found no room wait in order and are retried after every decode iteration.

    Network wake-ups are SimPy timeouts created when the core pushes its ``Network`` event, so
    their eids follow the core's push order; a wake-up whose version is stale does nothing.
    """

    def __init__(self, env: simpy.Environment, instances: list[ReferenceInstance]) -> None:
        """Builds each instance's KV links (``kv_out`` with the link's latency plus the pool's
        ``kv_transfer_latency``, ``kv_in`` without)."""
        self.env = env
        self.instances = instances
        self.decoders = [inst for inst in instances if inst.role == "decode"]
        links: list[tuple[float, float]] = []
        for inst in instances:
            pool, gpu = inst.pool, inst.pool["gpu"]
            gpus = int(pool["parallelism"]["tp"]) * int(pool["parallelism"].get("pp") or 1)
            if pool.get("kv_link", "nic") == "nvlink":
                bw, lat = gpu["link_bandwidth"], gpu["link_latency"]
            elif gpu.get("nic_bandwidth", 0.0) > 0.0:
                bw, lat = gpu["nic_bandwidth"], gpu["nic_latency"]
            else:
                bw, lat = max(gpu.get("host_link_bandwidth", 0.0), gpu["link_bandwidth"]), gpu["host_link_latency"]
            # kv_out: link 2 * index; its latency includes the transfer's setup/synchronisation.
            links.append((bw * gpus, lat + pool.get("kv_transfer_latency", 4e-3)))
            links.append((bw * gpus, 0.0))  # kv_in: link 2 * index + 1
        self.net = ReferenceNetwork(links)
        self.scheduled: int | None = None
        self.owner: dict[int, tuple[ReferenceRequest, ReferenceInstance, int]] = {}
        self.waiting: deque[ReferenceRequest] = deque()
        for inst in instances:
            inst.on_iteration_end = self.end_iteration

    def end_iteration(self, inst: ReferenceInstance) -> None:
        """Dispatches the requests ``inst`` just handed off; retries waiting ones after a decode."""
        handed, inst.handoffs = inst.handoffs, []
        for req in handed:
            if not self.dispatch(req):
                req.handoff_waits += 1
                self.waiting.append(req)
        if inst.role == "decode":
            while self.waiting and self.dispatch(self.waiting[0]):
                self.waiting.popleft()

    def dispatch(self, req: ReferenceRequest) -> bool:
        """Reserves a decode instance for ``req`` and starts its KV flow; False when none has room."""
        for dec in sorted(self.decoders, key=lambda d: (d.outstanding_tokens, d.index)):
            blocks = dec.reserve(req)
            if blocks is None:
                continue
            src = self.instances[req.instance]
            nbytes = req.prompt * src.kv_bytes_per_token
            fid = self.net.start_flow(self.env.now, [2 * src.index, 2 * dec.index + 1], max(nbytes, 1))
            self.owner[fid] = (req, dec, blocks)
            req.transfer_start = self.env.now
            self._reschedule()
            return True
        return False

    def _reschedule(self) -> None:
        version = self.net.version
        if self.scheduled == version:
            return
        t = self.net.next_event()
        if t is not None:
            assert t >= self.env.now
            event = self.env.timeout(t - self.env.now)
            event.callbacks.append(lambda _event, v=version: self._network(v))
            self.scheduled = version

    def _network(self, version: int) -> None:
        """A network wake-up: if current, runs the network and completes the finished handoffs."""
        if version != self.net.version:
            return
        now = self.env.now
        done = self.net.advance(now)
        self.scheduled = None
        self._reschedule()
        for fid, _end in done:
            req, dec, blocks = self.owner.pop(fid)
            req.transfer_end = now
            self.instances[req.instance].release_handoff(req)
            req.instance = dec.index
            dec.accept(req, blocks)
