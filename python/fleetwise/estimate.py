"""One iteration's predicted time and memory for a model on a GPU (``fleetwise estimate``)."""

from __future__ import annotations

from fleetwise.catalog import lookup
from fleetwise.cost import cost_model


def estimate_iteration(
    model: str,
    gpu: str,
    tp: int = 1,
    prefill: int = 0,
    prefill_context: int = 0,
    decode_batch: int = 0,
    context: int = 0,
    gpu_memory_utilization: float = 0.9,
    pp: int = 1,
    microbatches: int | None = None,
    power_cap_watts: float | None = None,
    pim: str | None = None,
    offload: dict | None = None,
    ep: int = 1,
    specs=None,
    engine: str = "vllm",
    quantization: dict | None = None,
    speculative: dict | None = None,
) -> dict:
    """Predicts one iteration: a prefill chunk of ``prefill`` tokens after ``prefill_context``
    cached tokens, ``decode_batch`` decodes at context ``context``, or both as one mixed batch.

    Returns seconds, the operator breakdown, and the memory the iteration needs on one GPU
    (weights + KV of every sequence in the batch + activations) next to what the GPU has.
    ``specs`` (a ``fleetwise.config.specs.Specs``) adds user-defined GPUs, models and PIMs to the
    catalogue's; ``engine`` is the serving engine's profile (a built-in name or a file);
    ``quantization`` a pool's ``quantization`` as a dict (``QuantizationConfig``; default none);
    ``speculative`` a pool's ``speculative`` as a dict (``SpeculativeConfig``): with decodes, the
    result's ``speculative`` entry prices one speculative step of the same decodes against this
    plain one and gives the decode speedup (see ``speculative_speedup``).
    """
    from fleetwise.errors import ConfigError

    if prefill <= 0 and decode_batch <= 0:
        raise ConfigError("estimate: give --prefill TOKENS and/or --decode-batch B (with --context C)")
    if decode_batch > 0 and context <= 0:
        raise ConfigError("estimate: --decode-batch needs --context C (tokens already in each sequence's KV cache)")
    if prefill_context and prefill <= 0:
        raise ConfigError("estimate: --prefill-context needs --prefill")
    if context and decode_batch <= 0:
        raise ConfigError(f"estimate: --context {context} is the KV cache of each --decode-batch sequence; give --decode-batch B "
                          "(for tokens cached before a prefill chunk, use --prefill-context)")
    user_gpus, user_models, user_pims = (specs.gpus, specs.models, specs.pims) if specs is not None else ({}, {}, {})
    g = lookup("gpu", gpu, user_gpus, "--gpu")
    m = lookup("model", model, user_models, "--model")
    limit = m.max_position_embeddings
    if prefill + prefill_context > limit:
        raise ConfigError(f"estimate: --prefill {prefill} after --prefill-context {prefill_context} is {prefill + prefill_context} tokens, over {model}'s {limit}-token context")
    if decode_batch > 0 and context + 1 > limit:
        raise ConfigError(f"estimate: --context {context} (plus the token being decoded) is over {model}'s {limit}-token context")
    pim_spec = None if pim is None else lookup("pim", pim, user_pims, "--pim").core_json(pim)
    off_spec = None
    if offload is not None:
        from fleetwise.cluster import offload_json
        from fleetwise.config.scenario import OffloadConfig

        from pydantic import ValidationError

        from fleetwise.config.load import format_validation_error

        try:
            spec = OffloadConfig.model_validate(offload)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "--offload/--offload-set", OffloadConfig)) from None
        off_spec = offload_json(spec, "--offload", specs.storage if specs is not None else None)
    quant = _quantization(quantization)
    quant.check_model(m, model, "--quantization")
    from fleetwise.catalog.engine import resolve_calibration

    calibration = resolve_calibration(gpu, g, engine)

    def target(cal):
        """The target's cost model on these GPUs with calibration ``cal``."""
        return cost_model(m, g, tp=tp, pp=pp, microbatches=microbatches, power_cap_watts=power_cap_watts, pim=pim_spec, offload=off_spec, ep=ep,
                          model_name=model, gpu_name=gpu, calibration=cal, quantization=quant)

    cost = target(calibration)
    prefills = [(prefill, prefill_context, True)] if prefill > 0 else []
    # A decode at context C reads C cached tokens plus the one it processes.
    decodes = [context + 1] * decode_batch
    seconds = cost.iteration_seconds(prefills, decodes)
    tokens = max(prefill, 0) + decode_batch
    sampled = (1 if prefill > 0 else 0) + decode_batch
    # KV held: each sequence's context, or with a sliding window W only the keys its queries
    # still attend to (a chunk of q after c: min(c + q, W - 1 + q); a decode: min(C + 1, W)).
    w = m.sliding_window
    held_prefill = 0 if prefill <= 0 else (prefill + prefill_context if w is None else min(prefill + prefill_context, w - 1 + prefill))
    kv_tokens = held_prefill + decode_batch * (context + 1 if w is None else min(context + 1, w))
    weights = cost.weight_bytes_per_gpu()
    kv = kv_tokens * cost.kv_bytes_per_token()
    act = cost.activation_bytes(tokens, sampled)
    available = int(g.memory_bytes * gpu_memory_utilization)
    need = weights + kv + act
    # With stages: the batch as one micro-batch through an asynchronous pipeline (the simulator's
    # default for pp > 1; docs/pipeline-parallelism.md), stage 1 first.
    stages = [ns * 1e-9 for ns in cost.stage_ns(prefills, decodes)] if pp > 1 else None
    result = {
        "model": model,
        "gpu": gpu,
        "engine": engine,
        "tp": tp,
        "pp": pp,
        "pipeline_stage_seconds": stages,
        "quantization": quant.model_dump(),
        "batch": {"prefill_tokens": prefill, "prefill_context": prefill_context, "decode_batch": decode_batch, "context": context},
        "seconds": seconds,
        "memory_bytes": need,
        "memory": {"weights": weights, "kv_cache": kv, "activations": act, "available": available, "fits": need <= available},
        "power_watts_per_gpu": cost.busy_watts(prefills, decodes),
        "ops": cost.breakdown(prefills, decodes),
    }
    if speculative is not None:
        if prefill > 0 or decode_batch <= 0:
            raise ConfigError("estimate: --speculative prices decode steps: give --decode-batch B and --context C without --prefill")
        from fleetwise.cluster import ngram_synchronous

        # The engine runs a CPU n-gram proposer synchronously (as a run's pool does).
        step_cost = target(ngram_synchronous(calibration)) if speculative.get("method") == "ngram" else cost
        result["speculative"] = sp = speculative_speedup(step_cost, speculative, decodes, seconds, m, model, user_models, lambda spec, name: cost_model(
            spec, g, tp=tp, model_name=name, gpu_name=gpu, engine=engine).weight_bytes())
        # The proposer's weights and its KV of the same tokens live on the same GPUs (as in a run).
        mem = result["memory"]
        mem["proposer_weights"] = sp["proposer_weight_bytes"]
        mem["proposer_kv_cache"] = kv_tokens * sp["proposer_kv_bytes_per_token"]
        need += mem["proposer_weights"] + mem["proposer_kv_cache"]
        result["memory_bytes"], mem["fits"] = need, need <= available
    return result


