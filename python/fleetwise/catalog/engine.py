"""Engine profiles: what the serving software adds on top of the hardware.

A GPU entry says what the hardware reaches (``HardwareFractions``: large GEMMs, weight streaming,
collectives). An engine profile says what a serving engine makes of it: how well its attention
kernels, fused elementwise kernels and MoE kernels do *relative to* those hardware fractions, its
launch overheads, and its CPU time per scheduler step. ``resolve_calibration`` combines the two
into the absolute factors the core's cost model reads (``Calibration``).

Built-in profiles live in ``engines/<name>.yaml`` beside this file (``vllm``, the default, and
``fleetwise-torch``); a scenario may name a profile file instead. A profile can pin exact absolute
factors for the GPUs it was measured on (``per_gpu``) and start from another (``based_on``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError

from fleetwise.catalog.ngram_lookup import NgramLookup
from fleetwise.config.base import StrictModel
from fleetwise.config.yaml_input import FAST_SAFE_LOADER, decode_text, parse_yaml
from fleetwise.errors import ConfigError
from fleetwise.paths import path_kind, resolved

if TYPE_CHECKING:
    from fleetwise.catalog import Calibration, CalibrationOverride, GpuSpec

ENGINES_DIR = Path(__file__).parent / "engines"
"""The built-in engine profiles, shipped with the package."""
DEFAULT_ENGINE = "vllm"
"""The engine a pool runs when it names none."""

_Relative = Annotated[float, Field(gt=0, le=4)]
"""A multiplier of a hardware fraction (the product is capped at 1)."""
_Seconds = Annotated[float, Field(ge=0, le=1)]


class EngineFactors(StrictModel):
    """An engine's efficiencies relative to the hardware's fractions, and its fixed GPU-side costs."""

    gemm_compute: _Relative = 1.0
    """Multiplier of the hardware's GEMM fraction for the dense projections."""
    memory: _Relative = 1.0
    """Multiplier of the hardware's weight-streaming fraction."""
    attention_compute: _Relative
    """Attention kernels' FLOP rate as a multiple of the hardware's GEMM fraction."""
    attention_memory: _Relative
    """Attention's KV-cache reads as a multiple of the hardware's memory fraction."""
    elementwise_memory: _Relative
    """Norms, RoPE, residuals and activations as a multiple of the hardware's memory fraction
    (low for unfused engines, near 1 with fused kernels)."""
    moe_dispatch_memory: _Relative | None = None
    """A MoE layer's dispatch and combine of its token-expert pairs (sort, gather, scatter-add) as a
    multiple of the hardware's memory fraction (unset: as ``elementwise_memory``)."""
    attention_memory_split: _Relative | None = None
    """Decode attention's bandwidth while FlashAttention splits keys, as a multiple of the hardware's
    memory fraction (unset: as ``attention_memory``)."""
    expert_compute: _Relative | None = None
    """Routed experts' grouped GEMMs as a multiple of the hardware's GEMM fraction (unset: as dense GEMMs)."""
    expert_memory: _Relative | None = None
    """Routed experts' weight reads as a multiple of the hardware's memory fraction (unset: as dense GEMMs)."""
    expert_pad_rows: Annotated[float, Field(ge=0, le=4096)] | None = None
    """Rows the experts' grouped GEMM pads each touched expert to (row tiles): ``m`` rows per expert
    reach ``m / (m + pad)`` of the expert FLOP rate (unset: no padding)."""
    expert_ridge_exponent: Annotated[float, Field(ge=1, le=64)] | None = None
    """The experts' blend exponent near the roofline's ridge (unset: ``gemm_ridge_exponent``)."""
    collective: _Relative = 1.0
    """Multiplier of the hardware's collective fraction."""
    layer_overhead: _Seconds = 0.0
    """Launch gaps per decoder layer per iteration, seconds (near 0 with CUDA graphs)."""
    attention_cta: Annotated[float, Field(gt=0, le=4)] | None = None
    """Decode attention's per-thread-block bandwidth share (see ``Calibration.attention_cta``)."""
    gemm_ridge_exponent: Annotated[float, Field(ge=1, le=64)] | None = None
    """The GEMMs' blend exponent near the roofline's ridge (see ``Calibration``)."""
    prefill_pad_tokens: Annotated[int, Field(ge=1, le=65536)] | None = None
    """Prefill tokens padded to a multiple of this (CUDA-graph sizes)."""
    mixed_query_tile: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Query rows charged per decode in an iteration with prefill tokens (the attention kernel's tile)."""
    decode_query_rows: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Query rows charged per decode in a decode-only iteration (packed-GQA tiles)."""
    verify_query_tile: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Query rows charged per (sequence, query head) of a speculative verify chunk, its keys in one
    thread block (FlashAttention-2's variable-length prefill path; unset: the chunk's own rows)."""
    moe_layer_overhead: _Seconds | None = None
    """Fixed seconds per MoE layer per iteration (routing, token sort, grouped-GEMM launches)."""


class CpuStep(StrictModel):
    """The engine's CPU time per scheduler step: ``base + per_seq * sequences + per_token * tokens``."""

    base: _Seconds = 0.0
    """Fixed seconds per step (scheduling, launching the step, sampling bookkeeping)."""
    per_seq: _Seconds = 0.0
    """Seconds per sequence in the step (scheduler, input preparation, output processing)."""
    per_token: _Seconds = 0.0
    """Seconds per batched token (input preparation)."""
    overlap: bool = False
    """The engine schedules the next step while the GPU runs this one (vLLM's asynchronous
    scheduling, its default on GPUs): the CPU step lengthens an iteration only beyond the GPU time."""
    ngram_lookup: NgramLookup | None = None
    """The CPU time of the engine's n-gram proposer per step (speculative method ``ngram``), after
    sampling, on the step's critical path (unset: free)."""


class EngineProfile(StrictModel):
    """A serving engine's profile (one ``engines/<name>.yaml`` or a user's file)."""

    description: str = ""
    """What engine, version and settings the profile describes."""
    measured_on: str = ""
    """The GPU(s), date and command of the measurements it was fitted to."""
    based_on: str | None = None
    """Another profile (name or file) whose fields this one starts from."""
    factors: EngineFactors | None = None
    """Relative efficiencies and GPU-side overheads (required unless ``based_on`` gives them)."""
    cpu_step: CpuStep | None = None
    """CPU time per scheduler step (unset: the based-on profile's, else none)."""
    per_gpu: dict[str, dict[str, Any]] = {}
    """Exact absolute factors (``Calibration`` fields) for GPUs the profile was measured on."""
    residuals: dict[str, Any] = {}
    """What the fit left: relative errors per metric (iteration time, or TTFT/TPOT/ITL/E2E statistics)."""
    fitted_from: dict[str, Any] = {}
    """How the profile was fitted (files, command, errors before and after)."""
    _catalogue_per_gpu: frozenset[str] = PrivateAttr(default=frozenset())
    """The GPUs whose ``per_gpu`` entries come from built-in profiles alone (fitted on the
    catalogue's part of that name, not on a user's definition)."""


def _profile_path(engine: str, base_dir: Path | None) -> Path:
    builtin = ENGINES_DIR / f"{engine}.yaml"
    if "/" not in engine and "\\" not in engine and not engine.endswith((".yaml", ".yml")):
        try:
            found = path_kind(builtin) is not None
        except ConfigError:  # a name too long to be a file name: not a built-in one
            found = False
        if found:
            return builtin
        names = sorted(p.stem for p in ENGINES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown engine {engine!r}: built-in engines are {', '.join(names)}, or give a profile file (path ending in .yaml)")
    path = Path(engine)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


_REQUIRED_FACTORS = {name: 1.0 for name, f in EngineFactors.model_fields.items() if f.is_required()}
"""Placeholders for the factors a complete ``factors:`` block must give, to check a partial one."""


@lru_cache(maxsize=1)
def _builtin_dir() -> Path:
    """The built-in profiles' directory, resolved (as ``load_engine`` resolves the paths it loads)."""
    return resolved(ENGINES_DIR)


@lru_cache(maxsize=64)
def _load_file(path: str) -> tuple[EngineProfile, dict | None]:
    """The profile in ``path``, and for a ``based_on`` profile the factors its ``factors:`` block
    gives (they replace only those of the profile it is based on; None when it has no block)."""
    try:
        text = decode_text(Path(path).read_bytes(), path)
        # A shipped profile is trusted input: parsed by libyaml (when installed); a user's file
        # through the bounded loader, whose errors name the line.
        data = yaml.load(text, Loader=FAST_SAFE_LOADER) if Path(path).is_relative_to(_builtin_dir()) else parse_yaml(text, path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the engine profile: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an engine profile is a mapping (description, factors, cpu_step, per_gpu, based_on)")
    partial = None
    if data.get("based_on") is not None and isinstance(data.get("factors"), dict):
        data = dict(data)
        partial = data.pop("factors")
    try:
        if partial is not None:
            EngineFactors.model_validate({**_REQUIRED_FACTORS, **partial})
        return EngineProfile.model_validate(data), partial
    except ValidationError as e:
        err = e.errors()[0]
        where = ("factors", *err["loc"]) if partial is not None and e.title == "EngineFactors" else err["loc"]
        loc = ".".join(str(x) for x in where)
        raise ConfigError(f"{path}: {loc}: {err['msg']}") from None


def load_engine(engine: str, base_dir: Path | None = None) -> EngineProfile:
    """The profile ``engine`` names (a built-in name or a file), with ``based_on`` chains merged:
    a field set here replaces the based-on profile's; ``factors`` and ``per_gpu`` entries merge
    factor by factor."""
    seen: list[str] = []
    chain: list[tuple[EngineProfile, dict | None]] = []
    name, where = engine, base_dir
    while name is not None:
        try:
            path = _profile_path(name, where)
        except ConfigError as e:
            if not seen:
                raise
            raise ConfigError(f"{seen[-1]}: based_on: {e}") from None
        key = str(resolved(path, "engine profile")) if path_kind(path, "engine profile") is not None else str(path)
        if key in seen:
            raise ConfigError(f"{engine}: based_on forms a cycle ({' -> '.join(seen + [key])})")
        seen.append(key)
        prof, partial = _load_file(key)
        chain.append((prof, partial))
        name, where = prof.based_on, path.parent
    builtin_dir = _builtin_dir()
    users = [prof for (prof, _), key in zip(chain, seen) if not Path(key).is_relative_to(builtin_dir)]
    merged = chain[-1][0]
    for prof, partial in reversed(chain[:-1]):
        per_gpu = {g: dict(v) for g, v in merged.per_gpu.items()}
        for g, v in prof.per_gpu.items():
            per_gpu.setdefault(g, {}).update(v)
        factors = prof.factors or merged.factors
        if partial is not None:
            if merged.factors is None:
                raise ConfigError(f"{engine}: factors: the profile it is based on has no factors to complete these; give every required one ({', '.join(_REQUIRED_FACTORS)})")
            factors = EngineFactors.model_validate({**merged.factors.model_dump(), **partial})
        merged = EngineProfile(
            description=prof.description or merged.description, measured_on=prof.measured_on or merged.measured_on,
            factors=factors, cpu_step=prof.cpu_step or merged.cpu_step, per_gpu=per_gpu,
            residuals=prof.residuals or merged.residuals, fitted_from=prof.fitted_from or merged.fitted_from)
    if merged.factors is None:
        raise ConfigError(f"{engine}: the profile has no factors (give factors: or based_on: a profile that has them)")
    merged = merged.model_copy()  # a one-file chain's profile is the cached object
    merged._catalogue_per_gpu = frozenset(g for g in merged.per_gpu if not any(g in p.per_gpu for p in users))
    return merged


def resolve_calibration(gpu_name: str, gpu: GpuSpec, engine: str = DEFAULT_ENGINE, override: CalibrationOverride | None = None,
                        base_dir: Path | None = None) -> Calibration:
    """The absolute cost-model factors of ``engine`` running on ``gpu``.

    Order, each step overriding the last: the hardware's fractions (its ``hardware:`` block or the
    architecture prior) times the profile's relative factors, plus the profile's overheads and CPU
    step; the profile's exact ``per_gpu`` factors for this GPU; the pool's ``calibration:`` override.
    A GPU entry with a (legacy) ``calibration:`` block keeps exactly those factors, whatever the engine.
    """
    return profile_calibration(gpu_name, gpu, load_engine(engine, base_dir), override, engine)


def profile_calibration(gpu_name: str, gpu: GpuSpec, prof: EngineProfile, override: CalibrationOverride | None = None,
                        label: str = "profile") -> Calibration:
    """``resolve_calibration`` for a profile already loaded (``label`` names it in errors)."""
    from fleetwise.catalog import Calibration
    from fleetwise.catalog.hardware import hardware_fractions

    if gpu.calibration is not None:
        return gpu.calibration if override is None else override.apply(gpu.calibration)
    f, cpu = prof.factors, prof.cpu_step or CpuStep()
    hw = hardware_fractions(gpu)
    hw_gemm, hw_mem, hw_coll = hw.gemm_compute, hw.memory, hw.collective
    frac = lambda hw, rel: round(min(1.0, max(0.01, hw * rel)), 6)  # noqa: E731
    values: dict[str, Any] = {
        "gemm_compute": frac(hw_gemm, f.gemm_compute), "memory": frac(hw_mem, f.memory), "collective": frac(hw_coll, f.collective),
        "attention_compute": frac(hw_gemm, f.attention_compute), "attention_memory": frac(hw_mem, f.attention_memory),
        "elementwise_memory": frac(hw_mem, f.elementwise_memory),
        "moe_dispatch_memory": None if f.moe_dispatch_memory is None else frac(hw_mem, f.moe_dispatch_memory),
        "expert_compute": None if f.expert_compute is None else frac(hw_gemm, f.expert_compute),
        # The engine's GEMM factor applies to FP8 GEMMs too, over the hardware's FP8 fraction.
        "fp8_gemm_compute": None if hw.fp8_gemm_compute is None else frac(hw.fp8_gemm_compute, f.gemm_compute),
        "expert_memory": None if f.expert_memory is None else frac(hw_mem, f.expert_memory),
        "attention_memory_split": None if f.attention_memory_split is None else frac(hw_mem, f.attention_memory_split),
        "layer_overhead": f.layer_overhead, "attention_cta": f.attention_cta, "gemm_ridge_exponent": f.gemm_ridge_exponent,
        "prefill_pad_tokens": f.prefill_pad_tokens, "mixed_query_tile": f.mixed_query_tile,
        "decode_query_rows": f.decode_query_rows, "verify_query_tile": f.verify_query_tile, "moe_layer_overhead": f.moe_layer_overhead,
        "expert_pad_rows": f.expert_pad_rows, "expert_ridge_exponent": f.expert_ridge_exponent,
        "iteration_overhead": cpu.base, "seq_overhead": cpu.per_seq or None, "token_overhead": cpu.per_token or None,
        "cpu_overlap": cpu.overlap or None, "ngram_lookup": cpu.ngram_lookup,
    }
    if gpu_name not in prof._catalogue_per_gpu or _measured_gpu(gpu_name, gpu):
        values.update(prof.per_gpu.get(gpu_name, {}))
    try:
        cal = Calibration.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"engine {label} on {gpu_name}: per_gpu.{gpu_name}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return cal if override is None else override.apply(cal)


_PERFORMANCE_FIELDS = ("architecture", "memory_type", "peak_flops", "fp8_peak_flops", "memory_bandwidth", "link_bandwidth", "sm_count", "hardware")
"""The ``GpuSpec`` fields a profile's exact ``per_gpu`` factors were measured against."""


def _measured_gpu(gpu_name: str, gpu: GpuSpec) -> bool:
    """Whether a built-in profile's ``per_gpu`` entry for ``gpu_name`` describes ``gpu``: always,
    unless a scenario (or specs file) redefines a catalogue GPU of that name with other performance
    figures. Then the exact factors measured on the catalogue's part would silently override the
    user's own ``hardware:`` block and peaks, so the profile's relative factors apply to the user's
    GPU instead. (A user's profile's entries always apply: they were fitted on the user's GPU, e.g.
    by ``fleetwise calibrate --requests``.)"""
    from fleetwise.catalog import builtin_gpus

    builtin = builtin_gpus().get(gpu_name)
    return builtin is None or all(getattr(builtin, f) == getattr(gpu, f) for f in _PERFORMANCE_FIELDS)


def engine_residual(engine: str, base_dir: Path | None = None) -> dict[str, Any]:
    """The residuals the profile's fit left (empty when it records none)."""
    return load_engine(engine, base_dir).residuals
