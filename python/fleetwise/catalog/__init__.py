"""The hardware and model catalogue: built-in GPUs and models, plus user-defined ones.

The built-in entries live in ``gpus.yaml`` and ``models.yaml`` beside this file; a scenario may add
its own under top-level ``gpus:`` and ``models:`` keys with the same fields.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import AfterValidator, Field, ValidationInfo, create_model, model_validator

from fleetwise.catalog.hardware import ARCHITECTURES, MEMORY_TYPES, Architecture, HardwareFractions, MemoryType, architecture_priors, prior_for, prior_key
from fleetwise.catalog.ngram_lookup import NgramLookup
from fleetwise.config.base import StrictModel
from fleetwise.config.limits import MAX_COUNT, MAX_TOKENS
from fleetwise.config.yaml_input import FAST_SAFE_LOADER

_HERE = Path(__file__).parent


MIN_PEAK_FLOPS = 1e9
"""The slowest compute peak accepted, FLOP/s (the core's ``hardware::MIN_PEAK_FLOPS`` for a GPU)."""
MIN_BANDWIDTH = 1e6
"""The slowest bandwidth accepted, bytes/s (the core's ``hardware::MIN_BANDWIDTH`` for a GPU): a
slower PIM or drive would make one iteration last days, refused by the core as an absurdly slow
*calibration* instead of by its own field."""
MAX_LATENCY = 1.0
"""The longest latency accepted, seconds (the core's ``hardware::MAX_LATENCY`` for a GPU's links)."""
MAX_PEAK_FLOPS = 1e18
"""The fastest compute peak accepted, FLOP/s (the core's ``hardware::MAX_PEAK_FLOPS``): 200x a
B200's dense FP8; a larger figure makes every operator free."""
MAX_BANDWIDTH = 1e16
"""The fastest memory or link bandwidth accepted, bytes/s (the core's ``hardware::MAX_BANDWIDTH``):
over 1,000x an HBM3e stack's."""
MAX_DRIVE_BANDWIDTH = 1e13
"""The fastest flash drive accepted, bytes/s (the core's ``offload::MAX_DRIVE_BANDWIDTH``): 10 TB/s,
hundreds of times a PCIe 5.0 NVMe drive."""


def _at_most(limit: float, unit: str) -> AfterValidator:
    """A field check: a figure over ``limit`` (in ``unit``) is refused, naming both."""

    def check(value: float) -> float:
        if value > limit:
            raise ValueError(f"must be at most {limit:g} {unit}, got {value:g}: no hardware is that fast, and the cost model would price the work as free")
        return value

    return AfterValidator(check)


_Flops = Annotated[float, _at_most(MAX_PEAK_FLOPS, "FLOP/s")]
"""A compute peak, at most ``MAX_PEAK_FLOPS``."""
_Bandwidth = Annotated[float, _at_most(MAX_BANDWIDTH, "bytes/s")]
"""A memory or link bandwidth, at most ``MAX_BANDWIDTH``."""
_Fraction = Annotated[float, Field(gt=0, le=1)]
"""A calibration efficiency: a fraction of a peak, in (0, 1]."""
_Seconds = Annotated[float, Field(ge=0)]
"""A calibration overhead, seconds (at least 0)."""
_CtaFraction = Annotated[float, Field(gt=0, le=4)]
"""``attention_cta``'s range, (0, 4]."""
_RidgeExponent = Annotated[float, Field(ge=1, le=64)]
"""``gemm_ridge_exponent``'s range, 1 to 64 (64 is the roofline's max to within 1%)."""
_PadTokens = Annotated[int, Field(ge=1, le=65536)]
"""``prefill_pad_tokens``' range, 1 to 65,536 tokens (a prefill batch's size)."""
_QueryRows = Annotated[int, Field(ge=1, le=1024)]
"""Query rows an attention kernel charges per decode (its tile), 1 to 1,024 (kernels use 1-128)."""
# The ranges of the calibration factors (CalibrationOverride takes them from Calibration).


class Calibration(StrictModel):
    """Efficiency factors of the roofline cost model for one GPU (see docs/cost-model.md)."""

    gemm_compute: _Fraction
    """Fraction of peak FLOP/s reached by dense GEMMs."""
    attention_compute: _Fraction
    """Fraction of peak FLOP/s reached by attention kernels."""
    memory: _Fraction
    """Fraction of peak HBM bandwidth reached by streaming kernels."""
    attention_memory: _Fraction | None = None
    """Fraction of peak HBM bandwidth reached by attention reading the KV cache (default: memory)."""
    elementwise_memory: _Fraction | None = None
    """Fraction of peak HBM bandwidth reached by norms, RoPE, residuals, activations (default: memory)."""
    moe_dispatch_memory: _Fraction | None = None
    """Fraction of peak HBM bandwidth reached by a MoE layer's dispatch and combine of its token-expert
    pairs (default: elementwise_memory)."""
    collective: _Fraction
    """Fraction of link bandwidth reached by collectives."""
    iteration_overhead: _Seconds
    """Fixed cost of one iteration, seconds."""
    layer_overhead: _Seconds = 0.0
    """Fixed cost per decoder layer per iteration, seconds."""
    attention_cta: _CtaFraction | None = None
    """Fraction of one SM's share of HBM bandwidth that one decode-attention thread block reaches:
    bounds a large decode batch by its longest sequence (unset: no bound; needs the GPU's sm_count)."""
    gemm_ridge_exponent: _RidgeExponent | None = None
    """Exponent p of the GEMMs' blend of compute and memory time, (c^p + m^p)^(1/p): GEMMs near the
    roofline's ridge reach neither peak (unset: the roofline's max(c, m))."""
    prefill_pad_tokens: _PadTokens | None = None
    """The engine pads an iteration's prefill tokens to a multiple of this for the GEMMs, norms and
    activations (CUDA graphs at those sizes); attention runs on the real prompts (unset: no padding)."""
    seq_overhead: _Seconds | None = None
    """The engine's CPU time per scheduled sequence per step, seconds (unset: 0)."""
    token_overhead: _Seconds | None = None
    """The engine's CPU time per batched token per step, seconds (unset: 0)."""
    mixed_query_tile: _QueryRows | None = None
    """Query rows the attention kernel computes per decode in an iteration with prefill tokens
    (a variable-length kernel's query tile; unset: one row)."""
    decode_query_rows: _QueryRows | None = None
    """Query rows the attention kernel computes per decode in a decode-only iteration (unset: one row)."""
    verify_query_tile: _QueryRows | None = None
    """Query rows the attention kernel computes per (sequence, query head) of a speculative verify
    chunk, over all the sequence's keys in one thread block (FlashAttention-2's variable-length
    prefill path; unset: the chunk's own rows, as a prefill chunk)."""
    moe_layer_overhead: _Seconds | None = None
    """Fixed cost per MoE layer per iteration (routing, token sort, grouped-GEMM launches), seconds."""
    time_scale: Annotated[float, Field(ge=0.1, le=10)] | None = None
    """Multiplies every operator's time (the error-bar runs use 1 - r and 1 + r; unset: 1)."""
    cpu_overlap: bool | None = None
    """The CPU step overlaps the GPU's work (asynchronous scheduling): only its excess adds time."""
    ngram_lookup: NgramLookup | None = None
    """The engine's CPU n-gram lookup per step (speculative method ``ngram``; unset: free)."""
    attention_memory_split: _Fraction | None = None
    """Fraction of peak memory bandwidth decode attention reaches while the batch leaves room to
    split each sequence's keys (FlashAttention's split-KV; unset: attention_memory)."""
    expert_compute: _Fraction | None = None
    """Fraction of peak FLOP/s reached by the routed experts' grouped GEMMs (default: gemm_compute)."""
    fp8_gemm_compute: _Fraction | None = None
    """Fraction of the FP8 tensor peak reached by GEMMs with FP8 inputs, W8A8 (default: gemm_compute)."""
    expert_memory: _Fraction | None = None
    """Fraction of peak memory bandwidth reached by the routed experts' grouped GEMMs (default: memory)."""
    expert_pad_rows: Annotated[float, Field(ge=0, le=4096)] | None = None
    """Rows of padding the experts' grouped GEMM computes per touched expert (row tiles): m rows per
    expert reach m / (m + pad) of expert_compute (unset: 0)."""
    expert_ridge_exponent: _RidgeExponent | None = None
    """The experts' blend exponent near the roofline's ridge (unset: gemm_ridge_exponent)."""


def _all_optional(model: type[StrictModel], name: str) -> type[StrictModel]:
    """A model with every field of ``model`` (same range and description) optional, default None."""
    fields = {}
    for field, info in model.model_fields.items():
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[field] = (Optional[annotation], Field(default=None, description=info.description))
    return create_model(name, __base__=StrictModel, **fields)


class CalibrationOverride(_all_optional(Calibration, "CalibrationFields")):
    """Changes to some of a GPU's calibration factors (unset fields keep the GPU's values): every
    ``Calibration`` field, optional, with the same range."""

    def apply(self, base: Calibration) -> Calibration:
        """Returns ``base`` with the fields set here replaced."""
        # Validated again, so that a nested field given here (``ngram_lookup``) is a model, not a dict.
        return type(base).model_validate({**base.model_dump(), **self.model_dump(exclude_none=True)})


class GpuSpec(StrictModel):
    """An accelerator: its datasheet (dense 16-bit peak, memory, links, power), its architecture and
    memory type, and optionally what its hardware was measured to reach (``hardware``) or a legacy
    ``calibration``.

    A GPU defined from its datasheet alone gives ``architecture`` and ``memory_type``; its hardware
    fractions then default from the family's prior (``fleetwise.catalog.hardware``).
    """

    description: str = ""
    """Human-readable name."""
    architecture: Architecture | None = None
    """Architecture family: ampere, ada, hopper, blackwell or cdna3 (required in the catalogue, and for
    a GPU without ``hardware`` or ``calibration``)."""
    memory_type: MemoryType | None = None
    """Device memory technology: hbm or gddr (required with ``architecture``)."""
    peak_flops: _Flops = Field(gt=0)
    """Peak dense 16-bit tensor throughput, FLOP/s (at most 1e18)."""
    fp8_peak_flops: _Flops = Field(default=0.0, ge=0)
    """Peak dense FP8 tensor throughput (FP32 accumulate, no sparsity), FLOP/s, at most 1e18; 0: no
    FP8 tensor cores (then ``quantization.activations: fp8`` is refused)."""
    memory_bytes: float = Field(gt=0, le=1e18)
    """Device memory capacity, bytes (at most 1e18)."""
    memory_bandwidth: _Bandwidth = Field(gt=0)
    """Device memory bandwidth, bytes/s (at most 1e16)."""
    link: str = "nvlink"
    """Kind of GPU-to-GPU link used by tensor parallelism."""
    link_bandwidth: _Bandwidth = Field(gt=0)
    """Per-direction bandwidth of that link, bytes/s (at most 1e16)."""
    link_latency: float = Field(default=2e-6, ge=0)
    """Latency of one collective step on that link, seconds."""
    nic_bandwidth: _Bandwidth = Field(default=0.0, ge=0)
    """Per-direction bandwidth of the GPU's NIC to other nodes (InfiniBand/RoCE), bytes/s (at most 1e16); 0: no NIC (KV
    transfers over ``kv_link: nic`` then stay inside the node, at the faster of the host link and NVLink)."""
    nic_latency: float = Field(default=5e-6, ge=0)
    """Latency of one step over the NIC, seconds."""
    host_link_bandwidth: _Bandwidth = Field(default=0.0, ge=0)
    """Per-direction bandwidth to host memory (PCIe), bytes/s (at most 1e16); needed for KV swapping."""
    host_link_latency: float = Field(default=5e-6, ge=0)
    """Latency of a transfer over the host link, seconds."""
    tdp_watts: float = Field(default=0.0, ge=0, le=1e5)
    """Rated board power, watts (0: power and energy are not modelled)."""
    idle_watts: float = Field(default=0.0, ge=0, le=1e5)
    """Power drawn while idle, watts; needs ``tdp_watts`` and must be below it."""
    memory_bound_activity: float = Field(default=0.3, ge=0, le=1)
    """Share of the dynamic power (TDP - idle) drawn by memory-bound kernels."""
    dvfs_exponent: float = Field(default=1.6, ge=1, le=3)
    """How steeply SM power falls with the SM clock a power cap forces (``~ f^dvfs_exponent``): 3
    when voltage scales with the clock, 1 at the voltage floor; 1.6 reproduces Splitwise's
    power-capped H100 (docs/power-and-cost.md)."""
    sm_count: int = Field(default=0, ge=0, le=MAX_COUNT)
    """Streaming multiprocessors (compute units), 0 if unknown; bounds decode attention's tail."""
    price_per_hour: float = Field(default=0.0, ge=0, le=1e6)
    """Price of one GPU per hour, USD (for cost per token)."""
    hardware: HardwareFractions | None = None
    """Fractions of its peaks the hardware reaches, where measured (unset: the architecture prior)."""
    calibration: Calibration | None = None
    """Legacy absolute cost-model efficiency factors (hardware and engine together), where fitted."""

    @model_validator(mode="after")
    def _check_efficiency_source(self) -> GpuSpec:
        if (self.architecture is None) != (self.memory_type is None):
            raise ValueError(
                "architecture and memory_type go together: give both (architecture one of "
                f"{', '.join(ARCHITECTURES)}; memory_type one of {', '.join(MEMORY_TYPES)})"
            )
        if self.architecture is None and self.hardware is None and self.calibration is None:
            raise ValueError(
                "a GPU needs architecture (one of " + ", ".join(ARCHITECTURES) + ") and memory_type (one of "
                + ", ".join(MEMORY_TYPES) + ") so that its hardware efficiencies default from the family's prior, "
                "or an explicit hardware: {gemm_compute, memory, collective} block, or a calibration: block"
            )
        if self.architecture is not None and self.hardware is None and prior_for(self.architecture, self.memory_type) is None:
            raise ValueError(
                f"no architecture prior for {prior_key(self.architecture, self.memory_type)} "
                f"(priors: {', '.join(sorted(architecture_priors()))}); give a hardware: {{gemm_compute, memory, collective}} block"
            )
        return self

    def core_json(self, name: str) -> dict:
        """The GPU as the Rust core reads it."""
        return {
            "name": name,
            "peak_flops": self.peak_flops,
            "fp8_peak_flops": self.fp8_peak_flops,
            "memory_bytes": int(self.memory_bytes),
            "memory_bandwidth": self.memory_bandwidth,
            "link_bandwidth": self.link_bandwidth,
            "link_latency": self.link_latency,
            "nic_bandwidth": self.nic_bandwidth,
            "nic_latency": self.nic_latency,
            "host_link_bandwidth": self.host_link_bandwidth,
            "host_link_latency": self.host_link_latency,
            "tdp_watts": self.tdp_watts,
            "idle_watts": self.idle_watts,
            "memory_bound_activity": self.memory_bound_activity,
            "dvfs_exponent": self.dvfs_exponent,
            "sm_count": self.sm_count,
        }


class MlaSpec(StrictModel):
    """Multi-head latent attention (DeepSeek-V2/V3): the KV cache holds one latent per token."""

    q_lora_rank: int | None = Field(default=None, ge=1, le=100_000)
    """Rank of the query compression (``None``: a plain ``q_proj``)."""
    kv_lora_rank: int = Field(ge=1, le=100_000)
    """Width of the compressed key/value latent."""
    qk_nope_head_dim: int = Field(ge=0, le=100_000)
    """Per-head query/key size without rotary embedding."""
    qk_rope_head_dim: int = Field(ge=0, le=100_000)
    """Per-head query/key size with rotary embedding (the rotary key is shared by all heads)."""
    v_head_dim: int = Field(ge=1, le=100_000)
    """Per-head value size."""


class ModelSpec(StrictModel):
    """A decoder-only model's shape, as in its Hugging Face ``config.json``; or ``hf_config:`` the
    path of that file (relative to the scenario's folder), read by ``catalog/hf_config.py``, with
    any field given beside it overriding the file's."""

    hf_id: str = ""
    """Hugging Face repository id, for reference."""
    hf_config: str | None = None
    """The ``config.json`` the shape was read from (resolved to an absolute path), if any."""
    num_layers: int = Field(ge=1, le=10_000)
    """Decoder layers (``num_hidden_layers``)."""
    hidden_size: int = Field(ge=1, le=1_000_000)
    """Model width."""
    num_heads: int = Field(ge=1, le=100_000)
    """Query heads (``num_attention_heads``)."""
    num_kv_heads: int = Field(ge=1, le=100_000)
    """Key/value heads (``num_key_value_heads``); must divide ``num_heads`` (grouped-query
    attention shares each key/value head among equally many query heads)."""
    head_dim: int = Field(ge=1, le=100_000)
    """Size of one attention head."""
    intermediate_size: int = Field(ge=1, le=10_000_000)
    """MLP intermediate size."""
    vocab_size: int = Field(ge=1, le=100_000_000)
    """Vocabulary size."""
    max_position_embeddings: int = Field(ge=1, le=MAX_TOKENS)
    """Longest supported context, tokens."""
    tie_word_embeddings: bool = False
    """Whether the LM head shares the embedding matrix."""
    dtype_bytes: Literal[1, 2, 4, 8] = 2
    """Bytes per weight/activation element: 1 (8-bit), 2 (16-bit), 4 (32-bit) or 8 (64-bit); no
    number format has 3, 5, 6 or 7 (weight-only INT4 is ``quantization``, not a dtype)."""
    num_experts: int = Field(default=0, ge=0, le=65_535)
    """Routed experts per MoE layer (0: dense)."""
    experts_per_token: int = Field(default=0, ge=0, le=65_535)
    """Experts each token is routed to (top-k), at most ``num_experts``."""
    moe_intermediate_size: int = Field(default=0, ge=0, le=10_000_000)
    """Intermediate size of one routed expert."""
    num_shared_experts: int = Field(default=0, ge=0, le=65_535)
    """Shared experts every token passes through."""
    shared_expert_intermediate_size: int = Field(default=0, ge=0, le=10_000_000)
    """Intermediate size of one shared expert."""
    first_dense_layers: int = Field(default=0, ge=0, le=10_000)
    """Leading layers of a MoE model with a dense MLP of ``intermediate_size`` (``first_k_dense_replace``)."""
    mla: MlaSpec | None = None
    """Multi-head latent attention, replacing GQA (``num_kv_heads`` and ``head_dim`` are then unused)."""
    mlp: Literal["gated", "plain"] = "gated"
    """Feed-forward blocks (dense MLPs and experts alike): ``gated`` (gate and up projections,
    SiLU-and-multiply, down: Llama, Mistral, Qwen) or ``plain`` (up, GELU/ReLU, down: OPT, BLOOM,
    Falcon, GPT-2)."""
    parallel_attention: bool = False
    """Attention and the MLP read the same normed input and share one residual add (Falcon, GPT-J,
    GPT-NeoX): fewer elementwise passes, one tensor-parallel all-reduce per layer."""
    sliding_window: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Sliding-window attention: each token attends to at most this many tokens, itself included
    (Mistral-7B v0.1: 4096). Bounds attention's FLOPs and KV reads; the KV cache still holds the
    whole context (docs/cost-model.md)."""
    moe_layer_interval: int = Field(default=1, ge=1, le=10_000)
    """Past ``first_dense_layers``, every n-th layer has experts and the others the dense MLP
    (Switch/GLaM: 2; Qwen-MoE's ``decoder_sparse_step``); 1: every layer."""
    mtp_layers: int = Field(default=0, ge=0, le=64)
    """Multi-token-prediction modules the checkpoint ships (DeepSeek-V3's and MiMo's
    ``num_nextn_predict_layers``, Qwen3-Next's ``mtp_num_hidden_layers``): what speculative
    decoding's ``method: mtp`` runs; 0: none (``mtp`` is then refused)."""

    @model_validator(mode="before")
    @classmethod
    def _read_hf_config(cls, data, info: ValidationInfo):
        """Replaces ``hf_config: path`` by the fields read from that file (fields given beside it win)."""
        if not isinstance(data, dict) or data.get("hf_config") is None:
            return data
        from fleetwise.catalog.hf_config import hf_model_fields

        path = data["hf_config"]
        if not isinstance(path, str) or not path:
            raise ValueError(f"hf_config must be the path of a config.json, got {path!r}")
        base = (info.context or {}).get("base_dir") if info is not None else None
        read = hf_model_fields(path, base, dtype_given="dtype_bytes" in data)
        given = {k: v for k, v in data.items() if k != "hf_config"}
        return {**read, **given}

    @property
    def moe_layers(self) -> int:
        """Layers with experts (0 for a dense model), as the core counts them."""
        if not self.num_experts:
            return 0
        return max(self.num_layers - self.first_dense_layers, 0) // self.moe_layer_interval

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSpec:
        if self.mla is None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads}): "
                "each key/value head serves equally many query heads"
            )
        if self.experts_per_token > self.num_experts:
            raise ValueError(
                f"experts_per_token ({self.experts_per_token}) must be <= num_experts ({self.num_experts})"
            )
        if self.num_experts and not (self.experts_per_token and self.moe_intermediate_size):
            raise ValueError(
                f"a MoE model (num_experts {self.num_experts}) needs experts_per_token >= 1 and moe_intermediate_size >= 1 "
                f"(got {self.experts_per_token} and {self.moe_intermediate_size}); num_experts: 0 for a dense model"
            )
        if self.first_dense_layers > self.num_layers:
            raise ValueError(
                f"first_dense_layers ({self.first_dense_layers}) must be <= num_layers ({self.num_layers})"
            )
        if self.num_experts and not self.moe_layers:
            raise ValueError(
                f"a MoE model (num_experts {self.num_experts}) needs at least one layer with experts, but first_dense_layers "
                f"({self.first_dense_layers}) and moe_layer_interval ({self.moe_layer_interval}) leave none of its {self.num_layers} "
                "layers (every n-th layer past first_dense_layers has experts); num_experts: 0 for a dense model"
            )
        return self

    def core_json(self, name: str) -> dict:
        """The model as the Rust core reads it: every field but ``hf_id`` and ``hf_config``, named ``name``."""
        d = self.model_dump(exclude={"hf_id", "hf_config"})
        d["name"] = name
        return d


