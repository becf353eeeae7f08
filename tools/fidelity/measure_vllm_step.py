"""Measures vLLM V1's own CPU time per engine step as a function of the batch, with the vLLM
installed here (a CPU build runs the same Python scheduler and output code as the GPU build).

Run with vLLM installed (not part of the fleetwise package; nothing in tests imports it)::

    python tools/fidelity/measure_vllm_step.py --out calibration/vllm-cpu [--rounds 3 --steps 300]

What is timed, per engine step, on real vLLM objects (no GPU, no model forward):

* ``schedule``: ``Scheduler.schedule()`` (the V1 scheduler; prefix caching on, block size 16, chunked
  prefill, ``log_stats=True`` as ``vllm serve`` runs it).
* ``update``: ``Scheduler.update_from_output()`` fed a synthetic ``ModelRunnerOutput`` holding one
  sampled token per request whose prompt is complete (nothing for a partial prefill chunk), as the
  model runner returns it. This includes appending tokens, block hashing of newly full blocks, stop
  checks, freeing finished requests and building the ``EngineCoreOutputs``.
* ``encode``/``decode``: msgpack serialisation of those ``EngineCoreOutputs`` (engine core's output
  thread) and their decoding in the front-end process.
* ``output``: ``OutputProcessor.process_outputs()`` of the front-end (AsyncLLM): incremental
  detokenisation of each new token with a real fast tokenizer, ``RequestOutput`` building and the
  put into each request's ``RequestOutputCollector`` (streaming ``DELTA`` outputs). No pretrained
  tokenizer is available offline here, so a byte-level BPE tokenizer (32k vocabulary, the same
  ``tokenizers`` model class as GPT-2/Llama-3 tokenizers) is trained on Python's own sources at start.
* ``add``: per new request, building the engine-core ``Request`` (prompt block hashes) and
  ``Scheduler.add_request()`` — serialised engine-core work between steps, per request not per step.

Not measured (cannot be isolated without a GPU): the GPU model runner's input preparation
(``_update_states``/``_prepare_inputs``, pinned-memory copies, CUDA-graph dispatch) and sampler
bookkeeping; the API server's per-chunk JSON/SSE work.

Times are this thread's CPU time (``time.thread_time_ns``), so time the shared machine gives other
processes is not counted; the wall-clock time of the engine-core parts and of the whole step is kept
beside it (``*_wall_*`` columns) to show how much contention added.

Points: decode steps with N running requests (N in 1..256) and W waiting requests (W in 0, 64, 512;
they wait because ``max_num_seqs`` = N); prefill/mixed steps with a chunk of 512..8192 prompt tokens
(chunked prefill, one-token prefill requests that finish after their first token) beside 0 or 32
decodes. Each point runs ``--steps`` timed steps after a warm-up, in ``--rounds`` interleaved rounds
(the machine is shared); per-step times are pooled. Writes ``steps.csv`` (median/p90 per point and
part), ``rounds.csv`` (per-round medians, the noise), ``add_request.csv``, ``first_token.csv`` (the
front end's first-token cost and the engine core's add cost against prompt length) and ``device.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BLOCK = 16
"""KV-cache block size in tokens (vLLM's GPU default)."""
MAX_MODEL_LEN = 32768
VOCAB = 32000
DECODE_N = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_W = (0, 64, 512)
PREFILL_CHUNKS = (512, 1024, 2048, 4096, 8192)
PREFILL_DECODES = (0, 32)
PARTS = ("schedule", "update", "encode", "decode", "output")
"""The timed parts of one step, in the order they run."""


def build_model_dir(path: Path) -> Path:
    """Writes a Llama-3-8B-shaped ``config.json`` (the scheduler only reads shapes; no weights) and a
    byte-level BPE tokenizer of :data:`VOCAB` tokens trained on Python's standard library sources."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": MAX_MODEL_LEN, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    stdlib = Path(os.__file__).parent
    files = sorted(str(p) for p in stdlib.glob("*.py"))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(files, trainer)
    tok.save(str(path / "tokenizer.json"))
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": MAX_MODEL_LEN, "clean_up_tokenization_spaces": False}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    return path


class Engine:
    """A real V1 ``Scheduler`` plus the front-end ``OutputProcessor``, driven step by step with
    synthetic model-runner outputs, timing each part of every step in nanoseconds."""

    def __init__(self, model_dir: Path, tokenizer, max_num_seqs: int, max_batched_tokens: int, rng: random.Random, pipelined: bool = False):
        import torch
        from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
        from vllm.utils.hashing import get_hash_fn_by_name
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.engine import EngineCoreOutputs
        from vllm.v1.engine.output_processor import OutputProcessor
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder
        from vllm.v1.structured_output import StructuredOutputManager

        model = ModelConfig(model=str(model_dir), dtype="bfloat16", seed=0, max_model_len=MAX_MODEL_LEN)
        sched = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched_tokens, max_model_len=MAX_MODEL_LEN, is_encoder_decoder=False, enable_chunked_prefill=True, async_scheduling=pipelined)
        cache = CacheConfig(block_size=BLOCK, enable_prefix_caching=True)
        self.config = VllmConfig(model_config=model, scheduler_config=sched, cache_config=cache)
        num_blocks = 400_000  # ~6.4M tokens: the cache never limits these points
        kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=BLOCK, num_kv_heads=8, head_size=128, dtype=torch.bfloat16))])
        cache.num_gpu_blocks = num_blocks
        self.pipelined = pipelined
        self.pending = None  # pipelined: the previous step's (scheduler output, runner output)
        self.scheduler = (AsyncScheduler if pipelined else Scheduler)(vllm_config=self.config, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(self.config), block_size=BLOCK, log_stats=True)
        hash_fn = get_hash_fn_by_name(cache.prefix_caching_hash_algo)
        init_none_hash(hash_fn)
        self.block_hasher = get_request_block_hasher(BLOCK, hash_fn)
        self.output = OutputProcessor(tokenizer, log_stats=True)
        self.encoder = MsgpackEncoder()
        self.decoder = MsgpackDecoder(EngineCoreOutputs)
        self.collectors: dict = {}
        self.rng = rng
        self.next_id = 0
        self.add_times: list[tuple[int, int]] = []

    def add(self, prompt_len: int, max_tokens: int) -> str:
        """Adds one request with ``prompt_len`` random prompt tokens to the scheduler (timed, into
        ``add_times``) and the output processor; returns its id."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine import EngineCoreRequest
        from vllm.v1.engine.output_processor import RequestOutputCollector
        from vllm.v1.request import Request

        rid = f"r{self.next_id}"
        self.next_id += 1
        prompt = [self.rng.randrange(3, VOCAB) for _ in range(prompt_len)]
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
        t0 = time.thread_time_ns()
        self.scheduler.add_request(Request(request_id=rid, prompt_token_ids=prompt, sampling_params=params, pooling_params=None, arrival_time=time.time(), block_hasher=self.block_hasher))
        self.add_times.append((prompt_len, time.thread_time_ns() - t0))
        core_req = EngineCoreRequest(request_id=rid, prompt_token_ids=prompt, mm_features=None, sampling_params=params, pooling_params=None, arrival_time=time.time(), lora_request=None, cache_salt=None, data_parallel_rank=None, external_req_id=rid)
        queue = RequestOutputCollector(RequestOutputKind.DELTA, rid)
        self.collectors[rid] = queue
        self.output.add_request(core_req, None, None, 0, queue)
        return rid

    def step(self) -> tuple[int, int, dict[str, int]]:
        """Runs one engine step; returns (requests scheduled, tokens scheduled, ns per part). Parts are
        this thread's CPU time (``time.thread_time_ns``: time the shared machine gives to other
        processes is not counted); ``engine_core_wall`` and ``total_wall`` are wall-clock times."""
        from vllm.v1.metrics.stats import IterationStats
        from vllm.v1.outputs import ModelRunnerOutput

        s = self.scheduler
        marks = []  # (thread CPU ns, wall ns) at each boundary

        def mark() -> None:
            marks.append((time.thread_time_ns(), time.perf_counter_ns()))

        mark()
        so = s.schedule()
        mark()
        ids = list(so.num_scheduled_tokens)
        sampled = [[self.rng.randrange(3, VOCAB)] if s.requests[r].num_computed_tokens >= s.requests[r].num_prompt_tokens else [] for r in ids]
        runner_out = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled)
        done = (so, runner_out)
        if self.pipelined:  # async scheduling: this step's schedule() runs before the last step's update
            done, self.pending = self.pending, done
        mark()
        core_outs = s.update_from_output(*done) if done is not None else {}
        mark()
        frames = [self.encoder.encode(o) for o in core_outs.values()]
        mark()
        decoded = [self.decoder.decode(f) for f in frames]
        mark()
        stats = IterationStats()
        for outs in decoded:
            self.output.process_outputs(outs.outputs, outs.timestamp, stats)
        mark()
        for rid in done[0].num_scheduled_tokens if done is not None else ():  # the consumers (generate() tasks) drain their queues; not timed
            q = self.collectors.get(rid)
            if q is not None:
                q.get_nowait()
                if rid not in self.output.request_states:
                    del self.collectors[rid]
        cpu = [m[0] for m in marks]
        wall = [m[1] for m in marks]
        times = {"schedule": cpu[1] - cpu[0], "update": cpu[3] - cpu[2], "encode": cpu[4] - cpu[3], "decode": cpu[5] - cpu[4], "output": cpu[6] - cpu[5]}
        times["engine_core_wall"] = (wall[1] - wall[0]) + (wall[4] - wall[2])
        times["total_wall"] = times["engine_core_wall"] + (wall[6] - wall[4])
        return len(ids), so.total_num_scheduled_tokens, times


