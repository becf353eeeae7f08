"""Times speculative decoding's verify passes on the efficient (vLLM-like) engine, beside plain decodes.

A verify pass runs, for each of B decoding sequences at context C, its k draft tokens and the token
before them (k + 1 query tokens after C cached ones, causal among themselves), with the LM head on
every one of them (the target scores each draft token and the one after the last). That is one
iteration of ``fused_model.FusedModel`` whose sequences are (k + 1, C) with every row sampled;
k = 0 is the plain decode. Each point is captured in a CUDA graph and replayed as ``fused_grid.py``
does (``time_point``). Points: Llama-3-8B (32 layers) and a 20-layer Llama-3-70B (``--models
llama-2-7b``: its multi-head attention, four times the 8B's KV per token), B = 1 to 256 at
C = 1024 and B = 1 to 64 at C = 4096, k = 0, 1, 2, 4 and 8. Output (``--out``): ``verify.csv``
(model, layers_run, batch, context, k, gpu_seconds, gpu_p10, gpu_p90, wall_seconds),
``hardware.csv`` and ``device.json``. PyTorch and Triton only::

    python3 tools/fidelity/verify_grid.py --out OUT [--quick]

``python -m tools.fidelity.verify_check DIR --gpu GPU`` compares them with the cost model.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fused_grid import KV_TOKENS, SHAPES, finish_run, free_device, safe_point, start_run  # noqa: E402
from fused_model import FusedModel, Shape  # noqa: E402

SHAPES = {**SHAPES, "llama-2-7b": Shape("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000)}
"""``fused_grid``'s shapes and Llama-2-7B (multi-head attention: one query head per KV head)."""
MODELS = ("llama-3-8b", "llama-3-70b")
KS = (0, 1, 2, 4, 8)
"""Draft tokens verified per sequence (0: a plain decode)."""


def points(quick: bool) -> list[tuple[int, int, int]]:
    """(batch, context, k) of every point; batch x context within 2^18 cached tokens."""
    grid = [(b, 1024) for b in (1, 4, 16, 64, 128, 256)] + [(b, 4096) for b in (1, 16, 64)]
    if quick:
        grid = [(1, 256), (4, 256)]
    return [(b, c, k) for b, c in grid for k in KS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="two small points on two layers (to check the script on a CPU)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new points after this many seconds")
    args = ap.parse_args()
    device, start, info = start_run(args.out, args.reps, torch.cuda.is_available())
    fields = ["model", "layers_run", "batch", "context", "k", "gpu_seconds", "gpu_p10", "gpu_p90", "wall_seconds"]
    with open(args.out / "verify.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        for name in args.models.split(","):
            shape = SHAPES[name]
            if args.quick:
                shape.layers_run = 2
            # Llama-2-7B's 512 KiB of KV per token: 70,000 tokens (36 GiB), points that fit them.
            kv_tokens = 40_000 if args.quick else KV_TOKENS if shape.num_kv_heads < shape.num_heads else 70_000
            model = FusedModel(shape, kv_tokens, device)
            for batch, context, k in points(args.quick):
                if batch * (context + max(KS) + 1) > kv_tokens:
                    continue
                if time.perf_counter() - start > args.budget_s:
                    print(f"budget spent; skipping {name} {batch}x{context} k={k}", flush=True)
                    continue
                r = safe_point(model, [(k + 1, context)] * batch, args.reps, device == "cuda", f"{name} {batch}x{context} k={k}", sample_all=True)
                if r is None:
                    continue
                w.writerow({"model": name, "layers_run": shape.layers, "batch": batch, "context": context, "k": k, **{x: f"{v:.7g}" for x, v in r.items()}})
                fh.flush()
                print(f"{name} {batch}x{context} k={k}: {r['gpu_seconds'] * 1e3:.3f} ms", flush=True)
            del model
            free_device(device)
    finish_run(args.out, start, info)


if __name__ == "__main__":
    main()
