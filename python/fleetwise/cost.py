"""``cost_model``: the one way Python builds the core's roofline cost model of an instance."""

from __future__ import annotations

import json

from fleetwise import _core


def _spec_json(kind: str, spec, name: str | None) -> dict:
    """The core JSON of a catalogue entry given by name, as a spec object, or already as core JSON."""
    from fleetwise.catalog import lookup

    if isinstance(spec, dict):
        return spec
    if isinstance(spec, str):
        return lookup(kind, spec, {}, kind).core_json(spec if name is None else name)
    return spec.core_json(kind if name is None else name)


def cost_model(
    model,
    gpu,
    *,
    tp: int = 1,
    pp: int = 1,
    microbatches: int | None = None,
    power_cap_watts: float | None = None,
    gpus_per_node: int = 8,
    pim=None,
    offload=None,
    ep: int = 1,
    calibration=None,
    model_name: str | None = None,
    gpu_name: str | None = None,
    engine: str = "vllm",
    quantization=None,
) -> _core.CostModel:
    """The core's cost model of ``model`` on ``tp`` x ``pp`` GPUs of kind ``gpu``.

    ``model``, ``gpu`` and ``pim`` are catalogue names, spec objects (``ModelSpec``, ``GpuSpec``,
    ``PimSpec``) or their core JSON dicts (a pool of ``fleetwise.cluster.core_config``);
    ``calibration`` is a ``Calibration`` or its dict (default: ``engine``'s profile on the GPU's
    hardware, which needs ``gpu`` as a name or a ``GpuSpec``); ``offload`` is an ``OffloadConfig`` or its core JSON dict. A spec
    object is named ``model_name``/``gpu_name`` in the core (default: its catalogue name, else
    ``"model"``/``"gpu"``). ``quantization`` is a ``QuantizationConfig``, its dict, or the core JSON
    dict of a pool (default: none).
    """
    from fleetwise.catalog import lookup

    if calibration is None:
        from fleetwise.catalog.engine import resolve_calibration

        spec = lookup("gpu", gpu, {}, "gpu") if isinstance(gpu, str) else gpu
        calibration = resolve_calibration(gpu if isinstance(gpu, str) else (gpu_name or "gpu"), spec, engine)
    cal_json = json.dumps(calibration) if isinstance(calibration, dict) else calibration.model_dump_json()
    pim_json = None if pim is None else json.dumps(_spec_json("pim", pim, None))
    off_json = None
    if offload is not None:
        if not isinstance(offload, dict):
            from fleetwise.cluster import offload_json

            offload = offload_json(offload, "offload")
        off_json = json.dumps(offload)
    quant_json = None
    if quantization is not None:
        from fleetwise.config.quantization import QuantizationConfig

        q = quantization if isinstance(quantization, QuantizationConfig) else None
        quant_json = json.dumps(q.core_json() if q is not None else quantization)
    return _core.CostModel(json.dumps(_spec_json("model", model, model_name)), json.dumps(_spec_json("gpu", gpu, gpu_name)), cal_json,
                           tp, pp, microbatches, power_cap_watts, gpus_per_node, pim_json, off_json, ep, quant_json)