def run_until_running(engine: Engine, n: int) -> None:
    """Steps (untimed) until ``n`` requests are decoding."""
    for _ in range(10_000):
        running = engine.scheduler.running
        if len(running) >= n and all(r.num_computed_tokens >= r.num_prompt_tokens for r in running):
            return
        engine.step()
    raise RuntimeError(f"requests never all started decoding (wanted {n})")


def measure_decode(model_dir, tokenizer, n: int, w: int, steps: int, warmup: int, rng, pipelined: bool) -> tuple[list, Engine]:
    """``steps`` timed decode steps of ``n`` running requests with ``w`` waiting behind them."""
    engine = Engine(model_dir, tokenizer, max_num_seqs=n, max_batched_tokens=8192, rng=rng, pipelined=pipelined)
    for _ in range(n):
        engine.add(rng.randrange(128, 1024), max_tokens=MAX_MODEL_LEN - 2048)
    run_until_running(engine, n)
    for _ in range(w):
        engine.add(rng.randrange(128, 1024), max_tokens=MAX_MODEL_LEN - 2048)
    samples = []
    for i in range(warmup + steps):
        reqs, toks, times = engine.step()
        if i >= warmup:
            samples.append((reqs, toks, times))
    assert all(r == n and t == n for r, t, _ in samples), "a decode step did not schedule exactly the running batch"
    return samples, engine


