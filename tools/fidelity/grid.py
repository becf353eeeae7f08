"""Times the serving engine's own iterations on a grid of shapes, to calibrate the simulator on it.

``torch_engine.py`` replays traces in real time; this script runs the same engine (same model, same
CUDA graphs, same host-side code path per iteration) on chosen iteration shapes instead, so the
cost-model factors can be fitted on measurements that are not the traces fleetwise is validated on:

* **decode** batches of 1..64 sequences at uniform contexts, at linearly spread contexts (same mean,
  longest up to 2,500), with one long sequence among short ones, and at contexts drawn from the
  traces' length distribution (own seed);
* **prefill** iterations of 1-8 prompts with 32..4096 tokens in all, equal and mixed lengths.

Each point runs a few warm-up iterations, then ``--reps`` timed ones; a row holds the medians of
the iteration's wall time as ``serve`` measures it (scheduling bookkeeping, input preparation,
graph replay, the sampled tokens' copy to the host), of its host time before the launch and of its
GPU time (CUDA events around the graph), and the mean time of one layer's attention kernel alone.
Points run in a shuffled order so that clock drift does not line up with any one parameter.

Runs with PyTorch only, beside ``torch_engine.py`` and its sibling ``torch_*.py`` files::

    python3 tools/fidelity/grid.py --out OUT        # OUT/grid.csv, OUT/grid.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_engine as te  # noqa: E402

DECODE_ALL_B = list(range(1, 65))
DECODE_SOME_B = [1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64]
LONG = 2500


def lognormal_contexts(rng: random.Random, n: int) -> list[int]:
    """Contexts of ``n`` sequences part-way through their output, lengths drawn like the traces'
    (prompt log-normal median 512 sigma 0.8 in [32, 2048], output median 128 sigma 0.7 in [8, 512])."""
    out = []
    for _ in range(n):
        p = min(2048, max(32, round(rng.lognormvariate(6.238, 0.8))))
        o = min(512, max(8, round(rng.lognormvariate(4.852, 0.7))))
        out.append(p + rng.randrange(o))
    return out


def spread(lo: int, hi: int, n: int) -> list[int]:
    return [lo] if n == 1 else [round(lo + j * (hi - lo) / (n - 1)) for j in range(n)]


def decode_points(max_seqs: int, max_ctx: int) -> list[tuple[str, list[int]]]:
    rng = random.Random(20261123)
    pts = []
    for b in DECODE_ALL_B:
        pts.append(("uniform1024", [1024] * b))
        pts.append(("spread100-2500", spread(100, LONG, b)))
        pts.append(("random", lognormal_contexts(rng, b)))
        pts.append(("random", lognormal_contexts(rng, b)))
    for b in DECODE_SOME_B:
        for c in (128, 512, 2048):
            pts.append((f"uniform{c}", [c] * b))
        pts.append(("spread24-1000", spread(24, 1000, b)))
        pts.append(("spread100-1900", spread(100, 1900, b)))
        pts.append(("spread512-1536", spread(512, 1536, b)))
        if b > 1:
            pts.append(("256+long", [256] * (b - 1) + [LONG]))
            pts.append(("1024+long", [1024] * (b - 1) + [LONG]))
    return [(n, [min(c, max_ctx) for c in ctx]) for n, ctx in pts if len(ctx) <= max_seqs]


def prefill_points(max_tokens: int, max_prompt: int) -> list[tuple[str, list[int]]]:
    rng = random.Random(20261124)
    pts = [("single", [n]) for n in (32, 64, 96, 128, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048)]
    for k in (2, 4, 8):
        for total in (128, 256, 512, 1024, 2048, 4096):
            pts.append((f"equal{k}", [total // k] * k))
    while len(pts) < 64:  # mixes as the scheduler admits them: FCFS prompts while they fit
        lens = []
        k = rng.randint(1, 8)
        while len(lens) < k:
            p = min(2048, max(32, round(rng.lognormvariate(6.238, 0.8))))
            if lens and sum(lens) + p > max_tokens:
                break
            lens.append(p)
        pts.append(("random", lens))
    return [(n, [min(x, max_prompt) for x in lens]) for n, lens in pts if sum(lens) <= max_tokens]


def bucket(n: int, cfg: te.Config) -> int:
    return next((b for b in te.PREFILL_SEQ_BUCKETS if b >= n), cfg.max_num_seqs)


def capture_prefill(engine: te.Engine, keys: set[tuple[int, int]]) -> None:
    """Captures prefill graphs for ``keys`` (padded tokens, prompt bucket) only, largest first, as
    ``Engine.capture_prefill_graphs`` does for all of them."""
    dummy = [te.Seq(-1, 0, 1, 2, slot=0)]
    for Tb, S in sorted(keys, reverse=True):
        engine.capture_prefill_graph(Tb, S, dummy)
    torch.cuda.synchronize()


def step(engine: te.Engine, seqs: list[te.Seq], prefill: bool) -> tuple[float, float, float, float]:
    """One iteration through the code path of ``Engine.serve``; returns (wall seconds from the
    iteration's start to its tokens on the host, as ``iterations.csv`` times it; seconds until the
    next iteration could start, the per-sequence bookkeeping included; host seconds before the
    launch; GPU seconds)."""
    t0 = time.perf_counter()
    batch = sorted(seqs, key=lambda s: s.slot)
    if prefill:
        tokens = sum(s.prompt for s in batch)
        out = engine.prefill(batch)
        kv = 0
    else:
        tokens = 0
        kv = sum(s.computed + 1 for s in batch)
        out = engine.decode(batch)
    t1 = time.perf_counter()
    gpu = engine.gpu_seconds()
    row = []
    for s, tok in zip(batch, out):  # the per-sequence updates serve() makes, undone after
        s.generated += 1
        s.last_token = tok
        row.append(s.generated == s.output)
    for s in batch:
        s.generated -= 1
    _ = {"prefill_tokens": tokens, "decode_kv_tokens": kv, "n": len(row)}
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0, engine.last_launch - t0, gpu


def attention_alone(engine: te.Engine, seqs: list[te.Seq], calls: int, prefill: bool) -> float:
    """Seconds of one layer's attention kernel for ``seqs`` (decode: as the decode graph runs it;
    prefill: the packed causal prompts, unpadded)."""
    m, c = engine.model, engine.model.cfg
    if prefill:
        lens = [s.prompt for s in seqs]
        meta = engine._meta(seqs, lens, lens, causal=True)
        q = torch.randn(sum(lens), c.heads, c.head_dim, device=m.device, dtype=te.DT)
    else:
        engine._decode_fill(seqs)
        meta = engine._decode_meta(seqs)
        q = torch.randn(len(seqs), c.heads, c.head_dim, device=m.device, dtype=te.DT)
    m.attention(0, q, meta)
    if m.device == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            m.attention(0, q, meta)
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3 / calls
    t = time.perf_counter()
    for _ in range(calls):
        m.attention(0, q, meta)
    return (time.perf_counter() - t) / calls


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--attn-calls", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy model on few points (to test on a CPU)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = te.Config()
    if args.tiny:
        cfg = te.Config(layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, intermediate=512, vocab=1000,
                        max_num_seqs=8, max_num_batched_tokens=4096, max_len=2560)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    t0 = time.time()
    model = te.Model(cfg, dev)
    attn = te.enable_flash(model)
    engine = te.Engine(model)
    print(f"model on {dev} in {time.time() - t0:.1f} s; attention: {attn[:120]}", flush=True)
    dpts = decode_points(cfg.max_num_seqs, cfg.max_len - 1)
    ppts = prefill_points(cfg.max_num_batched_tokens, cfg.max_len)
    if args.tiny:
        dpts, ppts = dpts[::40], ppts[::8]
    graphs = dev == "cuda" and model.flash
    if graphs:
        t1 = time.time()
        keys = {(-(-sum(lens) // te.PREFILL_STEP) * te.PREFILL_STEP, bucket(len(lens), cfg)) for _, lens in ppts}
        capture_prefill(engine, keys)
        engine.capture_graphs()
        print(f"captured {len(engine.prefill_graphs)} prefill and {len(engine.graphs)} decode graphs in {time.time() - t1:.1f} s", flush=True)
    te.warm_up(engine)
    # a second of decodes at 32 sequences, so that clocks have settled before the first point
    warm = [te.Seq(-1, 0, 2, 4, slot=j, computed=1000) for j in range(min(32, cfg.max_num_seqs))]
    t1 = time.time()
    while time.time() - t1 < (0.2 if args.tiny else 2.0):
        step(engine, warm, False)
    pts = [("decode", n, ctx) for n, ctx in dpts] + [("prefill", n, lens) for n, lens in ppts]
    random.Random(7).shuffle(pts)
    rows = []
    t1 = time.time()
    for i, (kind, name, xs) in enumerate(pts):
        if kind == "decode":
            seqs = [te.Seq(-1, 0, 2, 4, slot=j, computed=c) for j, c in enumerate(xs)]
        else:
            seqs = [te.Seq(-1, 0, n, 4, slot=j) for j, n in enumerate(xs)]
        for _ in range(args.warmup):
            step(engine, seqs, kind == "prefill")
        wall, period, launch, gpu = zip(*(step(engine, seqs, kind == "prefill") for _ in range(args.reps)))
        attn_s = attention_alone(engine, seqs, args.attn_calls, kind == "prefill")
        rows.append({"kind": kind, "pattern": name, "seqs": len(xs),
                     "prefill_lens": ";".join(map(str, xs)) if kind == "prefill" else "",
                     "contexts": ";".join(str(c + 1) for c in xs) if kind == "decode" else "",
                     "tokens": sum(xs) if kind == "prefill" else len(xs),
                     "decode_kv_tokens": sum(c + 1 for c in xs) if kind == "decode" else 0,
                     "max_context": max(xs) + 1 if kind == "decode" else max(xs),
                     "wall_s": med(wall), "wall_min_s": min(wall), "period_s": med(period), "launch_s": med(launch), "gpu_s": med(gpu),
                     "gpu_min_s": min(gpu), "attn_layer_s": attn_s, "reps": args.reps})
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(pts)} points in {time.time() - t1:.1f} s", flush=True)
    rows.sort(key=lambda r: (r["kind"], r["pattern"], r["seqs"], r["tokens"]))
    te.write_csv(args.out / "grid.csv", rows)
    info = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "attention": attn, "cuda_graphs": graphs, "config": cfg.__dict__,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "points": len(rows), "reps": args.reps, "warmup": args.warmup,
            "attn_calls": args.attn_calls, "grid_wall_s": round(time.time() - t1, 1)}
    (args.out / "grid.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "attention"}), flush=True)


if __name__ == "__main__":
    main()
