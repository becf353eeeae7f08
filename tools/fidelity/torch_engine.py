"""A small continuous-batching serving engine on PyTorch, to check fleetwise against a real GPU.

It serves Llama-3-8B (random bf16 weights; the same unfused layers as ``calibrate/measure_gpu.py``)
and replays request traces in real wall-clock time, scheduling exactly as fleetwise's ``vllm``
scheduler does (``rust/core/src/scheduler/vllm.rs``, vLLM v0 with chunked prefill off):

* each iteration is either all prefills or all decodes (prefill first);
* waiting requests are admitted first come first served while fewer than ``max_num_seqs`` run and
  their prompts fit ``max_num_batched_tokens`` (the first one is always admitted);
* with nothing to admit, every running request decodes one token.

The KV cache is contiguous per sequence slot (``max_num_seqs`` slots of ``max_len`` tokens, so no
request is ever preempted, and fleetwise's paged cache of ~400K tokens never fills either). Attention
is FlashAttention-2's variable-length kernel through ``torch.ops.aten._flash_attention_forward``
(``seqused_k`` gives each slot's length): prompts of one prefill iteration are packed without
padding. Decode iterations replay a CUDA graph captured for each batch size (1..max_num_seqs, no
padding); prefill runs eagerly, as in vLLM. Each iteration ends when its sampled tokens (greedy)
are on the host, and that is when its tokens count as emitted. Without a usable flash kernel (on a
CPU, to test the logic) attention falls back to one SDPA call per sequence and graphs are off.

Runs with PyTorch only (it does not import fleetwise), so it can be copied to any GPU machine with
its sibling files: ``torch_model.py`` (the model it serves), ``torch_batches.py`` (sequences and
batch layout), ``torch_graphs.py`` (CUDA-graph capture), ``torch_serving.py`` (the engine and its
scheduling loop) and ``torch_engine_setup.py`` (attention choice, warm-up, spot timings); this file
is the command line and the trace I/O::

    python3 tools/fidelity/torch_engine.py --out OUT TRACE.csv [TRACE.csv ...]

A trace CSV has ``request_id, arrival_s, prompt_tokens, output_tokens``; its name (file stem) labels
its rows in the outputs: ``requests.csv`` (per request: arrival, first and last token times in
seconds since the trace started), ``iterations.csv`` (per iteration: start, end, prefill lengths,
decode batch and KV tokens read, queue lengths) and ``device.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings beside this file, also when run as a script
from torch_batches import PREFILL_SEQ_BUCKETS, PREFILL_STEP, Seq  # noqa: E402,F401 - re-exported for grid.py
from torch_engine_setup import enable_flash, spot_timings, warm_up  # noqa: E402
from torch_model import DECODE_SPLITS, DT, Config, Model  # noqa: E402,F401 - DT re-exported for grid.py
from torch_serving import Engine  # noqa: E402


def read_trace(path: Path) -> list[dict]:
    """Rows of a trace CSV (request_id, arrival_s, prompt_tokens, output_tokens)."""
    with path.open() as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict]) -> None:
    """Writes ``rows`` (dicts with the same keys) as CSV, times rounded to 0.1 microsecond."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: round(v, 7) if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def main(argv: list[str] | None = None) -> None:
    """Command line: load the model, capture graphs, replay each trace, write the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    ap.add_argument("--max-len", type=int, default=2560)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy model (to test the logic on a CPU)")
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--decode-splits", type=int, default=DECODE_SPLITS, help="flash-decoding splits (0: FlashAttention's heuristic)")
    ap.add_argument("--no-prefill-graphs", action="store_true", help="prefill eagerly (decode graphs only)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = Config(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens, max_len=args.max_len)
    if args.tiny:
        cfg = Config(layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, intermediate=512, vocab=1000,
                     max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens, max_len=args.max_len)
    torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.time()
    model = Model(cfg, dev)
    attn = enable_flash(model, args.decode_splits)
    engine = Engine(model)
    print(f"model on {dev} in {time.time() - t0:.1f} s; attention: {attn}", flush=True)
    use_graphs = dev == "cuda" and model.flash and not args.no_graphs
    if use_graphs:
        t1 = time.time()
        try:
            if not args.no_prefill_graphs:
                engine.capture_prefill_graphs()
            engine.capture_graphs()
            print(f"captured {len(engine.prefill_graphs)} prefill and {len(engine.graphs)} decode graphs in {time.time() - t1:.1f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - graphs are an optimisation; eager decode still serves
            engine.graphs.clear()
            engine.prefill_graphs.clear()
            use_graphs = False
            print(f"graph capture failed ({type(e).__name__}: {e}); decoding eagerly", flush=True)
    warm_up(engine)
    bench = spot_timings(engine)
    print(f"spot timings (ms): {bench}", flush=True)
    info = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "attention": attn, "decode_cuda_graphs": use_graphs, "prefill_cuda_graphs": bool(engine.prefill_graphs), "prefill_step": PREFILL_STEP, "prefill_seq_buckets": PREFILL_SEQ_BUCKETS, "decode_splits": model.splits, "config": cfg.__dict__,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "spot_timings_ms": bench, "traces": {}}
    req_rows, it_rows = [], []
    for path in args.traces:
        name = path.stem
        trace = read_trace(path)
        print(f"replaying {name}: {len(trace)} requests", flush=True)
        t1 = time.time()
        reqs, iters = engine.serve(trace)
        info["traces"][name] = {"requests": len(reqs), "iterations": len(iters), "wall_s": round(time.time() - t1, 2)}
        print(f"  {name}: {len(iters)} iterations in {time.time() - t1:.1f} s", flush=True)
        req_rows += [{"trace": name, **r} for r in reqs]
        it_rows += [{"trace": name, **r} for r in iters]
        write_csv(args.out / "requests.csv", req_rows)  # after every trace, so a crash keeps what ran
        write_csv(args.out / "iterations.csv", it_rows)
        (args.out / "device.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
