"""``fleetwise estimate`` and ``catalog``: one iteration, the catalogue (``calibrate`` is in ``calibration.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from fleetwise.cli.app import app, out
from fleetwise.cli.options import float_option


@app.command()
def estimate(
    model: str = typer.Option(..., "--model", help="Model name (see `fleetwise catalog`, or one in --specs)."),
    gpu: str = typer.Option(..., "--gpu", help="GPU name (see `fleetwise catalog`, or one in --specs)."),
    specs: Optional[Path] = typer.Option(None, "--specs", help="A YAML file with gpus:, models:, pims: and/or storage: (flash drives for --offload flash) sections (a scenario file works too): user-defined entries."),
    engine: str = typer.Option("vllm", "--engine", help="Serving engine profile: vllm, fleetwise-torch, or a profile file (docs/engines.md)."),
    tp: int = typer.Option(1, "--tp", min=1, max=4096, help="Tensor-parallel degree."),
    pp: int = typer.Option(1, "--pp", min=1, max=4096, help="Pipeline-parallel stages."),
    ep: int = typer.Option(1, "--ep", min=1, max=4096, help="Expert parallelism for MoE models (1 or tp)."),
    microbatches: Optional[int] = typer.Option(None, "--microbatches", min=1, max=4096, help="Micro-batches with --pp (default: pp)."),
    power_cap: Optional[float] = float_option(None, "--power-cap", min=1, max=1e6, help="Power cap per GPU, watts."),
    pim: Optional[str] = typer.Option(None, "--pim", help="Attach a PIM device to each GPU (see `fleetwise catalog`)."),
    offload: Optional[str] = typer.Option(None, "--offload", help="Offload weights: dram or flash."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="Quantization KEY=VALUE,... : weights=bf16|fp8|int8|int4, activations=bf16|fp8, kv_cache=bf16|fp8, group_size=N (int4), e.g. weights=fp8,kv_cache=fp8 (docs/quantization.md)."),
    speculative: Optional[str] = typer.Option(None, "--speculative", help="Speculative decoding KEY=VALUE,... : method=draft|eagle|eagle3|mtp|ngram|suffix, draft_model=NAME (draft; eagle3: the head), draft_vocab_size=N (eagle3), proposal_rate=P (ngram), num_speculative_tokens=K, acceptance_rate=A or A1/A2/... per position, acceptance_classes=S1:A+S2:A1/A2/... (shares and rates by class of request, instead), num_speculative_tokens_per_batch_size=1-64:4/65-1024:1 (k by the decode batch), enable_adaptive_verification=true (verify the k that pays at this batch), adaptive_estimate=history (one k for all, from the classes' share-weighted acceptance, as learned from history), adaptive_profile_context=8192 (price the candidates at one context, as vLLM's profiled table), draft_lengths=P1/P2/... (ngram, suffix: the probability of a proposal of 1, 2, ... tokens); with --decode-batch/--context prints the decode speedup (docs/speculative-decoding.md)."),
    offload_set: List[str] = typer.Option([], "--offload-set", help="With --offload: an offload setting KEY=VALUE (layer_fraction, ffn_load_fraction, dram_cache_fraction, resident_attention, overlap, storage, queue_depth, read_chunk_kb, capacity_gb), each key once. Repeatable."),
    prefill: int = typer.Option(0, "--prefill", min=0, max=2**31 - 1, help="Prefill chunk size, tokens."),
    prefill_context: int = typer.Option(0, "--prefill-context", min=0, max=2**31 - 1, help="Tokens already cached before the chunk."),
    decode_batch: int = typer.Option(0, "--decode-batch", min=0, max=10**7, help="Number of decoding sequences."),
    context: int = typer.Option(0, "--context", min=0, max=2**31 - 1, help="Tokens in each decoding sequence's KV cache."),
    prompt: int = typer.Option(0, "--prompt", min=0, max=2**31 - 1, help="With --output: a whole request's idealized runtime instead of one iteration."),
    output: int = typer.Option(0, "--output", min=0, max=2**31 - 1, help="Output tokens of the --prompt request."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Predict the time and memory of one iteration (prefill, decode, or both mixed), or with
    --prompt/--output a request's idealized runtime: alone on the GPU, on as few GPUs as hold it."""
    from fleetwise.errors import CapacityError
    from fleetwise.estimate import estimate_iteration

    off = offload_settings(offload, offload_set)
    user = None
    if specs is not None:
        from fleetwise.config.specs import load_specs

        user = load_specs(specs)
    if microbatches is not None and pp == 1 and not (prompt or output):
        from fleetwise.errors import ConfigError

        raise ConfigError(f"--microbatches {microbatches}: splits a batch over pipeline stages; give --pp 2 or more (it was ignored at --pp 1)")
    if prompt or output:
        from fleetwise.errors import ConfigError
        from fleetwise.estimate import estimate_request

        ignored = [flag for flag, given in (("--prefill", prefill), ("--prefill-context", prefill_context), ("--decode-batch", decode_batch),
                                            ("--context", context), ("--tp", tp != 1), ("--pp", pp != 1), ("--ep", ep != 1),
                                            ("--microbatches", microbatches), ("--power-cap", power_cap), ("--pim", pim), ("--offload", offload), ("--offload-set", offload_set),
                                            ("--quantization", quantization), ("--speculative", speculative)) if given]
        if ignored:
            raise ConfigError(f"estimate --prompt/--output: the idealized runtime is the request alone on --gpu under --engine, on as few "
                              f"GPUs as hold the model; not with {', '.join(ignored)} (drop them, or drop --prompt/--output to cost one iteration)")

        r = estimate_request(model, gpu, prompt, output, engine=engine, specs=user)
        if as_json:
            out.print_json(json.dumps(r))
        else:
            out.print(f"{model} on {gpu} ({engine} engine), {prompt} prompt + {output} output tokens alone: idealized runtime "
                      f"{r['idealized_runtime_s']:.4f} s on {r['gpus']} GPU(s) = {r['idealized_gpu_seconds']:.4f} GPU-seconds "
                      f"(prefill {r['prefill_s'] * 1e3:.2f} ms, then {output - 1} decodes)")
        return
    quant = None
    if quantization is not None:
        from fleetwise.config.quantization import parse_quantization

        quant = parse_quantization(quantization)
    spec = None
    if speculative is not None:
        from fleetwise.config.speculative import parse_speculative

        spec = parse_speculative(speculative)
    r = estimate_iteration(model, gpu, tp, prefill, prefill_context, decode_batch, context, pp=pp, microbatches=microbatches, power_cap_watts=power_cap, pim=pim, offload=off, ep=ep, specs=user, engine=engine,
                           quantization=quant, speculative=spec)
    if as_json:
        out.print_json(json.dumps(r))
    else:
        layout = f"x{tp}" + (f" x pp{pp}" if pp > 1 else "")
        q = {k: v for k, v in r["quantization"].items() if v not in ("bf16", None)}
        if q:
            layout += " " + ",".join(f"{k}={v}" for k, v in q.items())
        t = Table(title=f"{model} on {gpu} {layout} ({engine} engine): {r['seconds'] * 1e3:.3f} ms per iteration, {r['power_watts_per_gpu']:.0f} W per GPU")
        for c in ("operator", "ms", "TFLOP", "GB", "bound"):
            t.add_column(c, justify="left" if c in ("operator", "bound") else "right")
        for o in r["ops"]:
            bound = "-" if o["op"] == "overhead" else ("compute" if o["compute_bound"] else ("link" if o["op"] in ("all_reduce", "all_to_all", "pipeline_send", "weight_fetch") else "memory"))
            if o.get("on_pim"):
                bound += " (PIM)"
            t.add_row(o["op"], f"{o['seconds'] * 1e3:.3f}", f"{o['flops'] / 1e12:.3f}", f"{o['bytes'] / 1e9:.3f}", bound)
        out.print(t)
        if r["pipeline_stage_seconds"]:
            st = r["pipeline_stage_seconds"]
            out.print(f"asynchronous pipeline (the simulator's default for pp > 1): stages {', '.join(f'{s * 1e3:.3f}' for s in st)} ms; "
                      f"one batch passes in {sum(st) * 1e3:.3f} ms, a new one enters every {max(st) * 1e3:.3f} ms with {len(st)} in flight "
                      f"(the table above: one synchronous iteration of micro-batches)")
        m = r["memory"]
        gib = 1 << 30
        proposer = f" + proposer weights {m['proposer_weights'] / gib:.2f} + proposer KV {m['proposer_kv_cache'] / gib:.2f}" if "proposer_weights" in m else ""
        out.print(f"memory per GPU: {r['memory_bytes'] / gib:.2f} GiB (weights {m['weights'] / gib:.2f} + KV {m['kv_cache'] / gib:.2f} + activations {m['activations'] / gib:.2f}{proposer}) of {m['available'] / gib:.2f} GiB usable")
        if "speculative" in r:
            s = r["speculative"]
            out.print(f"speculative ({s['proposer']}, k={s['k']}{'' if s['k'] == s['num_speculative_tokens'] else ' of ' + str(s['num_speculative_tokens']) + ' at this batch'}{(' verified adaptively' + (' by observed acceptance' if s['adaptive_estimate'] == 'history' else '')) if s['enable_adaptive_verification'] else ''}{_tree_label(s)}, acceptance {s['acceptance']}): step {s['step_seconds'] * 1e3:.3f} ms "
                      f"(proposer {s['proposer_seconds'] * 1e3:.3f} + verify {s['verify_seconds'] * 1e3:.3f}) for {s['tokens_per_step']:.3f} tokens per sequence = "
                      f"{s['seconds_per_token'] * 1e3:.3f} ms per token vs {s['plain_seconds_per_token'] * 1e3:.3f} plain: speedup {s['speedup']:.2f}x")
    if not r["memory"]["fits"]:
        m = r["memory"]
        raise CapacityError(f"{model} on {gpu} x{tp}: this iteration needs {r['memory_bytes'] / (1 << 30):.2f} GiB per GPU, {m['available'] / (1 << 30):.2f} GiB available")