class PimSpec(StrictModel):
    """A processing-in-memory device attached to each GPU's memory."""

    description: str = ""
    """Human-readable name."""
    peak_flops: _Flops = Field(ge=MIN_PEAK_FLOPS)
    """Peak throughput of the PIM units of one GPU's memory, FLOP/s (1e9 to 1e18, as a GPU's)."""
    internal_bandwidth: _Bandwidth = Field(ge=MIN_BANDWIDTH)
    """Bandwidth the PIM units see inside the memory, bytes/s (1e6 to 1e16, as a GPU's)."""
    efficiency: float = Field(default=0.8, ge=0.01, le=1)
    """Fraction of peak compute and bandwidth reached, in [0.01, 1] (as a GPU's hardware fractions)."""

    def core_json(self, name: str) -> dict:
        """The PIM as the Rust core reads it."""
        return {"name": name, "peak_flops": self.peak_flops, "internal_bandwidth": self.internal_bandwidth, "efficiency": self.efficiency}


class StorageSpec(StrictModel):
    """A flash drive's read performance."""

    description: str = ""
    """Human-readable name."""
    read_bandwidth: Annotated[float, _at_most(MAX_DRIVE_BANDWIDTH, "bytes/s")] = Field(ge=MIN_BANDWIDTH)
    """Sequential read bandwidth, bytes/s: at least 1e6 (the slowest bandwidth a GPU's links may
    have), at most 1e13."""
    latency: float = Field(default=80e-6, ge=0, le=MAX_LATENCY)
    """Latency of one read, seconds (0 to 1, as a GPU's link latencies)."""
    iops: float | None = Field(default=None, ge=1)
    """Random-read operations per second, if known (at least 1)."""

    def core_json(self, name: str) -> dict:
        """The drive as the Rust core reads it."""
        return {"name": name, "read_bandwidth": self.read_bandwidth, "latency": self.latency, "iops": self.iops}


