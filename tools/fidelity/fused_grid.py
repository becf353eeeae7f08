"""Times whole iterations of an efficient (vLLM-like) engine on a grid of shapes and models.

For each model shape (Llama-3-8B, a Llama-3-70B-shaped subset of layers, Mixtral-8x7B and
Qwen3-30B-A3B, the last two as subsets of layers where memory asks for it), each point is one
iteration of ``fused_model.FusedModel`` (fused kernels, FlashAttention, grouped-GEMM MoE, LM head on
sampled rows) captured in a CUDA graph and replayed: a few warm-up runs, capture, then ``--reps``
timed replays (CUDA events around each; medians and spread). Points:

* prefill of one prompt of 128..8192 tokens, and of several prompts packed;
* decode batches of 1..256 sequences at contexts 512, 2048, 8192 (batch x context bounded by the
  cache), and one batch of spread contexts;
* mixed iterations: a prompt chunk (with a cached prefix) plus a decode batch, as chunked prefill
  (Sarathi-Serve, vLLM v1) forms them.

It also measures the hardware itself: a large bf16 GEMM's FLOP rate and a device-to-device copy's
bandwidth. Output (``--out``): ``iterations.csv`` (one row per point), ``hardware.csv`` and
``device.json``. Runs with PyTorch (and Triton) only::

    python3 tools/fidelity/fused_grid.py --out OUT [--models llama-3-8b,...] [--reps 10]
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fused_model import FusedModel, Shape, make_batch  # noqa: E402

SHAPES = {
    "llama-3-8b": Shape("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256),
    "llama-3-70b": Shape("llama-3-70b", 80, 8192, 64, 8, 128, 28672, 128256, layers_run=20),
    "mixtral-8x7b": Shape("mixtral-8x7b", 32, 4096, 32, 8, 128, 14336, 32000, 8, 2, 14336, layers_run=16),
    "qwen3-30b-a3b": Shape("qwen3-30b-a3b", 48, 2048, 32, 4, 128, 6144, 151936, 128, 8, 768),
}
KV_TOKENS = 270_000
"""Cache capacity in tokens: every point's batch x context stays at or below 2^18."""


def points(quick: bool) -> list[tuple[str, list[tuple[int, int]]]]:
    """The grid: (label, sequences as (new tokens, cached tokens))."""
    pts = [(f"prefill{n}", [(n, 0)]) for n in (128, 256, 512, 1024, 2048, 4096, 8192)]
    pts += [("prefill4x256", [(256, 0)] * 4), ("prefill8x512", [(512, 0)] * 8), ("prefill2x2048", [(2048, 0)] * 2),
            ("chunk1024+cached3072", [(1024, 3072)])]
    for ctx in (512, 2048, 8192):
        for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            if b * ctx <= 1 << 18:
                pts.append((f"decode{b}x{ctx}", [(1, ctx)] * b))
    pts.append(("decode64spread", [(1, 128 + round(j * (4096 - 128) / 63)) for j in range(64)]))
    pts += [("mixed512+32x1024", [(512, 0)] + [(1, 1024)] * 32), ("mixed512c2048+128x1024", [(512, 2048)] + [(1, 1024)] * 128),
            ("mixed2048c4096+64x2048", [(2048, 4096)] + [(1, 2048)] * 64), ("mixed1024+255x512", [(1024, 0)] + [(1, 512)] * 255)]
    if quick:
        pts = [p for p in pts if sum(q + c for q, c in p[1]) <= 4096 and len(p[1]) <= 8]
    return pts