def offload_settings(offload: str | None, settings: List[str]) -> dict | None:
    """``--offload TIER`` and its ``--offload-set KEY=VALUE`` settings as an ``OffloadConfig`` dict
    (each value read as YAML; the model checks the keys and values). ``ConfigError`` for settings
    without ``--offload`` (they would be ignored), an item that is not KEY=VALUE, ``tier`` among them
    (``--offload`` gives it), a key given twice, or a value that is not valid YAML."""
    from fleetwise.config.scenario import OffloadConfig
    from fleetwise.config.yaml_input import parse_yaml, short_repr
    from fleetwise.errors import ConfigError

    keys = ", ".join(k for k in OffloadConfig.model_fields if k != "tier")
    if offload is None:
        if settings:
            raise ConfigError(f"--offload-set {short_repr(settings[0])}: needs --offload dram or --offload flash (without --offload nothing is "
                              "offloaded and the setting would be ignored)")
        return None
    off: dict = {"tier": offload}
    for item in settings:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ConfigError(f"--offload-set {short_repr(item)}: expected KEY=VALUE; keys: {keys}")
        if key == "tier":
            raise ConfigError(f"--offload-set tier={short_repr(value.strip())}: the tier is --offload's (dram or flash); drop it from --offload-set")
        if key in off:
            raise ConfigError(f"--offload-set {key}: given twice; give each key once")
        off[key] = parse_yaml(value, f"--offload-set {key}")
    return off


