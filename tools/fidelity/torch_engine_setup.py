"""Preparing the serving engine before a replay: choosing the attention kernel (FlashAttention's
varlen path if it agrees with per-sequence SDPA), warming up, and a few spot timings.

PyTorch only (it does not import fleetwise); part of the engine of ``torch_engine.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings beside this file, also when run as a script
from torch_batches import Seq  # noqa: E402
from torch_model import DECODE_SPLITS, DT, Model  # noqa: E402
from torch_serving import Engine  # noqa: E402


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
