"""An emulated inference engine: vLLM-style continuous batching in real time, each iteration as
long as fleetwise's cost model predicts.

:class:`EmulatedEngine` keeps a fleetwise batch scheduler (``_core.Scheduler``, the simulator's
``vllm`` scheduler over a KV cache sized by the cost model's memory plan) and runs an asyncio loop:
form an iteration with the scheduler, predict its duration with ``_core.CostModel.iteration_seconds``
for its batch shape (prefill chunks with their cached context, decodes with their context), sleep that
long (divided by ``speedup``), then hand every sampled token to its request. No model runs; the
tokens are dummy text (``fleetwise.serve.text.dummy_token``).

Disaggregation follows vLLM's ``kv_transfer_params`` handshake: a request with
``do_remote_decode`` is prefilled (it samples one token) and answers ``kv_transfer_params`` that
point a decode engine at its blocks; a request with ``do_remote_prefill`` arrives with its prompt's
KV already transferred, so its prompt costs one token of compute (the last prompt token, after
``prompt - 1`` cached ones) instead of the whole prompt. The transfer itself is not timed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field

from fleetwise.catalog import lookup
from fleetwise.config.scenario import vllm_default_batched_tokens
from fleetwise.cost import cost_model
from fleetwise.errors import ConfigError
from fleetwise.serve import prom

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
"""vLLM's buckets for ``vllm:time_to_first_token_seconds``."""
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
"""vLLM's buckets for inter-token latency and time per output token."""
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
"""vLLM's buckets for end-to-end, queue, prefill and decode times."""


@dataclass
class EngineRequest:
    """One request inside the emulated engine."""

    id: int
    request_id: str
    prompt_tokens: int
    max_tokens: int
    remote_prefill: bool = False
    """Its prompt KV came from a prefill engine (``do_remote_prefill``)."""
    remote_decode: bool = False
    """A decode engine will continue it (``do_remote_decode``): answer ``kv_transfer_params``."""
    arrival: float = 0.0
    computed: int = 0
    generated: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished: bool = False
    tokens: asyncio.Queue = field(default_factory=asyncio.Queue)
    """Receives ``(index, text)`` per sampled token, then ``None`` when finished."""


