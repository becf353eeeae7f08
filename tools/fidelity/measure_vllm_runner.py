"""Measures the host-side (Python) work of vLLM V1's model runner per step: input preparation and
sampling bookkeeping, with the vLLM CPU build installed here.

vLLM's ``CPUModelRunner`` is a subclass of ``GPUModelRunner``: it runs the same ``execute_model`` /
``sample_tokens`` code (persistent-batch updates, input ids and positions, slot mappings, attention
metadata, sampled-token bookkeeping) with CPU tensors. This script serves a tiny random Llama
(2 layers, hidden 64, ``load_format="dummy"``, eager, no downloads) with ``vllm.LLM`` in this process
and times the runner's methods by wrapping them (thread CPU time), per step:

* ``input_prep``: ``_update_states`` + ``_prepare_inputs`` + ``_determine_batch_execution_and_padding``
  + ``_get_slot_mappings`` + ``_build_attention_metadata`` + ``_preprocess``;
* ``forward``: ``_model_forward`` (the tiny model on the CPU; GPU work on a GPU, not ours);
* ``execute_rest``: the rest of ``execute_model`` (logits, forward context, output bookkeeping);
* ``sample``: ``_sample`` (sampler tensor work; GPU kernels on a GPU);
* ``bookkeeping``: ``_bookkeeping_sync`` (sampled ids to lists, per-request token appends);
* ``sample_rest``: the rest of ``sample_tokens``;
* ``host``: ``input_prep`` + ``bookkeeping`` + ``sample_rest``, the runner's host-side work that does
  not run on the GPU there.

Caveats, stated in the output: on a GPU the host-to-device copies are asynchronous and
``_bookkeeping_sync`` waits for the GPU, so only the Python share of these numbers carries over;
``execute_rest`` and ``sample`` include tensor math that runs on the GPU there.

    python tools/fidelity/measure_vllm_runner.py --out calibration/vllm-cpu

Writes ``runner.csv`` (median/p90 per (num_seqs, num_batched_tokens) point and part, and of each
input-preparation method on its own).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core and runner in this process
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
# One OpenMP thread: on the shared 2-core machine, OpenMP workers spin-waiting for a core would be
# counted as the main thread's CPU time inside every tensor op of input preparation.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

INPUT_PREP = ("_update_states", "_prepare_inputs", "_determine_batch_execution_and_padding", "_get_slot_mappings", "_build_attention_metadata", "_preprocess")
"""The model runner's input-preparation methods, timed and summed as ``input_prep``."""
TIMED = INPUT_PREP + ("_model_forward", "execute_model", "sample_tokens", "_sample", "_bookkeeping_sync")
PARTS = ("input_prep", "forward", "execute_rest", "sample", "bookkeeping", "sample_rest", "host")
DECODE_N = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFILL_LENGTHS = (512, 1024, 2048, 4096)


class StepRecorder:
    """Wraps the runner class's methods; keeps one record (ns per method) per ``execute_model`` call."""

    def __init__(self, cls):
        self.records: list[dict] = []
        self.depth = 0
        for name in TIMED:
            setattr(cls, name, self._wrap(name, getattr(cls, name)))

    def _wrap(self, name, fn):
        rec = self

        def timed(runner, *args, **kwargs):
            if name == "execute_model":
                so = args[0] if args else kwargs["scheduler_output"]
                rec.records.append({"num_seqs": len(so.num_scheduled_tokens), "num_tokens": so.total_num_scheduled_tokens})
            t0 = time.thread_time_ns()
            try:
                return fn(runner, *args, **kwargs)
            finally:
                if rec.records:
                    r = rec.records[-1]
                    r[name] = r.get(name, 0) + time.thread_time_ns() - t0

        timed.__wrapped__ = fn
        return timed


def parts_of(r: dict) -> dict[str, float]:
    """The record's parts in microseconds."""
    prep = sum(r.get(m, 0) for m in INPUT_PREP)
    fwd = r.get("_model_forward", 0)
    sample, book = r.get("_sample", 0), r.get("_bookkeeping_sync", 0)
    rest = r.get("sample_tokens", 0) - sample - book
    return {
        **{m.strip("_"): r.get(m, 0) / 1e3 for m in INPUT_PREP},
        "host": (prep + book + rest) / 1e3,
        "input_prep": prep / 1e3, "forward": fwd / 1e3, "execute_rest": (r.get("execute_model", 0) - prep - fwd) / 1e3,
        "sample": sample / 1e3, "bookkeeping": book / 1e3, "sample_rest": rest / 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    """Serves the tiny model over the decode and prefill points and writes ``runner.csv``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("calibration/vllm-cpu"))
    ap.add_argument("--decode-steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from harness.tiny_models import build_tiny_model, tiny_llama_config
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    recorder = StepRecorder(CPUModelRunner)
    with tempfile.TemporaryDirectory(prefix="vllm-runner-") as work:
        path = build_tiny_model(Path(work) / "tiny", tiny_llama_config(vocab_size=512, max_position_embeddings=8192))
        llm = LLM(model=str(path), load_format="dummy", dtype="float32", enforce_eager=True, seed=0, max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=4096, block_size=32, enable_prefix_caching=False)
        for rep in range(args.repeats):
            for n in DECODE_N:
                prompts = [TokensPrompt(prompt_token_ids=[3 + (i * 31 + j) % 500 for j in range(64)]) for i in range(n)]
                llm.generate(prompts, SamplingParams(max_tokens=args.decode_steps, ignore_eos=True), use_tqdm=False)
            for length in PREFILL_LENGTHS:
                prompts = [TokensPrompt(prompt_token_ids=[3 + (i * 17 + j) % 500 for j in range(length)]) for i in range(12)]
                llm.generate(prompts, SamplingParams(max_tokens=1, ignore_eos=True), use_tqdm=False)
            print(f"repeat {rep}: {len(recorder.records)} steps recorded", file=sys.stderr)
        del llm

    groups: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in recorder.records:
        if "execute_model" in r and "sample_tokens" in r:
            groups[(r["num_seqs"], r["num_tokens"])].append(parts_of(r))
    keep = {k: v for k, v in groups.items() if len(v) >= 3}
    columns = PARTS + tuple(m.strip("_") for m in INPUT_PREP)
    header = ["num_seqs", "num_batched_tokens", "samples"] + [f"{p}_{s}_us" for p in columns for s in ("median", "p90")]
    lines = [",".join(header)]
    for (n, t), rows in sorted(keep.items()):
        cells = [str(n), str(t), str(len(rows))]
        for p in columns:
            xs = sorted(x[p] for x in rows)
            cells += [f"{statistics.median(xs):.2f}", f"{xs[int(0.9 * (len(xs) - 1))]:.2f}"]
        lines.append(",".join(cells))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runner.csv").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'runner.csv'} ({len(keep)} points)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
