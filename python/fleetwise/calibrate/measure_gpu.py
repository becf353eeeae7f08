"""Measures the operators fleetwise's cost model charges, and whole forward passes, on a real GPU.

Runs with PyTorch only (it does not import fleetwise), so it can be copied to any GPU machine:

    python3 python/fleetwise/calibrate/measure_gpu.py --out calibration/h100 [--quick]

It writes CSV files (seconds are medians of CUDA-event timings of back-to-back launches):
  gemm.csv            tokens, k, n, seconds          bf16 x @ W for the projection shapes of
                                                      Llama-3-8B, Llama-2-7B and Llama-2-70B/TP4
  attn_prefill.csv    q, cached, heads, kv_heads, head_dim, seconds   causal attention of a chunk
  attn_decode.csv     batch, context, heads, kv_heads, head_dim, seconds
  copy.csv            bytes, seconds                 device-to-device copy (read + write)
  forward.csv         kind, prefill, cached, decode_batch, context, seconds, graph
                      whole Llama-3-8B forward passes (random weights) of a small engine:
                      a prefill chunk, a decode batch, or both in one mixed iteration
  device.json         what the GPU and software are, and the shape of the forward passes' model
                      ("model": its fleetwise catalogue name and fields; `fleetwise calibrate`
                      refuses a --model of another shape)
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DT = torch.bfloat16
DEV = "cuda"


def timeit(fn, reps: int = 20, warmup: int = 3, inner: int = 1) -> float:
    """Median seconds of one call of ``fn`` (``inner`` calls per timed launch group)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / inner)
    times.sort()
    return times[len(times) // 2]


def write(path: Path, rows: list[dict]) -> None:
    """Writes ``rows`` (dicts with the same keys) to ``path`` as CSV with a header."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)", flush=True)


GEMM_SHAPES = {
    "llama3_8b.qkv": (4096, 6144),
    "llama3_8b.o": (4096, 4096),
    "llama3_8b.gate_up": (4096, 28672),
    "llama3_8b.down": (14336, 4096),
    "llama3_8b.lm_head": (4096, 128256),
    "llama2_7b.qkv": (4096, 12288),
    "llama2_7b.gate_up": (4096, 22016),
    "llama2_7b.down": (11008, 4096),
    "llama2_70b_tp4.qkv": (8192, 2560),
    "llama2_70b_tp4.o": (2048, 8192),
    "llama2_70b_tp4.gate_up": (8192, 14336),
    "llama2_70b_tp4.down": (7168, 8192),
}
TOKENS = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]


def measure_gemm(quick: bool) -> list[dict]:
    """Times the model's GEMM shapes at several token counts; one row per (shape, tokens). ``quick``: a few points only."""
    rows = []
    for name, (k, n) in GEMM_SHAPES.items():
        w = torch.randn(k, n, device=DEV, dtype=DT)
        for t in TOKENS[:: 4 if quick else 1]:
            x = torch.randn(t, k, device=DEV, dtype=DT)
            out = torch.empty(t, n, device=DEV, dtype=DT)
            s = timeit(lambda: torch.matmul(x, w, out=out), reps=15, inner=5)
            rows.append({"shape": name, "tokens": t, "k": k, "n": n, "seconds": s})
        del w
    return rows


def measure_attn_prefill(quick: bool) -> list[dict]:
    """Times causal prefill attention (32 query heads, 8 KV heads, head size 128) over prompt lengths and cached prefixes."""
    rows = []
    h, kvh, d = 32, 8, 128
    cases = [(q, 0) for q in (128, 256, 512, 1024, 2048, 4096, 8192, 16384)]
    cases += [(q, c) for q in (256, 512, 1024, 2048) for c in (1024, 4096, 8192)]
    for q, c in cases[:: 3 if quick else 1]:
        Q = torch.randn(1, h, q, d, device=DEV, dtype=DT)
        K = torch.randn(1, kvh, c + q, d, device=DEV, dtype=DT)
        V = torch.randn(1, kvh, c + q, d, device=DEV, dtype=DT)
        fn, kind = _chunk_attention(Q, K, V, c)
        s = timeit(fn, reps=10, inner=3)
        rows.append({"q": q, "cached": c, "heads": h, "kv_heads": kvh, "head_dim": d, "seconds": s, "mask": kind})
    return rows


def causal_mask(q: int, cached: int, probe=None):
    """The causal mask of a chunk of ``q`` queries after ``cached`` keys, aligned bottom-right so
    that SDPA can use a fused causal kernel (as serving engines do for chunked prefill); falls back
    to an explicit boolean mask if ``probe(mask)`` (a trial call) fails with the former."""
    if cached == 0:
        return None
    try:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(q, cached + q)
        if probe is not None:
            probe(mask)
        return mask
    except Exception as e:  # older PyTorch, or no GQA support for the bias: measure the slow path
        print(f"lower-right causal bias unavailable ({e}); using a boolean mask", flush=True)
        return torch.ones(q, cached + q, device=DEV, dtype=torch.bool).tril(diagonal=cached)


def mask_kind(mask) -> str:
    """How a chunk's causality was expressed."""
    return "square-causal" if mask is None else ("bool-mask" if isinstance(mask, torch.Tensor) else "lower-right-causal")


def chunk_attention(Q, K, V, mask):
    """Causal attention of a chunk; ``mask`` from ``causal_mask`` (None: square causal)."""
    if mask is None:
        return F.scaled_dot_product_attention(Q, K, V, is_causal=True, enable_gqa=True)
    return F.scaled_dot_product_attention(Q, K, V, attn_mask=mask, enable_gqa=True)


def _chunk_attention(Q, K, V, cached):
    """A callable running the causal attention of a chunk of queries after ``cached`` keys."""
    mask = causal_mask(Q.shape[2], cached, probe=lambda m: chunk_attention(Q, K, V, m))
    return (lambda: chunk_attention(Q, K, V, mask)), mask_kind(mask)


def measure_attn_decode(quick: bool) -> list[dict]:
    """Times decode attention (one query token per sequence) over batch sizes and context lengths."""
    rows = []
    h, kvh, d = 32, 8, 128
    for b in (1, 8, 32, 64, 128, 256):
        for c in (128, 512, 1024, 2048, 4096, 8192, 16384):
            if b * c > 1 << 20 or (quick and c not in (512, 4096)):
                continue
            Q = torch.randn(b, h, 1, d, device=DEV, dtype=DT)
            K = torch.randn(b, kvh, c, d, device=DEV, dtype=DT)
            V = torch.randn(b, kvh, c, d, device=DEV, dtype=DT)
            s = timeit(lambda: F.scaled_dot_product_attention(Q, K, V, enable_gqa=True), reps=10, inner=5)
            rows.append({"batch": b, "context": c, "heads": h, "kv_heads": kvh, "head_dim": d, "seconds": s})
    return rows


def measure_copy() -> list[dict]:
    """Times device-to-device copies of 16 MiB to 4 GiB: the GPU's achieved memory bandwidth."""
    rows = []
    for mb in (16, 64, 256, 1024, 4096):
        n = mb * (1 << 20) // 2
        a = torch.empty(n, device=DEV, dtype=DT)
        b = torch.empty_like(a)
        s = timeit(lambda: b.copy_(a), reps=10, inner=3)
        rows.append({"bytes": 2 * a.numel() * 2, "seconds": s})
    return rows


FORWARD_MODEL = {"name": "llama-3-8b", "num_layers": 32, "hidden_size": 4096, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128,
                 "intermediate_size": 14336, "vocab_size": 128256, "num_experts": 0, "mla": None, "mlp": "gated",
                 "parallel_attention": False, "sliding_window": None, "tie_word_embeddings": False, "dtype_bytes": 2}
"""The model ``Llama()`` runs, as fleetwise's catalogue describes it (written to device.json; the
same as ``fleetwise.calibrate.fit.FORWARD_MODEL``, which this script cannot import)."""


class Llama:
    """A small Llama-3-8B engine on random weights: paged-free contiguous KV, SDPA attention."""

    def __init__(self, layers=32, h=4096, heads=32, kvh=8, d=128, inter=14336, vocab=128256):
        self.L, self.h, self.H, self.KV, self.d, self.I, self.V = layers, h, heads, kvh, d, inter, vocab
        g = lambda *s: (torch.randn(*s, device=DEV, dtype=DT) * 0.02)
        self.embed = g(vocab, h)
        self.layers = [
            {"ln1": torch.ones(h, device=DEV, dtype=DT), "qkv": g(h, (heads + 2 * kvh) * d), "o": g(heads * d, h),
             "ln2": torch.ones(h, device=DEV, dtype=DT), "gu": g(h, 2 * inter), "down": g(inter, h)}
            for _ in range(layers)
        ]
        self.norm = torch.ones(h, device=DEV, dtype=DT)
        self.head = g(h, vocab)
        inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=DEV, dtype=torch.float32) / d))
        pos = torch.arange(0, 32768, device=DEV, dtype=torch.float32)
        f = torch.outer(pos, inv)
        self.cos, self.sin = f.cos().to(DT), f.sin().to(DT)

    def rope(self, x, pos):
        """Applies rotary position embeddings at positions ``pos`` to ``x`` (interleaved pairs)."""
        c, s = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)

    @staticmethod
    def rms(x, w):
        """RMS-normalises ``x`` in float32 and scales it by the weight ``w``."""
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(v + 1e-5)).to(DT) * w

    def setup(self, prefill: int, cached: int, batch: int, context: int):
        """Allocates inputs and KV caches for one iteration shape; returns a callable running it."""
        H, KV, d = self.H, self.KV, self.d
        T = prefill + batch
        ids = torch.randint(0, self.V, (T,), device=DEV)
        pos_p = torch.arange(cached, cached + prefill, device=DEV)
        pos_d = torch.full((batch,), context, device=DEV, dtype=torch.long)
        pos = torch.cat([pos_p, pos_d])
        kp = [torch.randn(1, KV, cached + prefill, d, device=DEV, dtype=DT) for _ in range(self.L)] if prefill else None
        vp = [torch.randn_like(k) for k in kp] if prefill else None
        kd = [torch.randn(batch, KV, context + 1, d, device=DEV, dtype=DT) for _ in range(self.L)] if batch else None
        vd = [torch.randn_like(k) for k in kd] if batch else None
        mask = None
        if prefill and cached:
            Qp = torch.randn(1, H, prefill, d, device=DEV, dtype=DT)
            mask = causal_mask(prefill, cached, probe=lambda m: chunk_attention(Qp, kp[0], vp[0], m))
        sample = torch.cat([torch.tensor([prefill - 1], device=DEV) if prefill else torch.empty(0, device=DEV, dtype=torch.long), torch.arange(prefill, T, device=DEV)])

        def step():
            x = self.embed[ids]
            for i, w in enumerate(self.layers):
                y = self.rms(x, w["ln1"]) @ w["qkv"]
                q, k, v = y.split([H * d, KV * d, KV * d], dim=-1)
                q = self.rope(q.view(T, H, d), pos)
                k = self.rope(k.view(T, KV, d), pos)
                v = v.view(T, KV, d)
                outs = []
                if prefill:
                    kp[i][0, :, cached:, :] = k[:prefill].transpose(0, 1)
                    vp[i][0, :, cached:, :] = v[:prefill].transpose(0, 1)
                    a = chunk_attention(q[:prefill].transpose(0, 1)[None], kp[i], vp[i], mask)
                    outs.append(a[0].transpose(0, 1).reshape(prefill, H * d))
                if batch:
                    kd[i][:, :, context, :] = k[prefill:]
                    vd[i][:, :, context, :] = v[prefill:]
                    a = F.scaled_dot_product_attention(q[prefill:][:, :, None, :], kd[i], vd[i], enable_gqa=True)
                    outs.append(a.reshape(batch, H * d))
                a = outs[0] if len(outs) == 1 else torch.cat(outs)
                x = x + a @ w["o"]
                gu = self.rms(x, w["ln2"]) @ w["gu"]
                g_, u = gu.chunk(2, dim=-1)
                x = x + (F.silu(g_) * u) @ w["down"]
            logits = self.rms(x[sample], self.norm) @ self.head
            return logits.float()

        return step