class EmulatedEngine:
    """A model on a GPU from the catalogue, served in real time by the cost model.

    ``speedup`` > 1 runs faster than real time (each iteration sleeps ``predicted / speedup``).
    ``scheduler`` is a fleetwise scheduler config (default ``{"kind": "vllm"}``, vLLM's
    defaults for ``max_num_seqs`` and ``max_num_batched_tokens``).
    """

    def __init__(self, model: str = "llama-3-8b", gpu: str = "h100-sxm", tp: int = 1, role: str = "mixed", speedup: float = 1.0,
                 scheduler: dict | None = None, gpu_memory_utilization: float = 0.9, block_size: int = 16, served_model_name: str | None = None,
                 engine_id: str | None = None, engine: str = "vllm"):
        from fleetwise.policy.builtin import make_scheduler

        if role not in ("mixed", "prefill", "decode"):
            raise ConfigError(f"role must be mixed, prefill or decode, not {role!r}")
        if not 1e-3 <= speedup <= 1e6:
            raise ConfigError(f"speedup must be from 0.001 to 1e6, got {speedup}")
        g = lookup("gpu", gpu, {}, "--gpu")
        m = lookup("model", model, {}, "--model")
        self.model, self.gpu, self.tp, self.role, self.speedup = model, gpu, tp, role, speedup
        self.served_model_name = served_model_name or model
        self.engine_id = engine_id or uuid.uuid4().hex
        self.max_model_len = int(m.max_position_embeddings)
        self.cost = cost_model(m, g, tp=tp, model_name=model, gpu_name=gpu, engine=engine)
        self.engine_profile = engine
        sched = dict(scheduler or {"kind": "vllm"})
        self.scheduler_config = sched
        seqs = int(sched.get("max_num_seqs", 256))
        tokens = int(sched.get("max_num_batched_tokens") or vllm_default_batched_tokens(self.max_model_len))
        plan = self.cost.memory_plan(json.dumps({"gpu_memory_utilization": gpu_memory_utilization, "block_size": block_size}), tokens, seqs)
        self.num_blocks, self.block_size = int(plan["num_blocks"]), int(plan["block_size"])
        self.scheduler = make_scheduler(sched, num_blocks=self.num_blocks, block_size=self.block_size)
        self.requests: dict[int, EngineRequest] = {}
        self._ids = itertools.count(1)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.iterations = 0
        self.busy_seconds = 0.0
        self.predicted_seconds = 0.0
        labels = {"model_name": self.served_model_name, "engine": "0"}
        self.labels = labels
        self.m_running = prom.Gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.m_waiting = prom.Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.m_kv = prom.Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.m_prompt = prom.Counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.m_gen = prom.Counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.m_success = prom.Counter("vllm:request_success", "Count of successfully processed requests.")
        self.m_preempt = prom.Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.m_aborted = prom.Counter("fleetwise:aborted_requests", "Requests aborted because their client disconnected.")
        self.m_iter_tokens = prom.Histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384])
        self.m_ttft = prom.Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.m_itl = prom.Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.m_tpot = prom.Histogram("vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.m_e2e = prom.Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", E2E_BUCKETS)
        self.m_queue = prom.Histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", E2E_BUCKETS)
        self.m_prompt_len = prom.Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000])
        self.m_gen_len = prom.Histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000])
        self.m_pred = prom.Counter("fleetwise:predicted_busy_seconds", "Sum of the cost model's predicted iteration times (before speedup).")
        for g_ in (self.m_running, self.m_waiting, self.m_kv):
            g_.set(0, **labels)
        for c in (self.m_prompt, self.m_gen, self.m_preempt, self.m_pred, self.m_aborted):
            c.inc(0, **labels)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the iteration loop on the running event loop."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stops the iteration loop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    # -- requests ----------------------------------------------------------------------------

    def submit(self, prompt_tokens: int, max_tokens: int, request_id: str | None = None, kv_transfer_params: dict | None = None) -> EngineRequest:
        """Queues a request and returns it; its ``tokens`` queue yields tokens as iterations finish.

        Raises ValueError for requests vLLM would reject (context too long, max_tokens < 1).
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if prompt_tokens + max_tokens > self.max_model_len:
            raise ValueError(f"This model's maximum context length is {self.max_model_len} tokens. However, you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion).")
        if -(-(prompt_tokens + max_tokens) // self.block_size) > self.num_blocks:
            raise ValueError(f"the request needs more KV-cache blocks than the engine has ({self.num_blocks})")
        params = kv_transfer_params or {}
        r = EngineRequest(id=next(self._ids), request_id=request_id or uuid.uuid4().hex, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                          remote_prefill=bool(params.get("do_remote_prefill")), remote_decode=bool(params.get("do_remote_decode")), arrival=time.monotonic())
        self.requests[r.id] = r
        self.scheduler.add(r.id, prompt_tokens, max_tokens)
        self.start()
        self._wake.set()
        self._update_gauges()
        return r

    def abort(self, r: EngineRequest) -> bool:
        """Aborts ``r`` because its client went away, as vLLM does: it leaves the batch and its KV
        blocks are freed at once. Returns False if it had already finished."""
        if r.finished:
            return False
        r.finished = True
        self.requests.pop(r.id, None)
        self.scheduler.abort(r.id)
        self.m_aborted.inc(1, **self.labels)
        r.tokens.put_nowait(None)
        self._update_gauges()
        return True

    def kv_transfer_params(self, r: EngineRequest) -> dict | None:
        """What a prefill answers for a ``do_remote_decode`` request (vLLM NixlConnector's fields)."""
        if not r.remote_decode:
            return None
        blocks = -(-r.prompt_tokens // self.block_size)
        return {"do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": self.engine_id, "remote_request_id": r.request_id,
                "remote_block_ids": list(range(blocks)), "remote_host": "fleetwise-emulated", "remote_port": 0, "tp_size": self.tp,
                "remote_num_tokens": r.prompt_tokens}

    def predict_ttft(self, prompt_tokens: int) -> float:
        """Predicted seconds to the first token of a lone request on an idle engine (after speedup)."""
        budget = int(self.scheduler_config.get("max_num_batched_tokens") or vllm_default_batched_tokens(self.max_model_len))
        t, done = 0.0, 0
        while done < prompt_tokens:
            n = min(budget, prompt_tokens - done)
            t += self.cost.iteration_seconds([(n, done, done + n >= prompt_tokens)], [])
            done += n
        return t / self.speedup

    # -- the loop ----------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        self.m_running.set(len(self.scheduler.running()), **self.labels)
        self.m_waiting.set(len(self.scheduler.waiting()), **self.labels)
        self.m_kv.set(self.scheduler.used_blocks() / self.num_blocks if self.num_blocks else 0.0, **self.labels)

    def _shape(self, batch: list[tuple[int, int]]):
        prefills, decodes, now = [], [], time.monotonic()
        for rid, n in batch:
            r = self.requests[rid]
            if r.scheduled_at is None:
                r.scheduled_at = now
                self.m_queue.observe(now - r.arrival, **self.labels)
            total = r.prompt_tokens + r.generated
            if r.generated > 0 and n == 1 and r.computed == total - 1:
                decodes.append(r.computed + 1)
            else:
                samples = r.computed + n >= total
                if r.remote_prefill and r.generated == 0:
                    # KV arrived from the prefill engine: only the last prompt token is computed.
                    if samples:
                        prefills.append((1, total - 1, True))
                else:
                    prefills.append((n, r.computed, samples))
                    if r.generated == 0:
                        self.m_prompt.inc(n, **self.labels)
            r.computed += n
        return prefills, decodes

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.scheduler.running() and not self.scheduler.waiting():
                self._wake.clear()
                self._update_gauges()
                await self._wake.wait()
                continue
            before = set(self.scheduler.running())
            preempted_before = self.scheduler.preempted()
            batch = self.scheduler.schedule()
            if self.scheduler.preempted() > preempted_before:
                waiting = set(self.scheduler.waiting())
                for rid in before & waiting:  # preempted by recompute: KV dropped
                    self.requests[rid].computed = 0
                self.m_preempt.inc(self.scheduler.preempted() - preempted_before, **self.labels)
            self._update_gauges()
            if not batch:
                self._wake.clear()
                await asyncio.sleep(0.001)
                continue
            start = loop.time()
            prefills, decodes = self._shape(batch)
            predicted = self.cost.iteration_seconds(prefills, decodes) if (prefills or decodes) else 0.0
            self.iterations += 1
            self.predicted_seconds += predicted
            self.m_pred.inc(predicted, **self.labels)
            self.m_iter_tokens.observe(sum(n for _, n in batch), **self.labels)
            delay = predicted / self.speedup - (loop.time() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            self.busy_seconds += loop.time() - start
            now = time.monotonic()
            for rid, finished in self.scheduler.complete():
                if rid in self.requests:  # not aborted while the iteration ran
                    self._emit(self.requests[rid], now, finished)
            self._update_gauges()

    def _emit(self, r: EngineRequest, now: float, finished: bool) -> None:
        from fleetwise.serve.text import dummy_token

        i = r.generated
        r.generated += 1
        self.m_gen.inc(1, **self.labels)
        if r.first_token_at is None:
            r.first_token_at = now
            self.m_ttft.observe(now - r.arrival, **self.labels)
        else:
            self.m_itl.observe(now - r.last_token_at, **self.labels)
        r.last_token_at = now
        r.tokens.put_nowait((i, dummy_token(i)))
        if finished or r.generated >= r.max_tokens:
            r.finished = True
            r.tokens.put_nowait(None)
            self.requests.pop(r.id, None)
            self.m_success.inc(1, finished_reason="length", **self.labels)
            self.m_e2e.observe(now - r.arrival, **self.labels)
            self.m_prompt_len.observe(r.prompt_tokens, **self.labels)
            self.m_gen_len.observe(r.generated, **self.labels)
            if r.generated > 1:
                self.m_tpot.observe((now - r.first_token_at) / (r.generated - 1), **self.labels)

    def metrics_text(self) -> str:
        """The Prometheus exposition of the engine's metrics (vLLM's names)."""
        self._update_gauges()
        return prom.render([self.m_running, self.m_waiting, self.m_kv, self.m_prompt, self.m_gen, self.m_success, self.m_preempt, self.m_iter_tokens,
                            self.m_ttft, self.m_itl, self.m_tpot, self.m_e2e, self.m_queue, self.m_prompt_len, self.m_gen_len, self.m_pred, self.m_aborted])