def speculative_speedup(cost, given: dict, decodes: list[int], plain_seconds: float, target, target_name: str, user_models: dict, weight_bytes) -> dict:
    """One speculative step of ``decodes`` (contexts) on ``cost`` with ``given`` (a ``SpeculativeConfig``
    dict; errors name ``--speculative``) against a plain decode step of ``plain_seconds``: the step's
    and its verify pass's seconds, the expected tokens per sequence per step, seconds per token
    and the decode speedup (plain seconds per token / speculative seconds per token); with an
    n-gram ``proposal_rate`` p, the step and its tokens are p of a drafting step's and 1 - p of a
    plain one's on ``cost`` with the lookup (its ``proposer_seconds``). Under a batch-size table, ``k`` is the table's for this many decodes;
    under adaptive verification, the k verified that gives these decodes the most tokens per second
    (with acceptance classes, the decodes apportioned to the classes by share: the most any class
    verifies, ``tokens_per_step`` over them all; learning from history, one k for every decode
    scored by the classes' share-weighted survival)."""
    import json

    from pydantic import ValidationError

    from fleetwise.config.load import format_validation_error
    from fleetwise.config.speculative import SpeculativeConfig, resolve_speculative
    from fleetwise.errors import ConfigError

    try:
        spec = SpeculativeConfig.model_validate(given)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "--speculative", SpeculativeConfig)) from None
    core = resolve_speculative(spec, "--speculative", target, target_name, user_models, weight_bytes)
    step, verify, tokens, k = cost.speculative_step(json.dumps(core), decodes)
    proposer = step - verify
    if spec.proposal_rate is not None:
        # An n-gram lookup drafts in a share p of the steps: the expectation between every
        # sequence matching and none (exact at batch 1); a step without a match is a plain decode
        # on ``cost`` (the synchronous engine an n-gram pool runs) after the same lookup.
        p = spec.proposal_rate
        unmatched = cost.iteration_seconds([], decodes) + proposer
        step, tokens = p * step + (1.0 - p) * unmatched, p * tokens + (1.0 - p)
        verify = step - proposer
    proposer_weights, proposer_kv_per_token = cost.speculative_memory(json.dumps(core))
    return {**spec.model_dump(), "k": k, "proposer": spec.proposer, "acceptance": spec.acceptance_label, "proposer_weight_bytes": proposer_weights, "proposer_kv_bytes_per_token": proposer_kv_per_token, "step_seconds": step, "verify_seconds": verify, "proposer_seconds": proposer, "tokens_per_step": tokens,
            "seconds_per_token": step / tokens, "plain_seconds_per_token": plain_seconds, "speedup": plain_seconds * tokens / step}


