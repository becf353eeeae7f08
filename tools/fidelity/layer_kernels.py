"""Times each kernel of one transformer layer alone, at tensor-parallel shard shapes, on one GPU.

``fused_grid.py`` times whole iterations, in which the projections, the elementwise kernels and a
MoE layer's dispatch and combine cannot be told apart: a fit to them alone can trade one against
another. This tool times each of them separately, as the efficient engine of ``fused_model.py``
runs them, for the shard one GPU of a tensor-parallel group holds (heads, KV heads and the MLP's
intermediate size divided by ``tp``; the hidden size whole):

* ``qkv_proj``, ``o_proj``, ``mlp_gate_up``, ``mlp_down``: bf16 GEMMs (``torch.matmul``);
* ``add_rms`` (x2 per layer), ``rope``, ``silu_mul``: the fused Triton kernels of ``fused_kernels.py``;
  ``kv_write``: the new K and V copied into a flat cache (``index_copy_``);
* MoE layers (Mixtral-8x7B, Qwen3-30B-A3B): ``moe_router`` (router GEMM, softmax, top-k),
  ``moe_dispatch`` (sort of the token-expert pairs by expert, gather of their hidden vectors) and
  ``moe_combine`` (weighting and scatter-add back), as ``fused_model.FusedModel.moe`` runs them.

Each kernel is captured ``--reps`` times in one CUDA graph; the graph is replayed 7 times (CUDA events)
and the median divided by the repetitions is its time. The GPU's own large-GEMM FLOP/s and copy
bytes/s are measured alongside (``fused_grid.hardware``). Output (``--out``): ``kernels.csv`` (gpu,
model, tp, tokens, op, seconds, flops, bytes) and ``device.json``. PyTorch and Triton only::

    python3 tools/fidelity/layer_kernels.py --out OUT [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fused_grid import hardware  # noqa: E402
from fused_kernels import Fused  # noqa: E402
from graph_timing import replay_times  # noqa: E402

DT = torch.bfloat16
DENSE = {  # hidden, heads, kv heads, head dim, intermediate
    "llama-2-7b": (4096, 32, 32, 128, 11008),
    "llama-2-70b": (8192, 64, 8, 128, 28672),
    "llama-3-8b": (4096, 32, 8, 128, 14336),
}
"""Dense models whose layer is timed at every tensor-parallel degree."""
MOE = {  # hidden, experts, experts per token
    "mixtral-8x7b": (4096, 8, 2),
    "qwen3-30b-a3b": (2048, 128, 8),
}
"""MoE models whose routing, dispatch and combine are timed (their expert GEMMs: grouped_gemm.py)."""
TOKENS = (16, 64, 256, 512, 1024, 2048, 4096, 8192)
TPS = (1, 2, 4, 8)


def graph_time(fn, reps: int) -> float:
    """Seconds of one call of ``fn``: ``reps`` calls captured in a CUDA graph, median of 7 replays."""
    return statistics.median(replay_times(fn, reps, 7))


def dense_layer(model: str, tp: int, tokens: int, reps: int, fused: Fused, dev: str) -> list[dict]:
    """One row per kernel of ``model``'s layer shard at ``tp`` for a ``tokens``-token batch."""
    h, heads, kv, d, inter = DENSE[model]
    hq, hk, it = heads // tp, max(kv // tp, 1), inter // tp
    qkv_w = (hq + 2 * hk) * d
    x = torch.randn(tokens, h, device=dev, dtype=DT)
    res = torch.randn_like(x)
    ln = torch.ones(h, device=dev, dtype=DT)
    w_qkv = torch.randn(h, qkv_w, device=dev, dtype=DT) * 0.02
    w_o = torch.randn(hq * d, h, device=dev, dtype=DT) * 0.02
    w_gu = torch.randn(h, 2 * it, device=dev, dtype=DT) * 0.02
    w_down = torch.randn(it, h, device=dev, dtype=DT) * 0.02
    qkv = torch.randn(tokens, qkv_w, device=dev, dtype=DT)
    attn = torch.randn(tokens, hq * d, device=dev, dtype=DT)
    gu = torch.randn(tokens, 2 * it, device=dev, dtype=DT)
    act = torch.randn(tokens, it, device=dev, dtype=DT)
    pos = torch.arange(tokens, device=dev)
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    f = torch.outer(torch.arange(0, max(tokens, 16), device=dev, dtype=torch.float32), inv)
    cos, sin = f.cos().contiguous(), f.sin().contiguous()
    cache_k = torch.zeros(tokens * 2, hk, d, device=dev, dtype=DT)
    cache_v = torch.zeros_like(cache_k)
    widx = torch.arange(tokens, device=dev) * 2
    k_new = torch.randn(tokens, hk, d, device=dev, dtype=DT)
    v_new = torch.randn_like(k_new)
    e = 2  # bytes per element
    ops = {
        "qkv_proj": (lambda: x @ w_qkv, 2 * tokens * h * qkv_w, e * (tokens * h + h * qkv_w + tokens * qkv_w)),
        "o_proj": (lambda: attn @ w_o, 2 * tokens * hq * d * h, e * (tokens * hq * d + hq * d * h + tokens * h)),
        "mlp_gate_up": (lambda: x @ w_gu, 4 * tokens * h * it, e * (tokens * h + 2 * h * it + 2 * tokens * it)),
        "mlp_down": (lambda: act @ w_down, 2 * tokens * it * h, e * (tokens * it + it * h + tokens * h)),
        "add_rms": (lambda: fused.add_rms(x, res, ln), 4 * tokens * h, e * 4 * tokens * h),
        "rope": (lambda: fused.rope(qkv, hq + hk, pos, cos, sin), 3 * tokens * (hq + hk) * d, e * 2 * tokens * (hq + hk) * d),
        "silu_mul": (lambda: fused.silu_mul(gu), 4 * tokens * it, e * 3 * tokens * it),
        "kv_write": (lambda: (cache_k.index_copy_(0, widx, k_new), cache_v.index_copy_(0, widx, v_new)), 0, e * 4 * tokens * hk * d),
    }
    rows = []
    for op, (fn, flops, nbytes) in ops.items():
        rows.append({"model": model, "tp": tp, "tokens": tokens, "op": op, "seconds": graph_time(fn, reps), "flops": flops, "bytes": nbytes})
    return rows


