"""Times each projection GEMM of a transformer layer in bf16 and in FP8 (W8A8) on one GPU.

``docs/quantization.md`` models FP8 weights and activations as GEMMs reading one byte per weight
and input element at ``fp8_gemm_compute`` of the GPU's FP8 tensor peak; this measures that
fraction (the Hopper prior's, ``catalog/architectures.yaml``) against bf16's: for the
layer shards ``layer_kernels.py`` times (``DENSE`` models at each tensor-parallel degree in
``TPS``), the four projections (``qkv_proj``, ``o_proj``, ``mlp_gate_up``, ``mlp_down``) as

* ``bf16``: ``torch.matmul`` of bf16 activations and weights (cuBLAS);
* ``fp8``: ``torch._scaled_mm`` of e4m3 activations and weights with row-wise scales (one per token,
  one per output channel: the dynamic per-token, per-channel W8A8 scheme vLLM runs), bf16 output;
  where the GPU or PyTorch has no row-wise scaling, one scale per tensor (``scaling`` column).

Each GEMM is captured ``--reps`` times in one CUDA graph, replayed 7 times (CUDA events); the median
divided by the repetitions is its time. The activations' quantization to FP8 (fused into the
preceding norm or activation in vLLM) is not timed, as the model does not charge it. Output
(``--out``): ``fp8_gemm.csv`` (gpu, model, tp, op, tokens, k, n, scaling, bf16_seconds,
fp8_seconds) and ``fp8_device.json``. PyTorch only::

    python3 tools/fidelity/fp8_gemm.py --out OUT
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_kernels import DENSE, TOKENS, graph_time  # noqa: E402

TPS = (1, 4)
"""Tensor-parallel shards timed (the whole layer and a 4-way shard)."""
FP8 = torch.float8_e4m3fn


def shapes(model: str, tp: int) -> dict[str, tuple[int, int]]:
    """Each projection's (K, N) for ``model``'s layer shard at ``tp``."""
    h, heads, kv, d, inter = DENSE[model]
    hq, hk, it = heads // tp, max(kv // tp, 1), inter // tp
    return {"qkv_proj": (h, (hq + 2 * hk) * d), "o_proj": (hq * d, h), "mlp_gate_up": (h, 2 * it), "mlp_down": (it, h)}


def fp8_gemm(tokens: int, k: int, n: int, reps: int, dev: str) -> tuple[float, float, str]:
    """bf16 and FP8 seconds of a (tokens x k) @ (k x n) GEMM, and the FP8 scaling used."""
    x = torch.randn(tokens, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(k, n, device=dev, dtype=torch.bfloat16) * 0.02
    bf16 = graph_time(lambda: torch.matmul(x, w), reps)
    xq = x.to(FP8)
    wq = w.t().contiguous().to(FP8).t()  # column-major, as _scaled_mm takes its second operand
    for scaling in ("rowwise", "tensorwise"):
        if scaling == "rowwise":
            sa = torch.rand(tokens, 1, device=dev, dtype=torch.float32) + 0.5
            sb = torch.rand(1, n, device=dev, dtype=torch.float32) + 0.5
        else:
            sa = torch.tensor(1.0, device=dev)
            sb = torch.tensor(1.0, device=dev)
        try:
            torch._scaled_mm(xq, wq, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
        except (RuntimeError, ValueError):
            continue
        fp8 = graph_time(lambda: torch._scaled_mm(xq, wq, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), reps)
        return bf16, fp8, scaling
    raise SystemExit("torch._scaled_mm runs neither row-wise nor tensor-wise scaling on this GPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    dev = "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    t0 = time.time()
    rows = []
    for model in DENSE:
        for tp in TPS:
            for op, (k, n) in shapes(model, tp).items():
                for t in TOKENS:
                    bf16, fp8, scaling = fp8_gemm(t, k, n, args.reps, dev)
                    rows.append({"gpu": props.name, "model": model, "tp": tp, "op": op, "tokens": t, "k": k, "n": n,
                                 "scaling": scaling, "bf16_seconds": bf16, "fp8_seconds": fp8})
                    torch.cuda.empty_cache()
        print(f"{model}: {time.time() - t0:.0f} s", flush=True)
    with open(args.out / "fp8_gemm.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    info = {"gpu": props.name, "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "reps": args.reps, "seconds": round(time.time() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    (args.out / "fp8_device.json").write_text(json.dumps(info, indent=1))
    print(f"{len(rows)} GEMMs in {time.time() - t0:.0f} s on {props.name}")


if __name__ == "__main__":
    main()
