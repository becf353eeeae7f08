"""A small continuous-batching serving engine on PyTorch, to check fleetwise against a real GPU.

It serves Llama-3-8B (random bf16 weights; the same unfused layers as ``calibrate/measure_gpu.py``)
and replays request traces in real wall-clock time, scheduling exactly as fleetwise's ``vllm``
scheduler does (``rust/core/src/scheduler/vllm.rs``, vLLM v0 with chunked prefill off):

* each iteration is either all prefills or all decodes (prefill first);
* waiting requests are admitted first come first served while fewer than ``max_num_seqs`` run and
  their prompts fit ``max_num_batched_tokens`` (the first one is always admitted);
* with nothing to admit, every running request decodes one token.

The KV cache is contiguous per sequence slot (``max_num_seqs`` slots of ``max_len`` tokens, so no
request is ever preempted, and fleetwise's paged cache of ~400K tokens never fills either). Attention
is FlashAttention-2's variable-length kernel through ``torch.ops.aten._flash_attention_forward``
(``seqused_k`` gives each slot's length): prompts of one prefill iteration are packed without
padding. Decode iterations replay a CUDA graph captured for each batch size (1..max_num_seqs, no
padding); prefill runs eagerly, as in vLLM. Each iteration ends when its sampled tokens (greedy)
are on the host, and that is when its tokens count as emitted. Without a usable flash kernel (on a
CPU, to test the logic) attention falls back to one SDPA call per sequence and graphs are off.

Runs with PyTorch only (it does not import fleetwise), so it can be copied to any GPU machine with
``torch_model.py`` (the model it serves)::

    python3 tools/fidelity/torch_engine.py --out OUT TRACE.csv [TRACE.csv ...]

A trace CSV has ``request_id, arrival_s, prompt_tokens, output_tokens``; its name (file stem) labels
its rows in the outputs: ``requests.csv`` (per request: arrival, first and last token times in
seconds since the trace started), ``iterations.csv`` (per iteration: start, end, prefill lengths,
decode batch and KV tokens read, queue lengths) and ``device.json``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # torch_model.py beside this file, also when run as a script
from torch_model import DECODE_SPLITS, DT, Config, Model  # noqa: E402

PREFILL_STEP = 64
"""Prefill graphs pad the packed prompt tokens of an iteration to a multiple of this."""
PREFILL_SEQ_BUCKETS = (1, 2, 4, 8)
"""Prefill graphs are captured for these numbers of prompts (and for ``max_num_seqs``); an
iteration pads its prompts with empty ones up to the next bucket."""


@dataclass
class Seq:
    """One request being served."""

    rid: int
    arrival: float
    prompt: int
    output: int
    slot: int = -1
    computed: int = 0
    generated: int = 0
    last_token: int = 0
    first_t: float = float("nan")
    last_t: float = float("nan")


@dataclass
class Engine:
    """Continuous batching over a ``Model`` with fleetwise's ``vllm`` scheduling policy."""

    model: Model
    graphs: dict = field(default_factory=dict)

    def __post_init__(self):
        c, dev = self.model.cfg, self.model.device
        n = c.max_num_seqs
        self.buf = {"ids": torch.zeros(n, dtype=torch.long, device=dev), "pos": torch.zeros(n, dtype=torch.long, device=dev),
                    "widx": torch.zeros(n, dtype=torch.long, device=dev), "cu_k": torch.zeros(n + 1, dtype=torch.int32, device=dev),
                    "used_k": torch.zeros(n, dtype=torch.int32, device=dev), "cu_q": torch.arange(n + 1, dtype=torch.int32, device=dev),
                    "sample": torch.arange(n, dtype=torch.long, device=dev), "out": torch.zeros(n, dtype=torch.long, device=dev)}
        t = c.max_num_batched_tokens
        self.pbuf = {"ids": torch.zeros(t, dtype=torch.long, device=dev), "pos": torch.zeros(t, dtype=torch.long, device=dev),
                     "widx": torch.zeros(t, dtype=torch.long, device=dev), "cu_q": torch.zeros(n + 1, dtype=torch.int32, device=dev),
                     "cu_k": torch.zeros(n + 1, dtype=torch.int32, device=dev), "used_k": torch.zeros(n, dtype=torch.int32, device=dev),
                     "sample": torch.zeros(n, dtype=torch.long, device=dev), "out": torch.zeros(n, dtype=torch.long, device=dev)}
        self.prefill_graphs: dict = {}
        self.pool = None
        self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if dev == "cuda" else None
        self.last_launch = 0.0
        self.last_gpu_s = float("nan")

    # -- batches -------------------------------------------------------------------------------
    def _meta(self, seqs: list[Seq], q_lens: list[int], k_lens: list[int], causal: bool) -> dict:
        L = self.model.cfg.max_len
        offs = [s.slot * L for s in seqs]
        cu_q = [0]
        for n in q_lens:
            cu_q.append(cu_q[-1] + n)
        dev = self.model.device
        return {"cu_q": torch.tensor(cu_q, dtype=torch.int32, device=dev),
                "cu_k": torch.tensor(offs + [offs[-1] + L], dtype=torch.int32, device=dev),
                "used_k": torch.tensor(k_lens, dtype=torch.int32, device=dev),
                "max_q": max(q_lens), "max_k": L if not causal else max(k_lens), "causal": causal,
                "q_ranges": list(zip(cu_q[:-1], cu_q[1:])), "k_ranges": list(zip(offs, k_lens))}

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

    def _prefill_fill(self, seqs: list[Seq], Tb: int, S: int) -> None:
        """Fills the static prefill buffers: real tokens first, then padding tokens (position 0,
        K/V to the dummy row); padding sequences have no queries and no keys."""
        c, b = self.model.cfg, self.pbuf
        L, n = c.max_len, c.max_num_seqs
        lens = [s.prompt for s in seqs]
        T = sum(lens)
        b = {k: v[: S + 1] if k in ("cu_q", "cu_k") else v[:S] if k in ("used_k", "sample") else v for k, v in b.items()}
        pos = torch.zeros(Tb, dtype=torch.long)
        widx = torch.full((Tb,), n * L, dtype=torch.long)
        cu_q, cu_k, used = [0], [], []
        for s, m in zip(seqs, lens):
            pos[cu_q[-1]:cu_q[-1] + m] = torch.arange(m)
            widx[cu_q[-1]:cu_q[-1] + m] = torch.arange(m) + s.slot * L
            cu_k.append(s.slot * L)
            used.append(m)
            cu_q.append(cu_q[-1] + m)
        end = cu_k[-1] + L
        cu_k += [end] * (S + 1 - len(cu_k))
        cu_q += [T] * (S + 1 - len(cu_q))
        used += [0] * (S - len(used))
        sample = [q - 1 for q in cu_q[1:len(seqs) + 1]] + [0] * (S - len(seqs))
        b["ids"][:Tb].copy_(torch.randint(0, c.vocab, (Tb,)))
        b["pos"][:Tb].copy_(pos)
        b["widx"][:Tb].copy_(widx)
        b["cu_q"].copy_(torch.tensor(cu_q, dtype=torch.int32))
        b["cu_k"].copy_(torch.tensor(cu_k, dtype=torch.int32))
        b["used_k"].copy_(torch.tensor(used, dtype=torch.int32))
        b["sample"].copy_(torch.tensor(sample, dtype=torch.long))

    def _prefill_static(self, Tb: int, S: int):
        b = self.pbuf
        meta = {"cu_q": b["cu_q"][:S + 1], "cu_k": b["cu_k"][:S + 1], "used_k": b["used_k"][:S], "max_q": Tb, "max_k": Tb, "causal": True}
        return self.model.forward(b["ids"][:Tb], b["pos"][:Tb], b["widx"][:Tb], b["sample"][:S], meta)

    def capture_prefill_graphs(self) -> None:
        """Captures one prefill CUDA graph per padded token count (multiples of ``PREFILL_STEP``
        up to ``max_num_batched_tokens``) and prompt-count bucket, largest first, in one memory pool."""
        c = self.model.cfg
        dummy = [Seq(-1, 0, 1, 2, slot=0)]
        for Tb in range(c.max_num_batched_tokens // PREFILL_STEP * PREFILL_STEP, 0, -PREFILL_STEP):
            for S in sorted({*PREFILL_SEQ_BUCKETS, c.max_num_seqs}, reverse=True):
                self.capture_prefill_graph(Tb, S, dummy)
        torch.cuda.synchronize()

    def capture_prefill_graph(self, Tb: int, S: int, dummy: list) -> None:
        """Captures the prefill graph of ``Tb`` padded tokens for up to ``S`` prompts (after one
        warm-up run on a side stream), sharing the engine's graph memory pool."""
        dummy[0].prompt = Tb
        self._prefill_fill(dummy, Tb, S)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self._prefill_static(Tb, S)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            self.pbuf["out"][:S].copy_(self._prefill_static(Tb, S))
        self.pool = g.pool()
        self.prefill_graphs[(Tb, S)] = g

    def _decode_fill(self, seqs: list[Seq]) -> None:
        L = self.model.cfg.max_len
        b, B = self.buf, len(seqs)
        b["ids"][:B].copy_(torch.tensor([s.last_token for s in seqs]))
        ctx = [s.computed for s in seqs]
        b["pos"][:B].copy_(torch.tensor(ctx))
        b["widx"][:B].copy_(torch.tensor([s.slot * L + p for s, p in zip(seqs, ctx)]))
        offs = [s.slot * L for s in seqs]
        b["cu_k"][:B + 1].copy_(torch.tensor(offs + [offs[-1] + L], dtype=torch.int32))
        b["used_k"][:B].copy_(torch.tensor([p + 1 for p in ctx], dtype=torch.int32))

    def _decode_meta(self, seqs: list[Seq]) -> dict:
        B, b, L = len(seqs), self.buf, self.model.cfg.max_len
        meta = {"cu_q": b["cu_q"][:B + 1], "cu_k": b["cu_k"][:B + 1], "used_k": b["used_k"][:B], "max_q": 1, "max_k": L, "causal": False}
        if not self.model.flash:
            meta["q_ranges"] = [(j, j + 1) for j in range(B)]
            meta["k_ranges"] = [(s.slot * L, s.computed + 1) for s in seqs]
        return meta

    def _decode_eager(self, seqs: list[Seq]):
        B, b = len(seqs), self.buf
        return self.model.forward(b["ids"][:B], b["pos"][:B], b["widx"][:B], b["sample"][:B], self._decode_meta(seqs))

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

    def capture_graphs(self) -> None:
        """Captures one decode CUDA graph per batch size, largest first, sharing one memory pool."""
        n, L = self.model.cfg.max_num_seqs, self.model.cfg.max_len
        dummy = [Seq(rid=-1, arrival=0, prompt=1, output=2, slot=j, computed=1) for j in range(n)]
        pool = self.pool
        for B in range(n, 0, -1):
            seqs = dummy[:B]
            self._decode_fill(seqs)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                self._decode_eager(seqs)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.buf["out"][:B].copy_(self._decode_eager(seqs))
            pool = self.pool = g.pool()
            self.graphs[B] = g
        torch.cuda.synchronize()
        del L

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


def enable_flash(model: Model, splits: int = DECODE_SPLITS) -> str:
    """Turns on the FlashAttention varlen path if it runs and agrees with per-sequence SDPA on a
    small packed batch; returns what was chosen and why."""
    if model.device != "cuda":
        return "sdpa per sequence (no CUDA)"
    c, L = model.cfg, model.cfg.max_len
    try:
        torch.manual_seed(0)
        seqs = [Seq(0, 0, 37, 2, slot=1), Seq(1, 0, 300, 2, slot=3)]
        eng = Engine(model)
        lens = [s.prompt for s in seqs]
        for i in range(2):  # fill two layers' rows with data
            model.k[i].normal_()
            model.v[i].normal_()
        q = torch.randn(sum(lens), c.heads, c.head_dim, device="cuda", dtype=DT)
        results = []
        for causal, q_lens in ((True, lens), (False, [1, 1])):
            qq = q if causal else q[:2]
            meta = eng._meta(seqs, q_lens, lens, causal)
            model.flash = True
            a = model.attention(0, qq, meta)
            model.flash = False
            b = model.attention(0, qq, meta)
            results.append((a.float() - b.float()).abs().max().item())
        # the padded layout of prefill graphs: 64 extra query rows, empty padding sequences
        meta = eng._meta(seqs, lens, lens, True)
        T, n = sum(lens), c.max_num_seqs
        qp = torch.cat([q, torch.randn(64, c.heads, c.head_dim, device="cuda", dtype=DT)])
        cu_q = meta["cu_q"].tolist() + [T] * (n + 1 - len(seqs) - 1)
        cu_k = meta["cu_k"].tolist() + [meta["cu_k"][-1].item()] * (n + 1 - len(seqs) - 1)
        padded = dict(meta, cu_q=torch.tensor(cu_q, dtype=torch.int32, device="cuda"), cu_k=torch.tensor(cu_k, dtype=torch.int32, device="cuda"),
                      used_k=torch.tensor(lens + [0] * (n - len(seqs)), dtype=torch.int32, device="cuda"), max_q=T + 64, max_k=T + 64)
        model.flash = True
        a = model.attention(0, qp, padded)[:T]
        model.flash = False
        b = model.attention(0, q, meta)
        results.append((a.float() - b.float()).abs().max().item())
        for i in range(2):
            model.k[i].zero_()
            model.v[i].zero_()
        if max(results) > 2e-2:
            return f"sdpa per sequence (flash varlen disagrees: {results})"
        model.flash = True
        split_note = "FlashAttention's split heuristic for decode"
        if splits:
            try:
                meta = eng._meta(seqs, [1, 1], lens, False)
                model.splits = splits
                a = model.attention(0, q[:2], meta)
                model.flash, model.splits = False, 0
                b = model.attention(0, q[:2], meta)
                model.flash = True
                err = (a.float() - b.float()).abs().max().item()
                if err < 2e-2:
                    model.splits = splits
                    split_note = f"decode split into {splits} (max abs diff {err:.1e})"
                else:
                    split_note += f" (num_splits={splits} disagrees: {err})"
            except Exception as e:  # noqa: BLE001 - older PyTorch: no num_splits argument
                model.flash, model.splits = True, 0
                split_note += f" (num_splits unavailable: {type(e).__name__}: {e})"
        return f"flash varlen (max abs diff vs sdpa {max(results):.1e}); {split_note}"
    except Exception as e:  # noqa: BLE001 - any failure means: use the slow, correct path
        model.flash = False
        return f"sdpa per sequence (flash varlen failed: {type(e).__name__}: {e})"
    finally:
        del L


def read_trace(path: Path) -> list[dict]:
    """Rows of a trace CSV (request_id, arrival_s, prompt_tokens, output_tokens)."""
    with path.open() as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict]) -> None:
    """Writes ``rows`` (dicts with the same keys) as CSV, times rounded to 0.1 microsecond."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: round(v, 7) if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def warm_up(engine: Engine) -> None:
    """A few prefills and decodes of varied shapes, so that library start-up costs fall outside the replay."""
    c = engine.model.cfg
    for lens in ([16], [128], [512, 200], [2000], [1000, 1000, 1000, 1000][: max(1, c.max_num_batched_tokens // 1000)], [64] * 8):
        seqs = [Seq(-1, 0, n, 2, slot=j) for j, n in enumerate(lens)]
        engine.prefill(seqs)
        for s in seqs:
            s.computed = s.prompt
        engine.decode(seqs)
    if engine.model.device == "cuda":
        torch.cuda.synchronize()


def spot_timings(engine: Engine, reps: int = 5) -> dict:
    """Median wall milliseconds of a few engine iterations (host to host, as the replay sees them),
    to set beside the operator-level measurements of ``calibrate/measure_gpu.py``."""
    c = engine.model.cfg
    out = {}
    for name, lens, batch, ctx in (("prefill 512", [512], 0, 0), ("prefill 2048", [2048], 0, 0), ("prefill 4x512", [512] * 4, 0, 0),
                                   ("decode 1 at 512", [], 1, 512), ("decode 32 at 1024", [], 32, 1024), ("decode 64 at 1024", [], 64, 1024)):
        if batch > c.max_num_seqs or ctx >= c.max_len:
            continue
        times = []
        for _ in range(reps):
            seqs = [Seq(-1, 0, n, 2, slot=j) for j, n in enumerate(lens)] or [Seq(-1, 0, ctx, 2, slot=j, computed=ctx) for j in range(batch)]
            t = time.perf_counter()
            engine.prefill(seqs) if lens else engine.decode(seqs)
            times.append((time.perf_counter() - t) * 1e3)
        out[name] = round(sorted(times)[reps // 2], 3)
    if c.max_num_seqs >= 32 and c.max_len > 2500:  # 32 decodes at contexts 100..2500 (mean 1300)
        times = []
        for _ in range(reps):
            seqs = [Seq(-1, 0, 2, 2, slot=j, computed=100 + j * 2400 // 31) for j in range(32)]
            t = time.perf_counter()
            engine.decode(seqs)
            times.append((time.perf_counter() - t) * 1e3)
        out["decode 32 at 100..2500"] = round(sorted(times)[reps // 2], 3)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: load the model, capture graphs, replay each trace, write the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    ap.add_argument("--max-len", type=int, default=2560)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy model (to test the logic on a CPU)")
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--decode-splits", type=int, default=DECODE_SPLITS, help="flash-decoding splits (0: FlashAttention's heuristic)")
    ap.add_argument("--no-prefill-graphs", action="store_true", help="prefill eagerly (decode graphs only)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = Config(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens, max_len=args.max_len)
    if args.tiny:
        cfg = Config(layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, intermediate=512, vocab=1000,
                     max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens, max_len=args.max_len)
    torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.time()
    model = Model(cfg, dev)
    attn = enable_flash(model, args.decode_splits)
    engine = Engine(model)
    print(f"model on {dev} in {time.time() - t0:.1f} s; attention: {attn}", flush=True)
    use_graphs = dev == "cuda" and model.flash and not args.no_graphs
    if use_graphs:
        t1 = time.time()
        try:
            if not args.no_prefill_graphs:
                engine.capture_prefill_graphs()
            engine.capture_graphs()
            print(f"captured {len(engine.prefill_graphs)} prefill and {len(engine.graphs)} decode graphs in {time.time() - t1:.1f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - graphs are an optimisation; eager decode still serves
            engine.graphs.clear()
            engine.prefill_graphs.clear()
            use_graphs = False
            print(f"graph capture failed ({type(e).__name__}: {e}); decoding eagerly", flush=True)
    warm_up(engine)
    bench = spot_timings(engine)
    print(f"spot timings (ms): {bench}", flush=True)
    info = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "attention": attn, "decode_cuda_graphs": use_graphs, "prefill_cuda_graphs": bool(engine.prefill_graphs), "prefill_step": PREFILL_STEP, "prefill_seq_buckets": PREFILL_SEQ_BUCKETS, "decode_splits": model.splits, "config": cfg.__dict__,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "spot_timings_ms": bench, "traces": {}}
    req_rows, it_rows = [], []
    for path in args.traces:
        name = path.stem
        trace = read_trace(path)
        print(f"replaying {name}: {len(trace)} requests", flush=True)
        t1 = time.time()
        reqs, iters = engine.serve(trace)
        info["traces"][name] = {"requests": len(reqs), "iterations": len(iters), "wall_s": round(time.time() - t1, 2)}
        print(f"  {name}: {len(iters)} iterations in {time.time() - t1:.1f} s", flush=True)
        req_rows += [{"trace": name, **r} for r in reqs]
        it_rows += [{"trace": name, **r} for r in iters]
        write_csv(args.out / "requests.csv", req_rows)  # after every trace, so a crash keeps what ran
        write_csv(args.out / "iterations.csv", it_rows)
        (args.out / "device.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