@app.command()
def catalog(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in GPUs and models."""
    from fleetwise.catalog import builtin_gpus, builtin_models, builtin_pims

    gpus, models, pims = builtin_gpus(), builtin_models(), builtin_pims()
    if as_json:
        out.print_json(json.dumps({"gpus": {k: v.model_dump() for k, v in gpus.items()}, "models": {k: v.model_dump() for k, v in models.items()}, "pims": {k: v.model_dump() for k, v in pims.items()}}))
        return
    t = Table(title="GPUs")
    for c in ("name", "description", "BF16 TFLOP/s", "FP8 TFLOP/s", "memory GB", "HBM TB/s", "link GB/s/dir"):
        t.add_column(c)
    for k, g in gpus.items():
        t.add_row(k, g.description, f"{g.peak_flops / 1e12:.0f}", f"{g.fp8_peak_flops / 1e12:.0f}" if g.fp8_peak_flops else "-", f"{g.memory_bytes / 1e9:.0f}", f"{g.memory_bandwidth / 1e12:.2f}", f"{g.link_bandwidth / 1e9:.0f} ({g.link})")
    out.print(t)
    t = Table(title="Models")
    for c in ("name", "layers", "hidden", "heads/kv", "MLP / experts", "vocab", "context", "params (B)"):
        t.add_column(c)
    from fleetwise.cost import cost_model

    for k, m in models.items():
        g = next(iter(gpus.values()))
        cm = cost_model(m, g, model_name=k, gpu_name="x")
        params = cm.weight_bytes() / m.dtype_bytes / 1e9
        ffn = f"{m.num_experts}x{m.moe_intermediate_size} top-{m.experts_per_token}" if m.num_experts else str(m.intermediate_size)
        ffn += " plain" if m.mlp == "plain" else ""
        ffn += " parallel" if m.parallel_attention else ""
        kv = f"MLA {m.mla.kv_lora_rank}" if m.mla else str(m.num_kv_heads)
        context = str(m.max_position_embeddings) + (f" (window {m.sliding_window})" if m.sliding_window else "")
        t.add_row(k, str(m.num_layers), str(m.hidden_size), f"{m.num_heads}/{kv}", ffn, str(m.vocab_size), context, f"{params:.2f}")
    out.print(t)
    t = Table(title="PIM devices (attached to each GPU's memory)")
    for c in ("name", "description", "TFLOP/s", "internal TB/s"):
        t.add_column(c)
    for k, p in pims.items():
        t.add_row(k, p.description, f"{p.peak_flops / 1e12:.1f}", f"{p.internal_bandwidth / 1e12:.1f}")
    out.print(t)


def _tree_label(spec: dict) -> str:
    """`` in a tree of 2/2`` (each level's children per node) for a token tree, else nothing."""
    tree = spec.get("speculative_token_tree")
    if not tree:
        return ""
    widths, parents = [], 1
    for depth in range(1, max(len(p) for p in tree) + 1):
        nodes = sum(len(p) == depth for p in tree)
        widths.append(str(nodes // parents))
        parents = nodes
    return " in a tree of " + "/".join(widths)
