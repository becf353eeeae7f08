"""Disaggregation in the reference model: requests prefilled on prefill instances move to decode
instances, their KV crossing the max-min fair network (``reference.network``)."""

from __future__ import annotations

from collections import deque

import simpy

from reference.instance import ReferenceInstance
from reference.mixed_pool import ReferenceMixedPool
from reference.network import ReferenceNetwork
from reference.requests import ReferenceRequest


def _link(gpu: dict, kind: str) -> tuple[float, float]:
    """Bandwidth (bytes/s per GPU) and latency of ``gpu``'s KV link of ``kind`` (``nic`` falls
    back to the host or GPU link when the GPU has no NIC)."""
    if kind == "nvlink":
        return gpu["link_bandwidth"], gpu["link_latency"]
    if gpu.get("nic_bandwidth", 0.0) > 0.0:
        return gpu["nic_bandwidth"], gpu["nic_latency"]
    return max(gpu.get("host_link_bandwidth", 0.0), gpu["link_bandwidth"]), gpu["host_link_latency"]


class _Handoff:
    """A request on its way to decode instance ``dec`` (``blocks`` reserved there, ``tokens``
    counted in its in-flight load until the request runs there)."""

    def __init__(self, dec: ReferenceInstance, blocks: int, tokens: int, prefill_done: bool, tail: int) -> None:
        self.dec, self.blocks, self.tokens, self.prefill_done, self.flow_done = dec, blocks, tokens, prefill_done, False
        self.tail = tail  # bytes of a layer-wise transfer's last layer, still to send (0: none)