def _quantization(given: dict | None):
    """``given`` validated as a ``QuantizationConfig`` (errors name ``--quantization``)."""
    from pydantic import ValidationError

    from fleetwise.config.load import format_validation_error
    from fleetwise.config.quantization import QuantizationConfig
    from fleetwise.errors import ConfigError

    try:
        return QuantizationConfig.model_validate(given or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "--quantization", QuantizationConfig)) from None


def estimate_request(model: str, gpu: str, prompt: int, output: int, engine: str = "vllm", specs=None) -> dict:
    """A request's idealized runtime (``fleetwise.metrics.idealized``): ``prompt`` then ``output``
    tokens alone on ``gpu`` under ``engine``, on the fewest GPUs that hold the model and it, and
    the cost-aware variant (x those GPUs)."""
    import numpy as np

    from fleetwise.errors import ConfigError
    from fleetwise.metrics.idealized import IdealizedRuntime

    if prompt < 1 or output < 1:
        raise ConfigError("estimate: --prompt and --output must both be at least 1")
    user_gpus, user_models = (specs.gpus, specs.models) if specs is not None else ({}, {})
    limit = lookup("model", model, user_models, "--model").max_position_embeddings
    if prompt + output > limit:
        raise ConfigError(f"estimate: --prompt {prompt} + --output {output} is over {model}'s {limit}-token context")
    rt = IdealizedRuntime.build(model, gpu, engine, prompt + output, user_models, user_gpus)
    secs = float(rt.seconds(np.array([prompt]), np.array([output]))[0])
    prefill = float(rt.seconds(np.array([prompt]), np.array([1]))[0])
    return {"model": model, "gpu": gpu, "engine": engine, "prompt_tokens": prompt, "output_tokens": output, "gpus": rt.gpus,
            "prefill_s": prefill, "idealized_runtime_s": secs, "idealized_gpu_seconds": secs * rt.gpus}