def time_point(model: FusedModel, seqs: list[tuple[int, int]], reps: int, graphs: bool, sample_all: bool = False) -> dict:
    """Median and spread of one iteration's GPU time (graph replay) and wall time (replay + sync);
    ``sample_all``: the LM head on every new token (a verify pass), not each sequence's last."""
    b = make_batch(seqs, model.s.vocab_size, model.device, sample_all)
    cuda = model.device == "cuda"
    if not cuda:
        t0 = time.perf_counter()
        model.forward(b)
        s = time.perf_counter() - t0
        return {"gpu_seconds": s, "gpu_p10": s, "gpu_p90": s, "wall_seconds": s}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model.forward(b)
    torch.cuda.current_stream().wait_stream(side)
    run = model.forward
    g = None
    if graphs:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            model.forward(b)
        run = lambda _b: g.replay()  # noqa: E731
    for _ in range(2):
        run(b)
    torch.cuda.synchronize()
    gpu, wall = [], []
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for e0, e1 in ev:
        t0 = time.perf_counter()
        e0.record()
        run(b)
        e1.record()
        e1.synchronize()
        wall.append(time.perf_counter() - t0)
    gpu = sorted(e0.elapsed_time(e1) / 1e3 for e0, e1 in ev)
    del g
    return {"gpu_seconds": statistics.median(gpu), "gpu_p10": gpu[len(gpu) // 10], "gpu_p90": gpu[(len(gpu) * 9) // 10],
            "wall_seconds": statistics.median(wall)}


def safe_point(model: FusedModel, seqs: list[tuple[int, int]], reps: int, graphs: bool, label: str, sample_all: bool = False) -> dict | None:
    """``time_point``, or None when it fails (the failure printed under ``label``, the GPU's
    cache emptied): one failed point must not lose the others."""
    try:
        return time_point(model, seqs, reps, graphs, sample_all)
    except Exception as e:  # noqa: BLE001 - one failed point must not lose the others
        print(f"{label}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        if model.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return None


def free_device(device: str) -> None:
    """Returns a dropped model's memory (garbage collection, then the CUDA cache)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def start_run(out: Path, reps: int, graphs: bool) -> tuple[str, float, dict]:
    """Begins a timing run into ``out``: measures the device's GEMM and copy rates into
    ``out/hardware.csv``; returns the device (``cuda`` or ``cpu``), the start time and the run's
    description for ``device.json`` (written by ``finish_run``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "reps": reps, "graphs": graphs}
    with open(out / "hardware.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["kind", "size", "rate"])
        w.writeheader()
        w.writerows(hardware(device))
    return device, start, info


def finish_run(out: Path, start: float, info: dict) -> None:
    """Writes ``out/device.json``: the run's description and how long it took."""
    info["seconds"] = round(time.perf_counter() - start, 1)
    (out / "device.json").write_text(json.dumps(info, indent=1) + "\n")


def hardware(device: str) -> list[dict]:
    """A large bf16 GEMM's FLOP/s and a device copy's bytes/s (medians of 20 after warm-up)."""
    if device != "cuda":
        return []
    rows = []
    for n in (4096, 8192, 16384):
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        bm = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        rows.append({"kind": "gemm", "size": n, "rate": 2 * n**3 / _median_time(lambda: a @ bm)})
    for mb in (256, 1024, 4096):
        x = torch.empty(mb << 20, dtype=torch.uint8, device=device)
        y = torch.empty_like(x)
        rows.append({"kind": "copy", "size": mb << 20, "rate": 2 * (mb << 20) / _median_time(lambda: y.copy_(x))})
    return rows


def _median_time(fn) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(20):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) / 1e3)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="small points only (to check the script on a CPU)")
    ap.add_argument("--no-graphs", action="store_true", help="replay nothing; run each iteration eagerly")
    ap.add_argument("--layers", type=int, default=0, help="override every model's layer count (CPU checks)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new points after this many seconds")
    args = ap.parse_args()
    device, start, info = start_run(args.out, args.reps, not args.no_graphs)
    fields = ["model", "layers_run", "label", "prefills", "decode_kv", "tokens", "gpu_seconds", "gpu_p10", "gpu_p90", "wall_seconds"]
    with open(args.out / "iterations.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        for name in args.models.split(","):
            shape = SHAPES[name]
            if args.layers:
                shape.layers_run = args.layers
            t0 = time.perf_counter()
            model = FusedModel(shape, 40_000 if args.quick else KV_TOKENS, device)
            print(f"{name}: {shape.layers} layers built in {time.perf_counter() - t0:.1f} s", flush=True)
            for label, seqs in points(args.quick):
                if time.perf_counter() - start > args.budget_s:
                    print(f"budget spent; skipping {name} {label}", flush=True)
                    continue
                r = safe_point(model, seqs, args.reps, not args.no_graphs, f"{name} {label}")
                if r is None:
                    continue
                w.writerow({"model": name, "layers_run": shape.layers, "label": label,
                            "prefills": json.dumps([[q, c] for q, c in seqs if q > 1]),
                            "decode_kv": json.dumps([q + c for q, c in seqs if q == 1]),
                            "tokens": sum(q for q, _ in seqs), **{k: f"{v:.7g}" for k, v in r.items()}})
                fh.flush()
                print(f"{name} {label}: {r['gpu_seconds'] * 1e3:.3f} ms", flush=True)
            del model
            free_device(device)
    finish_run(args.out, start, info)


if __name__ == "__main__":
    main()