class ReferenceHandoffs:
    """Moves requests prefilled on prefill instances to decode instances.

    After a prefill instance's iteration ends, each request it handed off, in order, goes to the
    decode instance with the fewest outstanding tokens (lowest index on ties) that can reserve its
    blocks, where a decode instance's outstanding tokens include the known tokens (prompt and
    generated) of every handoff in flight to it, from its dispatch until the request runs there; its KV (``prompt`` tokens at the tp=1 KV size) then flows over the prefill instance's
    ``kv_out`` link and the decode instance's ingress link of the same kind (the prefill pool's
    ``kv_link``: NIC or NVLink). When the flow completes the prefill
    instance frees the blocks and the decode instance takes the request as a running decode.
    Handoffs that found no room wait in order and are retried after every decode iteration.

    Layer-wise pools dispatch, when an iteration starts, the requests whose prefill it completes:
    all layers but the last flow from then; once the prefill and that flow are both done the last
    layer's bytes (``bytes // num_layers``) flow, and only then is the request handed over.

    Network wake-ups are SimPy timeouts created when the core pushes its ``Network`` event, so
    their eids follow the core's push order; a wake-up whose version is stale does nothing.
    """

    def __init__(self, env: simpy.Environment, instances: list[ReferenceInstance], mixed: ReferenceMixedPool | None = None) -> None:
        """Builds each instance's KV links (``kv_out`` with the link's latency plus the pool's
        ``kv_transfer_latency``, ``kv_in`` without); ``mixed`` is Splitwise's mixed pool, if any."""
        self.env = env
        self.mixed = mixed
        self.instances = instances
        self.decoders = [inst for inst in instances if inst.role == "decode"]
        links: list[tuple[float, float]] = []
        for inst in instances:
            pool, gpu = inst.pool, inst.pool["gpu"]
            gpus = int(pool["parallelism"]["tp"]) * int(pool["parallelism"].get("pp") or 1)
            bw, lat = _link(gpu, pool.get("kv_link", "nic"))
            # kv_out: link 3 * index; its latency includes the transfer's setup/synchronisation.
            links.append((bw * gpus, lat + pool.get("kv_transfer_latency", 4e-3)))
            # kv_in by NIC (3 * index + 1) and by NVLink (3 * index + 2): a flow enters by the
            # kind of link its sender's pool names.
            links.append((_link(gpu, "nic")[0] * gpus, 0.0))
            links.append((_link(gpu, "nvlink")[0] * gpus, 0.0))
        self.net = ReferenceNetwork(links)
        self.scheduled: int | None = None
        self.owner: dict[int, ReferenceRequest] = {}
        self.state: dict[int, _Handoff] = {}
        self.waiting: deque[ReferenceRequest] = deque()
        self.in_flight_tokens = [0] * len(instances)  # per instance: tokens of handoffs on their way to it
        for inst in instances:
            inst.on_iteration_end = self.end_iteration
            if inst.role == "prefill" and inst.pool.get("kv_transfer", "serialized") == "layerwise":
                inst.on_iteration_start = self.start_iteration

    def start_iteration(self, inst: ReferenceInstance, items: list) -> None:
        """Layer-wise: starts the KV flows of the prefills the iteration just started completes
        (those no decode instance has room for yet are dispatched when their prefill ends);
        none while the mixed pool finds the token pool overloaded."""
        if self.mixed is not None and self.mixed.token_overloaded():
            return
        for req, n, decode in items:
            if not decode and req.generated == 0 and req.computed + n == req.known and req.output > 1:
                self.dispatch(req, prefill_done=False)

    def end_iteration(self, inst: ReferenceInstance) -> None:
        """Dispatches the requests ``inst`` just handed off (or the mixed pool keeps them there);
        retries waiting ones after a decode; then the mixed pool's bookkeeping."""
        handed, inst.handoffs = inst.handoffs, []
        for req in handed:
            h = self.state.get(req.index)
            if h is not None:
                h.prefill_done = True
                if h.flow_done:
                    self._finish_or_send_tail(req, h)
                continue
            if self.mixed is not None and self.mixed.keeps_decode(req):
                continue
            if not self.dispatch(req, prefill_done=True):
                req.handoff_waits += 1
                self.waiting.append(req)
        if inst.role == "decode":
            while self.waiting and self.dispatch(self.waiting[0], prefill_done=True):
                self.waiting.popleft()
        if self.mixed is not None:
            self.mixed.iteration_ended(inst)

    def dispatch(self, req: ReferenceRequest, prefill_done: bool) -> bool:
        """Reserves a decode instance for ``req`` and starts its KV flow (all but the last layer
        when the prefill is still running); False when none has room."""
        for dec in sorted(self.decoders, key=lambda d: (d.outstanding_tokens + self.in_flight_tokens[d.index], d.index)):
            blocks = dec.reserve(req)
            if blocks is None:
                continue
            src = self.instances[req.instance]
            target = req.prompt * src.kv_bytes_per_token
            # A speculating prefill instance sends its draft's KV of the prompt too, with the last layer's.
            draft = 0 if src.speculation is None else req.prompt * src.speculation.draft_kv_bytes_per_token_whole_model
            nbytes = target + draft
            layers = int(src.pool["model"]["num_layers"])
            last = 0 if prefill_done else draft if layers < 2 else target // layers + draft
            self._flow(req, src, dec, nbytes - last)
            tokens = req.prompt + req.generated
            self.in_flight_tokens[dec.index] += tokens
            self.state[req.index] = _Handoff(dec, blocks, tokens, prefill_done, last)
            req.transfer_start = self.env.now
            return True
        return False

    def _flow(self, req: ReferenceRequest, src: ReferenceInstance, dec: ReferenceInstance, nbytes: int) -> None:
        ingress = 3 * dec.index + (2 if src.pool.get("kv_link", "nic") == "nvlink" else 1)
        fid = self.net.start_flow(self.env.now, [3 * src.index, ingress], max(nbytes, 1))
        self.owner[fid] = req
        self._reschedule()

    def _finish_or_send_tail(self, req: ReferenceRequest, h: _Handoff) -> None:
        """Prefill and flow done: send a layer-wise transfer's last layer, else hand over."""
        if h.tail:
            nbytes, h.tail, h.flow_done = h.tail, 0, False
            self._flow(req, self.instances[req.instance], h.dec, nbytes)
            return
        del self.state[req.index]
        self.in_flight_tokens[h.dec.index] -= h.tokens
        req.transfer_end = self.env.now
        self.instances[req.instance].release_handoff(req)
        req.instance = h.dec.index
        h.dec.accept(req, h.blocks)

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
            req = self.owner.pop(fid)
            h = self.state[req.index]
            h.flow_done = True
            if h.prefill_done:
                self._finish_or_send_tail(req, h)