def moe_layer(model: str, tokens: int, reps: int, dev: str) -> list[dict]:
    """Routing, dispatch and combine of one MoE layer for a ``tokens``-token batch (no expert GEMMs)."""
    h, experts, k = MOE[model]
    x = torch.randn(tokens, h, device=dev, dtype=DT)
    w_router = torch.randn(h, experts, device=dev, dtype=DT) * 0.02
    noise = torch.randn(tokens, experts, device=dev) * 8.0
    probs = ((x @ w_router).float() + noise).softmax(-1)
    top_w, top_i = probs.topk(k, dim=-1)
    top_w = (top_w / top_w.sum(-1, keepdim=True)).to(DT)
    flat = top_i.flatten()
    order = flat.argsort()
    token = order // k
    y = torch.randn(tokens * k, h, device=dev, dtype=DT)

    def route():
        p = ((x @ w_router).float() + noise).softmax(-1)
        tw, ti = p.topk(k, dim=-1)
        return (tw / tw.sum(-1, keepdim=True)).to(DT), ti

    def dispatch():
        o = flat.argsort()
        torch.zeros(experts, dtype=torch.int32, device=dev).scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32)).cumsum(0, dtype=torch.int32)
        return x[o // k]

    def combine():
        return torch.zeros_like(x).index_add_(0, token, y * top_w.flatten()[order][:, None])

    e = 2
    ops = {
        "moe_router": (route, 2 * tokens * h * experts, e * (tokens * h + h * experts) + 8 * tokens * experts),
        "moe_dispatch": (dispatch, 0, e * (tokens * h + tokens * k * h)),
        "moe_combine": (combine, 2 * tokens * k * h, e * (2 * tokens * k * h + 2 * tokens * h)),
    }
    return [{"model": model, "tp": 1, "tokens": tokens, "op": op, "seconds": graph_time(fn, reps), "flops": flops, "bytes": nbytes}
            for op, (fn, flops, nbytes) in ops.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="two token counts, TP 1 and 8 only")
    args = ap.parse_args()
    dev = "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    gpu = props.name
    fused = Fused(dev)
    tokens, tps = ((256, 4096), (1, 8)) if args.quick else (TOKENS, TPS)
    t0 = time.time()
    rows = []
    for model in DENSE:
        for tp in tps:
            for t in tokens:
                rows += dense_layer(model, tp, t, args.reps, fused, dev)
                torch.cuda.empty_cache()
        print(f"{model}: {time.time() - t0:.0f} s", flush=True)
    for model in MOE:
        for t in tokens:
            rows += moe_layer(model, t, args.reps, dev)
    with open(args.out / "kernels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["gpu", *rows[0].keys()])
        w.writeheader()
        for r in rows:
            w.writerow({"gpu": gpu, **r})
    hw = hardware(dev)
    info = {"gpu": gpu, "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "reps": args.reps, "seconds": round(time.time() - t0, 1), "hardware": hw,
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    (args.out / "device.json").write_text(json.dumps(info, indent=1))
    print(f"{len(rows)} kernels in {time.time() - t0:.0f} s on {gpu}")


if __name__ == "__main__":
    main()
