"""Times the routed experts' grouped GEMMs as the efficient engine runs them, over tokens per expert.

``fused_model.FusedModel.moe`` sorts the token-expert pairs by expert and runs one grouped GEMM per
projection over all experts (``torch._grouped_mm``): gate+up (hidden -> 2 x expert width) and down
(expert width -> hidden). This sweeps the mean tokens per expert from 1 to 4096 for Mixtral-8x7B's
experts (8 of 4096 x 14336) and Qwen3-30B-A3B's (128 of 2048 x 768), bf16, with

* ``uniform`` routing: every expert gets exactly that many rows;
* ``random`` routing: tokens pick their top-k experts uniformly at random (the engine's routing and
  the simulator's default), so the per-expert counts vary around the mean.

Each point is ``--calls`` launches captured in one CUDA graph and replayed ``--reps`` times (CUDA
events; medians, p10 and p90 per launch). Output (``--out``): ``grouped_gemm.csv`` and
``grouped_gemm_device.json``. Runs with PyTorch only::

    python3 tools/fidelity/grouped_gemm.py --out OUT [--reps 7] [--calls 10]
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
from graph_timing import replay_times  # noqa: E402

DT = torch.bfloat16
SHAPES = {"mixtral-8x7b": (8, 2, 4096, 14336), "qwen3-30b-a3b": (128, 8, 2048, 768)}
"""Experts, experts per token, hidden size, expert intermediate size."""
TOKENS_PER_EXPERT = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
"""Mean rows per expert swept."""


def column_major_if_needed(w: torch.Tensor) -> torch.Tensor:
    """The weights in the layout this PyTorch's grouped GEMM accepts (as ``FusedModel._expert_layout``)."""
    a = torch.zeros(32, w.shape[1], device=w.device, dtype=DT)
    offs = torch.full((w.shape[0],), 32, dtype=torch.int32, device=w.device)
    try:
        torch._grouped_mm(a, w, offs=offs)
        return w
    except RuntimeError:
        return w.transpose(-2, -1).contiguous().transpose(-2, -1)


def counts_for(routing: str, experts: int, k: int, per_expert: int, gen: torch.Generator) -> torch.Tensor:
    """Rows per expert: exactly ``per_expert`` each, or the counts of random top-k routing of
    ``experts x per_expert / k`` tokens."""
    if routing == "uniform":
        return torch.full((experts,), per_expert, dtype=torch.int64)
    tokens = max(1, round(experts * per_expert / k))
    picks = torch.rand(tokens, experts, generator=gen).topk(k, dim=-1).indices.flatten()
    return torch.bincount(picks, minlength=experts)


def time_point(a: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, calls: int, reps: int) -> list[float]:
    """Seconds per grouped GEMM of each replay of a graph of ``calls`` launches."""
    return replay_times(lambda: torch._grouped_mm(a, w, offs=offs), calls, reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, (experts, k, hidden, width) in SHAPES.items():
        weights = {"gate_up": column_major_if_needed(torch.randn(experts, hidden, 2 * width, device="cuda", dtype=DT) * 0.02),
                   "down": column_major_if_needed(torch.randn(experts, width, hidden, device="cuda", dtype=DT) * 0.02)}
        for routing in ("uniform", "random"):
            for m in TOKENS_PER_EXPERT:
                counts = counts_for(routing, experts, k, m, gen)
                pairs = int(counts.sum())
                offs = counts.cumsum(0).to(torch.int32).cuda()
                touched = int((counts > 0).sum())
                for proj, w in weights.items():
                    kdim, ndim = w.shape[1], w.shape[2]
                    a = torch.randn(pairs, kdim, device="cuda", dtype=DT)
                    ts = time_point(a, w, offs, args.calls, args.reps)
                    sec = statistics.median(ts)
                    q = statistics.quantiles(ts, n=10) if len(ts) > 1 else [sec] * 9
                    flops = 2.0 * pairs * kdim * ndim
                    nbytes = 2.0 * (touched * kdim * ndim + pairs * (kdim + ndim))
                    rows.append({"model": name, "projection": proj, "routing": routing, "experts": experts, "touched": touched,
                                 "tokens_per_expert": m, "pairs": pairs, "max_rows": int(counts.max()), "k": kdim, "n": ndim,
                                 "seconds": sec, "p10": q[0], "p90": q[-1], "tflops": flops / sec / 1e12, "gbps": nbytes / sec / 1e9})
                    print(f"{name} {routing} m={m} {proj}: {sec * 1e6:.1f} us, {flops / sec / 1e12:.0f} TFLOP/s, {nbytes / sec / 1e9:.0f} GB/s", flush=True)
                    del a
        del weights
        torch.cuda.empty_cache()
    with open(out / "grouped_gemm.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    (out / "grouped_gemm_device.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(), "sm_count": torch.cuda.get_device_properties(0).multi_processor_count,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "reps": args.reps, "calls": args.calls,
        "graphs": True, "seconds": round(time.time() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