def measure_forward(quick: bool) -> list[dict]:
    """Times whole forward passes of the Llama-3-8B-shaped model: prefills of several lengths and decode batches at several contexts."""
    model = Llama()
    cases = [("prefill", p, 0, 0, 0) for p in (128, 256, 512, 1024, 2048, 4096, 8192)]
    cases += [("decode", 0, 0, b, c) for b, c in ((1, 512), (1, 4096), (8, 1024), (8, 4096), (32, 512), (32, 2048), (64, 1024), (64, 4096), (128, 512), (128, 2048), (256, 1024))]
    cases += [("mixed", p, c, b, ctx) for p, c, b, ctx in ((512, 0, 16, 1024), (512, 1024, 32, 1024), (512, 2048, 64, 2048), (1024, 0, 64, 512), (256, 4096, 128, 1024), (2048, 0, 32, 2048))]
    if quick:
        cases = cases[::4]
    rows = []
    for kind, p, c, b, ctx in cases:
        step = model.setup(p, c, b, ctx)
        eager = timeit(step, reps=5, warmup=2)
        graph_s = float("nan")
        try:
            torch.cuda.synchronize()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    step()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step()
            graph_s = timeit(g.replay, reps=10, warmup=2)
            del g
        except Exception as e:  # graph capture is an optimisation; eager timing still counts
            print(f"graph capture failed for {kind} {p} {c} {b} {ctx}: {e}", flush=True)
        rows.append({"kind": kind, "prefill": p, "cached": c, "decode_batch": b, "context": ctx, "eager_seconds": eager, "graph_seconds": graph_s})
        print(rows[-1], flush=True)
        del step
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    """Runs every measurement and writes the CSV files and ``device.json`` into ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="a few points of each, to check the script")
    ap.add_argument("--skip-forward", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    p = torch.cuda.get_device_properties(0)
    info = {"name": p.name, "sms": p.multi_processor_count, "memory_bytes": p.total_memory, "torch": torch.__version__,
            "cuda": torch.version.cuda, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.skip_forward:
        info["model"] = FORWARD_MODEL
    (args.out / "device.json").write_text(json.dumps(info, indent=2) + "\n")
    print(info, flush=True)
    t0 = time.time()
    write(args.out / "copy.csv", measure_copy())
    write(args.out / "gemm.csv", measure_gemm(args.quick))
    write(args.out / "attn_prefill.csv", measure_attn_prefill(args.quick))
    write(args.out / "attn_decode.csv", measure_attn_decode(args.quick))
    print(f"operators took {time.time() - t0:.0f} s", flush=True)
    if not args.skip_forward:
        write(args.out / "forward.csv", measure_forward(args.quick))
    print(f"total {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
