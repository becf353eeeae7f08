"""The serving engine: continuous batching over the model of ``torch_model.py`` with fleetwise's
``vllm`` scheduling policy, replaying a trace in real wall-clock time (see ``torch_engine.py``).

PyTorch only (it does not import fleetwise).
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings beside this file, also when run as a script
from torch_batches import PREFILL_SEQ_BUCKETS, PREFILL_STEP, BatchLayout, Seq, static_buffers  # noqa: E402
from torch_graphs import CudaGraphCapture  # noqa: E402
from torch_model import Model  # noqa: E402


@dataclass
class Engine(BatchLayout, CudaGraphCapture):
    """Continuous batching over a ``Model`` with fleetwise's ``vllm`` scheduling policy."""

    model: Model
    graphs: dict = field(default_factory=dict)

    def __post_init__(self):
        c, dev = self.model.cfg, self.model.device
        self.buf, self.pbuf = static_buffers(c, dev)
        self.prefill_graphs: dict = {}
        self.pool = None
        self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if dev == "cuda" else None
        self.last_launch = 0.0
        self.last_gpu_s = float("nan")

    # -- iterations ----------------------------------------------------------------------------
    def prefill(self, seqs: list[Seq]) -> list[int]:
        """Runs the prompts of ``seqs`` (sorted by slot) as one packed iteration; returns first tokens.
        With prefill graphs, the packed tokens are padded to the next multiple of ``PREFILL_STEP``."""
        L, dev = self.model.cfg.max_len, self.model.device
        lens = [s.prompt for s in seqs]
        T = sum(lens)
        Tb = -(-T // PREFILL_STEP) * PREFILL_STEP
        S = next((b for b in PREFILL_SEQ_BUCKETS if b >= len(seqs)), self.model.cfg.max_num_seqs)
        g = self.prefill_graphs.get((Tb, S))
        if g is None:
            pos = torch.cat([torch.arange(n) for n in lens])
            widx = torch.cat([torch.arange(n) + s.slot * L for s, n in zip(seqs, lens)])
            ids = torch.randint(0, self.model.cfg.vocab, (T,))
            meta = self._meta(seqs, lens, lens, causal=True)
            sample = meta["cu_q"][1:].long() - 1
            self._launch()
            out = self.model.forward(ids.to(dev), pos.to(dev), widx.to(dev), sample, meta)
            self._landed()
            return out.tolist()
        self._prefill_fill(seqs, Tb, S)
        self._launch()
        g.replay()
        self._landed()
        return self.pbuf["out"][: len(seqs)].tolist()

    def _launch(self) -> None:
        self.last_launch = time.perf_counter()
        if self.events:
            self.events[0].record()

    def _landed(self) -> None:
        if self.events:
            self.events[1].record()

    def gpu_seconds(self) -> float:
        """GPU time of the last iteration's forward pass (CUDA events; NaN without CUDA)."""
        if not self.events:
            return float("nan")
        self.events[1].synchronize()
        return self.events[0].elapsed_time(self.events[1]) / 1e3

    def decode(self, seqs: list[Seq]) -> list[int]:
        """One decode step for ``seqs`` (sorted by slot); returns their next tokens."""
        B = len(seqs)
        self._decode_fill(seqs)
        g = self.graphs.get(B)
        self._launch()
        if g is None:
            out = self._decode_eager(seqs)
            self._landed()
            return out.tolist()
        g.replay()
        self._landed()
        return self.buf["out"][:B].tolist()

    # -- serving -------------------------------------------------------------------------------
    def serve(self, trace: list[dict], log_every: float = 10.0) -> tuple[list[dict], list[dict]]:
        """Replays ``trace`` (dicts with arrival_s, prompt_tokens, output_tokens, request_id) in real
        time; returns per-request and per-iteration rows (times in seconds since the start)."""
        c = self.model.cfg
        reqs = [Seq(int(r["request_id"]), float(r["arrival_s"]), int(r["prompt_tokens"]), int(r["output_tokens"])) for r in trace]
        for r in reqs:
            if r.prompt > c.max_num_batched_tokens or r.prompt + r.output > c.max_len:
                raise ValueError(f"request {r.rid}: prompt {r.prompt} + output {r.output} exceed the engine's limits")
        free = list(range(c.max_num_seqs - 1, -1, -1))
        waiting: list[Seq] = []
        running: list[Seq] = []
        iters: list[dict] = []
        nxt, done = 0, 0
        gc.collect()
        gc.disable()
        t0 = time.perf_counter()
        last_log = 0.0
        while done < len(reqs):
            now = time.perf_counter() - t0
            while nxt < len(reqs) and reqs[nxt].arrival <= now:
                waiting.append(reqs[nxt])
                nxt += 1
            if not waiting and not running:
                wait = reqs[nxt].arrival - now
                if wait > 2e-3:
                    time.sleep(wait - 1e-3)
                while time.perf_counter() - t0 < reqs[nxt].arrival:
                    pass
                continue
            start = now
            admitted: list[Seq] = []
            tokens = 0
            while waiting and len(running) + len(admitted) < c.max_num_seqs:
                n = waiting[0].prompt
                if admitted and tokens + n > c.max_num_batched_tokens:
                    break
                s = waiting.pop(0)
                s.slot = free.pop()
                admitted.append(s)
                tokens += n
            if admitted:
                batch = sorted(admitted, key=lambda s: s.slot)
                out = self.prefill(batch)
                kv_read = 0
            else:
                batch = sorted(running, key=lambda s: s.slot)
                kv_read = sum(s.computed + 1 for s in batch)
                out = self.decode(batch)
            end = time.perf_counter() - t0
            launch, gpu = self.last_launch - t0, self.gpu_seconds()
            for s, tok in zip(batch, out):
                s.computed = s.prompt if admitted else s.computed + 1
                s.generated += 1
                s.last_token = tok
                if s.generated == 1:
                    s.first_t = end
                if s.generated == s.output:
                    s.last_t = end
                    free.append(s.slot)
                    done += 1
            if admitted:
                running.extend(s for s in admitted if s.generated < s.output)
            else:
                running = [s for s in running if s.generated < s.output]
            iters.append({"start_s": start, "end_s": end, "prefill_lens": ";".join(str(s.prompt) for s in batch) if admitted else "",
                          "prefill_tokens": tokens, "decode_seqs": 0 if admitted else len(batch), "decode_kv_tokens": kv_read,
                          "waiting": len(waiting), "running": len(running),
                          "launch_s": launch, "gpu_s": gpu})
            if end - last_log > log_every:
                last_log = end
                print(f"  t={end:7.1f}s done {done}/{len(reqs)} running {len(running)} waiting {len(waiting)}", flush=True)
        gc.enable()
        rows = [{"request_id": r.rid, "arrival_s": r.arrival, "first_token_s": r.first_t, "last_token_s": r.last_t,
                 "prompt_tokens": r.prompt, "output_tokens": r.output} for r in reqs]
        return rows, iters