def measure_prefill(model_dir, tokenizer, chunk: int, decodes: int, steps: int, warmup: int, rng, pipelined: bool) -> tuple[list, Engine]:
    """``steps`` timed steps of ``decodes`` decoding requests plus a ``chunk``-token slice of long
    prompts (chunked prefill; the prompt requests end after their first token)."""
    budget = chunk + decodes
    engine = Engine(model_dir, tokenizer, max_num_seqs=decodes + 8, max_batched_tokens=budget, rng=rng, pipelined=pipelined)
    for _ in range(decodes):
        engine.add(rng.randrange(128, 1024), max_tokens=MAX_MODEL_LEN - 2048)
    run_until_running(engine, decodes)
    prompt_len = min(4 * chunk, MAX_MODEL_LEN - 64)
    samples = []
    for i in range(warmup + steps):
        if len(engine.scheduler.waiting) == 0:
            engine.add(prompt_len, max_tokens=1)
        reqs, toks, times = engine.step()
        if i >= warmup:
            samples.append((reqs, toks, times))
    return samples, engine


FIRST_TOKEN_PROMPTS = (128, 512, 2048, 8192, 16384, 32000)
"""Prompt lengths at which the front end's first-token cost is measured."""


def measure_first_token(model_dir, tokenizer, repeats: int, rng) -> list[str]:
    """The front end's cost of a request's first token against its prompt length (the incremental
    detokeniser is primed with the whole prompt), and the engine core's ``add`` cost; CSV lines."""
    lines = ["prompt_tokens,samples,first_output_median_us,first_output_p90_us,add_median_us"]
    for plen in FIRST_TOKEN_PROMPTS:
        engine = Engine(model_dir, tokenizer, max_num_seqs=8, max_batched_tokens=MAX_MODEL_LEN, rng=rng)
        firsts = []
        for _ in range(repeats):
            engine.add(plen, max_tokens=1)
            reqs, toks, times = engine.step()
            assert reqs == 1 and toks == plen, "the prompt did not run in one step"
            firsts.append(times["output"] / 1e3)
        adds = [ns / 1e3 for _, ns in engine.add_times]
        lines.append(f"{plen},{len(firsts)},{statistics.median(firsts):.2f},{percentile(firsts, 0.9):.2f},{statistics.median(adds):.2f}")
        print(lines[-1], file=sys.stderr)
    return lines


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def main(argv: list[str] | None = None) -> int:
    """Runs every point and writes the CSVs and ``device.json`` under ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("calibration/vllm-cpu"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="timed steps per point per round")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scheduler", choices=("sync", "async"), default="sync", help="Scheduler, or AsyncScheduler pipelined one step ahead (vLLM's default on GPUs)")
    ap.add_argument("--only-first-token", action="store_true", help="only the first-token/add measurement (first_token.csv)")
    ap.add_argument("--quick", action="store_true", help="a few points only, to check the script")
    args = ap.parse_args(argv)

    import vllm
    from vllm.tokenizers import get_tokenizer

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="vllm-step-") as work:
        t = time.time()
        model_dir = build_model_dir(Path(work) / "model")
        print(f"tokenizer trained in {time.time() - t:.1f}s", file=sys.stderr)
        tokenizer = get_tokenizer(str(model_dir))
        first = measure_first_token(model_dir, tokenizer, 40 if not args.quick else 5, rng)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "first_token.csv").write_text("\n".join(first) + "\n")
        if args.only_first_token:
            return 0
        pooled, round_rows, add_times = run_points(model_dir, tokenizer, args, rng)
    write_results(args.out, pooled, round_rows, add_times, args, vllm.__version__)
    return 0


def run_points(model_dir: Path, tokenizer, args, rng) -> tuple[dict, list, list]:
    """Every point, ``args.rounds`` times interleaved; returns pooled samples, per-round medians and
    the per-request add times."""
    points = [("decode", n, w) for w in DECODE_W for n in DECODE_N] + [("prefill", c, d) for d in PREFILL_DECODES for c in PREFILL_CHUNKS]
    if args.quick:
        points = [("decode", 1, 0), ("decode", 64, 64), ("prefill", 1024, 32)]
    pooled: dict[tuple, list] = {p: [] for p in points}
    round_rows = []
    add_times: list[tuple[int, int]] = []
    for rnd in range(args.rounds):
        for p in points:
            gc.collect()
            if p[0] == "decode":
                samples, engine = measure_decode(model_dir, tokenizer, p[1], p[2], args.steps, args.warmup, rng, args.scheduler == "async")
            else:
                samples, engine = measure_prefill(model_dir, tokenizer, p[1], p[2], args.steps, args.warmup, rng, args.scheduler == "async")
            add_times.extend(engine.add_times)
            pooled[p].extend(samples)
            med = {part: statistics.median(s[2][part] for s in samples) / 1e3 for part in PARTS + ("engine_core_wall",)}
            round_rows.append({"round": rnd, "kind": p[0], "a": p[1], "b": p[2], **{f"{k}_us": round(v, 2) for k, v in med.items()}})
            print(f"round {rnd} {p}: " + " ".join(f"{k}={v:.0f}us" for k, v in med.items()), file=sys.stderr)
            del engine
    return pooled, round_rows, add_times


def write_results(out: Path, pooled: dict, round_rows: list, add_times: list, args, vllm_version: str) -> None:
    """Writes ``steps.csv``, ``rounds.csv``, ``add_request.csv`` and ``device.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    header = ["kind", "num_seqs", "num_batched_tokens", "num_waiting", "prefill_chunk", "samples"]
    for part in PARTS + ("engine_core", "total", "engine_core_wall", "total_wall"):
        header += [f"{part}_median_us", f"{part}_p90_us"]
    lines = [",".join(header)]
    for p, samples in pooled.items():
        seqs = statistics.median(s[0] for s in samples)
        toks = statistics.median(s[1] for s in samples)
        row = [p[0], f"{seqs:g}", f"{toks:g}", str(p[2] if p[0] == "decode" else 0), str(p[1] if p[0] == "prefill" else 0), str(len(samples))]
        series = {part: [s[2][part] / 1e3 for s in samples] for part in PARTS}
        series["engine_core"] = [s[2]["schedule"] / 1e3 + s[2]["update"] / 1e3 + s[2]["encode"] / 1e3 for s in samples]
        series["total"] = [sum(s[2][part] for part in PARTS) / 1e3 for s in samples]
        series["engine_core_wall"] = [s[2]["engine_core_wall"] / 1e3 for s in samples]
        series["total_wall"] = [s[2]["total_wall"] / 1e3 for s in samples]
        for part in PARTS + ("engine_core", "total", "engine_core_wall", "total_wall"):
            row += [f"{statistics.median(series[part]):.2f}", f"{percentile(series[part], 0.9):.2f}"]
        lines.append(",".join(row))
    (out / "steps.csv").write_text("\n".join(lines) + "\n")
    keys = ["round", "kind", "a", "b"] + [f"{k}_us" for k in PARTS + ("engine_core_wall",)]
    (out / "rounds.csv").write_text("\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in round_rows]) + "\n")
    by_len: dict[int, list[int]] = {}
    for plen, ns in add_times:
        by_len.setdefault(plen // 128 * 128, []).append(ns)
    add_lines = ["prompt_tokens_bucket,samples,add_median_us,add_p90_us"] + [f"{k},{len(v)},{statistics.median(v) / 1e3:.2f},{percentile(v, 0.9) / 1e3:.2f}" for k, v in sorted(by_len.items())]
    (out / "add_request.csv").write_text("\n".join(add_lines) + "\n")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    device = {
        "cpu_model": cpu, "logical_cpus": os.cpu_count(), "shared": "2 cores shared with other engineers' builds and tests",
        "vllm_version": vllm_version, "python": platform.python_version(), "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rounds": args.rounds, "steps_per_point_per_round": args.steps, "warmup_steps": args.warmup, "seed": args.seed,
        "scheduler": ("vllm.v1.core.sched.async_scheduler.AsyncScheduler, schedule() one step ahead of update_from_output()" if args.scheduler == "async" else "vllm.v1.core.sched.scheduler.Scheduler (synchronous)") + ", prefix caching on, block 16, log_stats on",
        "tokenizer": f"byte-level BPE, {VOCAB} tokens, trained on Python {platform.python_version()} stdlib sources (no pretrained tokenizer offline)",
    }
    (out / "device.json").write_text(json.dumps(device, indent=2) + "\n")
    print(f"wrote {out}/steps.csv, rounds.csv, add_request.csv, device.json", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