def _load(file: str, cls):
    """The entries of catalogue ``file`` validated as ``cls``; a ConfigError names the file, the
    entry and the field of a bad one (a catalogue edited by hand, or a broken install)."""
    from pydantic import ValidationError

    from fleetwise.errors import ConfigError

    raw = yaml.load((_HERE / file).read_text(), Loader=FAST_SAFE_LOADER)
    out = {}
    for name, spec in raw.items():
        try:
            out[name] = cls.model_validate(spec)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in (name, *err["loc"]))
            raise ConfigError(f"{_HERE / file}: {loc}: {err['msg']}") from None
    return out


@lru_cache(maxsize=1)
def builtin_gpus() -> dict[str, GpuSpec]:
    """The built-in GPUs by name; every one names its architecture and memory type."""
    from fleetwise.errors import ConfigError

    gpus = _load("gpus.yaml", GpuSpec)
    for name, gpu in gpus.items():
        if gpu.architecture is None:
            raise ConfigError(
                f"{_HERE / 'gpus.yaml'}: {name}.architecture: a catalogue GPU needs architecture (one of "
                f"{', '.join(ARCHITECTURES)}) and memory_type (one of {', '.join(MEMORY_TYPES)})"
            )
    return gpus


@lru_cache(maxsize=1)
def builtin_models() -> dict[str, ModelSpec]:
    """The built-in models by name."""
    return _load("models.yaml", ModelSpec)


@lru_cache(maxsize=1)
def builtin_pims() -> dict[str, PimSpec]:
    """The built-in PIM devices by name."""
    return _load("pims.yaml", PimSpec)


@lru_cache(maxsize=1)
def builtin_storage() -> dict[str, StorageSpec]:
    """The built-in flash drives by name."""
    return _load("storage.yaml", StorageSpec)


_BUILTINS = {"gpu": builtin_gpus, "model": builtin_models, "pim": builtin_pims, "storage": builtin_storage}


def lookup(kind: str, name: str, extra: dict, path: str):
    """Finds the GPU, model or PIM ``name`` among the user-defined ``extra`` and the built-ins.

    Raises ``ConfigError`` naming ``path`` and the known names when it is unknown.
    """
    from fleetwise.errors import ConfigError

    table = {**_BUILTINS[kind](), **extra}
    if name not in table:
        known = ", ".join(sorted(table))
        raise ConfigError(f"{path}: unknown {kind} {name!r}; known: {known}")
    return table[name]
