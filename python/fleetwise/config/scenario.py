"""The scenario: cluster, workload, SLOs and seed, as one validated object."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator

from fleetwise.catalog import CalibrationOverride, GpuSpec, ModelSpec, PimSpec, StorageSpec, lookup
from fleetwise.config.base import PolicyRef, StrictModel
from fleetwise.config.experts import ExpertsConfig
from fleetwise.config.limits import MAX_COUNT, MAX_NAME_LENGTH, MAX_SEED, MAX_TOKENS
from fleetwise.config.mixed_pool import MixedPoolConfig
from fleetwise.config.quantization import QuantizationConfig
from fleetwise.config.speculative import SpeculativeConfig
from fleetwise.config.split_pools import check_split_pools
from fleetwise.workload.config import WorkloadConfig


def vllm_default_batched_tokens(context_tokens: int) -> int:
    """vLLM's default ``max_num_batched_tokens`` without chunked prefill: the model's context, at
    least 2048 (the one place this default lives)."""
    return max(context_tokens, 2048)


class _SchedulerAsIs(StrictModel):
    """A scheduler config the core reads exactly as it is written."""

    def core_json(self, model: ModelSpec) -> dict:
        """The core's view of this scheduler (its ``SchedulerConfig``): this config as it is."""
        return self.model_dump()


class VllmScheduler(StrictModel):
    """vLLM-style continuous batching: prefill first, decodes otherwise, recompute preemption."""

    kind: Literal["vllm"] = "vllm"
    """Selects this scheduler."""
    max_num_seqs: int = Field(default=256, ge=1, le=MAX_COUNT)
    """Most sequences in one iteration."""
    max_num_batched_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Most tokens in one iteration; default max(model context, 2048), as vLLM without chunked prefill
    (``vllm_default_batched_tokens``)."""
    preemption_mode: Literal["recompute", "swap"] = "recompute"
    """How to free KV when it runs out: drop and recompute, or swap to host memory over PCIe."""
    swap_space_gb: float = Field(default=4.0, ge=0, le=1e6)
    """Host memory for swapped KV per GPU, GiB (vLLM's swap_space)."""

    def batched_tokens(self, context_tokens: int) -> int:
        """``max_num_batched_tokens``, or its default for a model of ``context_tokens``."""
        return self.max_num_batched_tokens or vllm_default_batched_tokens(context_tokens)

    def core_json(self, model: ModelSpec) -> dict:
        """The core's view: this config with the token limit resolved against ``model``."""
        return {**self.model_dump(), "max_num_batched_tokens": self.batched_tokens(model.max_position_embeddings)}


class SarathiServeScheduler(_SchedulerAsIs):
    """Sarathi-Serve stall-free batching: decodes first, then prefill chunks up to a token budget."""

    kind: Literal["sarathi-serve"] = "sarathi-serve"
    """Selects this scheduler."""
    max_num_seqs: int = Field(default=256, ge=1, le=MAX_COUNT)
    """Most sequences in one iteration."""
    token_budget: int = Field(default=512, ge=1, le=MAX_TOKENS)
    """Most tokens (decodes and prefill chunks) in one iteration."""


class SarathiScheduler(_SchedulerAsIs):
    """Sarathi decode-maximal batching: all decodes plus one prefill chunk per iteration."""

    kind: Literal["sarathi"] = "sarathi"
    """Selects this scheduler."""
    max_num_seqs: int = Field(default=256, ge=1, le=MAX_COUNT)
    """Most sequences in one iteration."""
    chunk_size: int = Field(default=512, ge=1, le=MAX_TOKENS)
    """Prefill chunk size, tokens."""


class OrcaScheduler(_SchedulerAsIs):
    """Orca iteration-level batching: whole prompts and decodes in one iteration, KV reserved at admission."""

    kind: Literal["orca"] = "orca"
    """Selects this scheduler."""
    max_num_seqs: int = Field(default=256, ge=1, le=MAX_COUNT)
    """Most sequences in one iteration."""
    reserve: Literal["max-len", "oracle"] = "max-len"
    """KV reserved per request: the model's whole context (as Orca does) or its own prompt + output."""


class BatchLlmScheduler(_SchedulerAsIs):
    """BatchLLM offline batching: global prefix grouping, decode-ratio order, memory-centric admission,
    shared-prefix attention read once per batch (use with ``prefix_caching``)."""

    kind: Literal["batchllm"] = "batchllm"
    """Selects this scheduler."""
    max_num_seqs: int = Field(default=512, ge=1, le=MAX_COUNT)
    """Most sequences in one iteration."""
    token_budget: int = Field(default=2048, ge=1, le=MAX_TOKENS)
    """Most tokens (decodes and prefill chunks) in one iteration."""


class VllmV1Scheduler(_SchedulerAsIs):
    """vLLM v1's scheduler: running requests first (decodes and prompt chunks), then admissions,
    chunked prefill within one token budget, recompute preemption of the newest admission."""

    kind: Literal["vllm-v1"] = "vllm-v1"
    """Selects this scheduler."""
    max_num_seqs: int = Field(default=256, ge=1, le=MAX_COUNT)
    """Most sequences in one iteration."""
    max_num_batched_tokens: int = Field(default=8192, ge=1, le=MAX_TOKENS)
    """Most tokens in one iteration (vLLM v1's default for online serving)."""
    max_prefill_chunk: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Most prompt tokens of one request per iteration (vLLM's long_prefill_token_threshold)."""
    reserve_full_prompt: bool = True
    """Admit a request only when its whole prompt's KV blocks are free (vLLM's scheduler_reserve_full_isl)."""


class PolicyScheduler(StrictModel):
    """A batch scheduler policy object (``fleetwise.policy.BatchScheduler``), by registered name or
    ``module:attr``, run by vLLM v1's scheduling loop within the limits given here."""

    kind: Literal["policy"] = "policy"
    """Selects a policy object."""
    name: str
    """Registered name (``fleetwise.policy.names("scheduler")``) or ``package.module:attr``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the policy's constructor."""
    max_num_seqs: int = Field(default=256, ge=1, le=MAX_COUNT)
    """Most sequences a plan may allow in one iteration."""
    max_num_batched_tokens: int = Field(default=8192, ge=1, le=MAX_TOKENS)
    """Most tokens a plan may allow in one iteration (sizes the activation memory)."""

    def core_json(self, model: ModelSpec) -> dict:
        """The core's view: vLLM v1's loop within these limits (the plan comes from the policy object)."""
        return VllmV1Scheduler(max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens, reserve_full_prompt=True).core_json(model)


SchedulerConfig = Annotated[
    Union[VllmScheduler, VllmV1Scheduler, SarathiServeScheduler, SarathiScheduler, OrcaScheduler, BatchLlmScheduler, PolicyScheduler], Field(discriminator="kind")
]
"""Any batch scheduler, selected by ``kind``."""


class RoundRobinRouter(StrictModel):
    """Sends requests to instances in turn."""

    kind: Literal["round-robin"] = "round-robin"
    """Selects this router."""


class LeastOutstandingTokensRouter(StrictModel):
    """Sends each request to the instance with the fewest outstanding tokens."""

    kind: Literal["least-outstanding-tokens"] = "least-outstanding-tokens"
    """Selects this router."""


class PrefixAffinityRouter(StrictModel):
    """Sends each request to the instance caching the longest prefix of its prompt (then fewest
    outstanding tokens)."""

    kind: Literal["prefix-affinity"] = "prefix-affinity"
    """Selects this router."""


class RandomRouter(StrictModel):
    """Sends each request to a uniformly random instance (seeded)."""

    kind: Literal["random"] = "random"
    """Selects this router."""


class PolicyRouter(StrictModel):
    """A router policy object (``fleetwise.policy.Router``), by registered name or ``module:attr``;
    it sees every instance, prefill and decode ones included, and may choose both of a pair."""

    kind: Literal["policy"] = "policy"
    """Selects a policy object."""
    name: str
    """Registered name (``fleetwise.policy.names("router")``) or ``package.module:attr``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the policy's constructor."""


RouterConfig = Annotated[
    Union[RoundRobinRouter, LeastOutstandingTokensRouter, RandomRouter, PrefixAffinityRouter, PolicyRouter], Field(discriminator="kind")
]
"""Any router, selected by ``kind``."""


class Parallelism(StrictModel):
    """How one instance spreads the model over GPUs."""

    tp: int = Field(default=1, ge=1, le=MAX_COUNT)
    """Tensor-parallel degree."""
    pp: int = Field(default=1, ge=1, le=MAX_COUNT)
    """Pipeline-parallel stages; an instance has tp x pp GPUs."""
    microbatches: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    """Micro-batches per iteration with pipelining (default: pp)."""
    gpus_per_node: int = Field(default=8, ge=1, le=MAX_COUNT)
    """GPUs per node (NVLink domain); an instance of more GPUs spans nodes over their NICs."""
    ep: int = Field(default=1, ge=1, le=MAX_COUNT)
    """Expert parallelism for MoE models: 1 (experts sharded by tp) or tp (whole experts per GPU)."""
    pipeline: Literal["async", "sync"] | None = None
    """How pp > 1 stages run batches: ``async`` keeps up to pp batches in flight (vLLM's virtual
    engines), ``sync`` runs one iteration of ``microbatches`` at a time. Default: async, or sync
    when ``microbatches``, ``offload``, ``experts`` or swap preemption is set
    (docs/pipeline-parallelism.md)."""


class MemorySettings(StrictModel):
    """Memory settings of an instance."""

    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Fraction of each GPU's memory the engine may use (vLLM's setting of the same name)."""
    block_size: int = Field(default=16, ge=1, le=MAX_TOKENS)
    """Tokens per KV-cache block."""


class OffloadConfig(StrictModel):
    """Weights of some layers kept in host DRAM or on flash and streamed in before they run."""

    tier: Literal["dram", "flash"]
    """Where the offloaded weights live."""
    layer_fraction: float = Field(default=1.0, ge=0, le=1)
    """Fraction of the decoder layers whose weights are offloaded."""
    ffn_load_fraction: float = Field(default=1.0, ge=0, le=1)
    """Fraction of an offloaded layer's FFN weights fetched per iteration (predicted-active neurons)."""
    dram_cache_fraction: float = Field(default=0.0, ge=0, le=1)
    """With flash: fraction of the offloaded weights served from a DRAM cache."""
    resident_attention: bool = False
    """Keep the offloaded layers' attention weights in HBM and stream only FFN neurons ("LLM in a flash")."""
    overlap: bool = True
    """Stream the next layer's weights while the current layer computes."""
    storage: str = "nvme-gen4"
    """The flash drive (catalogue name), for the flash tier."""
    queue_depth: int = Field(default=32, ge=1, le=MAX_COUNT)
    """Flash reads in flight."""
    read_chunk_kb: float = Field(default=64.0, ge=0.5, le=1e9)
    """Size of one flash read, KiB, at least a 512-byte sector (larger reads: higher throughput, as "LLM in a flash" bundles rows and columns)."""
    capacity_gb: float | None = Field(default=None, gt=0, le=1e9)
    """Capacity of the tier per GPU, GB (default, in the core: 256 for DRAM, 3840 for flash, as on a DGX H100)."""

    def core_json(self, path: str, user_storage: dict | None = None) -> dict:
        """The core's view (its ``OffloadSpec``): these fields with the flash drive looked up
        (``user_storage``: a scenario's own ``storage:`` drives, beside the catalogue's). A drive
        named explicitly is looked up with the DRAM tier too, so that a misspelt name is an error
        rather than ignored until the tier is switched to flash."""
        if self.tier == "dram":
            from fleetwise.config.experts import warn_flash_only

            warn_flash_only(path, "tier: dram", [f for f in ("storage", "dram_cache_fraction", "queue_depth", "read_chunk_kb") if f in self.model_fields_set])
        drive = None
        if self.tier == "flash" or "storage" in self.model_fields_set:
            drive = lookup("storage", self.storage, user_storage or {}, f"{path}.storage").core_json(self.storage)
        return {**self.model_dump(exclude={"storage"}), "flash": drive if self.tier == "flash" else None}


class PoolConfig(StrictModel):
    """A group of identical instances."""

    name: str = Field(default="main", min_length=1, max_length=MAX_NAME_LENGTH)
    """Pool name, shown in results (1 to 128 characters)."""
    count: int = Field(default=1, ge=1, le=MAX_COUNT)
    """Number of instances."""
    gpu: str
    """GPU name from the catalogue or the scenario's ``gpus``."""
    model: str
    """Model name from the catalogue or the scenario's ``models``."""
    parallelism: Parallelism = Parallelism()
    """Parallelism of each instance."""
    scheduler: SchedulerConfig = VllmScheduler()
    """Batch scheduler of each instance."""
    memory: MemorySettings = MemorySettings()
    """Memory settings of each instance."""
    engine: str | None = Field(default=None, min_length=1, max_length=4096)
    """The serving engine's profile: a built-in name (``vllm``; ``fleetwise-torch``) or a profile
    file (a path ending in .yaml, relative to the scenario file); unset: the cluster's ``engine``
    (default ``vllm``). See docs/engines.md."""
    calibration: CalibrationOverride | None = None
    """Overrides of the resolved cost-model factors (GPU hardware x engine profile) for this pool."""
    power_cap_watts: float | None = Field(default=None, gt=0)
    """Power cap per GPU, watts: the GPU lowers its SM clock until each kernel's draw fits, which
    slows compute-bound work; memory-bound work is unchanged while the cap is above its draw
    (docs/power-and-cost.md)."""
    price_per_hour: float | None = Field(default=None, ge=0, le=1e6)
    """Price of one of this pool's GPUs per hour, USD, replacing the GPU's catalogue
    ``price_per_hour`` for this pool (a study's own prices, e.g. Splitwise's DGX machine prices;
    docs/splitwise-designs.md). It prices the run's cost and ``fleetwise place`` / ``designs`` budgets."""
    dvfs_exponent: float | None = Field(default=None, ge=1, le=3)
    """Overrides the GPU's ``dvfs_exponent`` for this pool (SM power ``~ clock^dvfs_exponent``
    under a power cap; 3: voltage proportional to the clock, 1: voltage at its floor)."""
    pim: str | None = None
    """A PIM device (catalogue or the scenario's ``pims``) attached to each GPU's memory."""
    offload: OffloadConfig | None = None
    """Weight offloading to host DRAM or flash."""
    quantization: QuantizationConfig = QuantizationConfig()
    """Weights (bf16, fp8, int8, int4 with group_size), GEMM activations (bf16, fp8) and KV cache
    (bf16, fp8) formats, as vLLM offers them (docs/quantization.md); default none."""
    speculative: SpeculativeConfig | None = None
    """Speculative decoding (vLLM's ``--speculative-config``): a draft model, an EAGLE / EAGLE-3 / MTP head or n-gram lookup
    proposes ``num_speculative_tokens`` tokens per decode step, accepted at ``acceptance_rate``
    (docs/speculative-decoding.md); default none. In a prefill/decode split the prefill and decode
    pools name the same proposer (as vLLM's KV connector requires): the prefill pool runs each prompt
    through it and sends its KV with the target's."""
    experts: ExpertsConfig | None = None
    """Mixture-of-experts serving: expert placement (HBM, DRAM, flash), routing model, expert
    cache, prefetching and token grouping (MoE models only; docs/moe.md)."""
    prefix_caching: bool = False
    """Keep prompt prefixes cached and share them (vLLM's automatic prefix caching, LRU eviction);
    needs prefix hashes in the workload (a Mooncake trace, ``prefixes`` or ``sessions``)."""
    prefix_cache_policy: PolicyRef | None = None
    """Eviction policy object for the prefix cache (default: the built-in LRU); needs prefix_caching."""
    role: Literal["mixed", "prefill", "decode"] = "mixed"
    """Disaggregation (Splitwise, DistServe): prefill instances hand each request's KV to a decode
    instance after the first token; mixed instances do both."""

    kv_transfer: Literal["serialized", "layerwise"] = "serialized"
    """Prefill pools: send the KV after the prefill, or layer by layer while it runs (Splitwise). A
    decode pool leaves it unset or repeats the prefill pools' value."""
    kv_link: Literal["nic", "nvlink"] = "nic"
    """Prefill pools: the links this pool's KV transfers use at both ends, out of the prefill
    instance and into the decode instance: the NICs (other nodes) or NVLink (prefill and decode on
    one node). The sending pool's setting decides: a decode pool leaves it unset or repeats the
    prefill pools' value (any other value would not be used, and is refused, the default included)."""
    kv_transfer_latency: float = Field(default=4e-3, ge=0, le=1)
    """Prefill pools: setup and synchronisation latency of each KV transfer, seconds (paid before
    its bytes flow; a layer-wise transfer pays it again for its last layer, after the prompt).
    The default, 4 ms, fits Splitwise's ~5 ms of non-hidden layer-wise transfer on DGX-H100. A
    decode pool leaves it unset or repeats the prefill pools' value."""


class ClusterConfig(StrictModel):
    """Instances and the router in front of them."""

    def engine_of(self, pool: PoolConfig) -> str:
        """The engine profile ``pool`` runs: its own ``engine``, else the cluster's."""
        return pool.engine or self.engine

    pools: list[PoolConfig] = Field(min_length=1)
    """Instance pools."""
    router: RouterConfig = LeastOutstandingTokensRouter()
    """Router across all instances."""
    engine: str = Field(default="vllm", min_length=1, max_length=4096)
    """The engine profile of every pool that names none (``vllm``, ``fleetwise-torch`` or a profile file)."""
    decode_choice: PolicyRef | None = None
    """Disaggregated clusters: a policy object (``fleetwise.policy.DecodeChoice``, registered name or
    ``package.module:attr``) choosing the decode instance of each prefilled request (default: the
    router's pick, else the fewest outstanding tokens)."""
    mixed_pool: MixedPoolConfig | None = None
    """Splitwise's mixed pool (clusters with prefill and decode pools): when an overloaded prompt
    or token pool lends work to machines of the other pool (docs/seed-systems.md)."""

    @field_validator("pools")
    @classmethod
    def _pool_names_are_unique(cls, v: list[PoolConfig]) -> list[PoolConfig]:
        """Results, prices and engines are kept by pool name: two pools of one name would mix them."""
        first: dict[str, int] = {}
        for i, p in enumerate(v):
            if p.name in first:
                raise ValueError(f"pools {first[p.name]} and {i} are both named {p.name!r}: pool names must be unique "
                                 "(results, prices and engines are reported by pool name)")
            first[p.name] = i
        return v

    @field_validator("pools")
    @classmethod
    def _split_pools_agree(cls, v: list[PoolConfig]) -> list[PoolConfig]:
        """A decode pool continues its prefill pools' KV: same model, KV format and proposer, their
        transfer settings (``config/split_pools.py``)."""
        check_split_pools(v)
        return v

    @field_validator("mixed_pool")
    @classmethod
    def _mixed_pool_needs_prompt_and_token_pools(cls, v: MixedPoolConfig | None, info: ValidationInfo) -> MixedPoolConfig | None:
        """A mixed pool moves machines between a prefill and a decode pool, so both must exist."""
        roles = {p.role for p in info.data.get("pools") or ()}
        if v is not None and not {"prefill", "decode"} <= roles:
            raise ValueError("needs a pool with role prefill and a pool with role decode (Splitwise's prompt and token pools)")
        return v


class SloConfig(StrictModel):
    """Per-request latency targets; a request meets the SLO when it meets every target set."""

    ttft: float | None = Field(default=None, gt=0)
    """Time to first token target, seconds."""
    tpot: float | None = Field(default=None, gt=0)
    """Time per output token target, seconds."""
    e2e: float | None = Field(default=None, gt=0)
    """End-to-end latency target, seconds."""
    scheduling_delay: float | None = Field(default=None, gt=0)
    """Scheduling delay target (arrival to the first iteration that includes the request), seconds."""


class IdealizedConfig(StrictModel):
    """The reference of the idealized runtime (docs/semantics.md): every request's runtime as if
    served alone on this GPU under this engine profile."""

    gpu: str = Field(default="a100-80gb-sxm", min_length=1, max_length=MAX_NAME_LENGTH)
    """Reference GPU: a catalogue name or one of the scenario's ``gpus`` (default the paper's A100-80GB)."""
    engine: str = Field(default="vllm", min_length=1)
    """Reference engine profile: a built-in name or a profile file."""


class Scenario(StrictModel):
    """A complete simulation: what runs, on what, under which load."""

    name: str = "scenario"
    """Scenario name; it names the default output directory (runs/<name>, sweeps/<name>), so it is one plain file name."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seed of every random stream (0 to 2**64 - 1)."""
    gpus: dict[str, GpuSpec] = {}
    """User-defined GPUs (added to, or replacing, the catalogue's)."""
    models: dict[str, ModelSpec] = {}
    """User-defined models (added to, or replacing, the catalogue's)."""
    pims: dict[str, PimSpec] = {}
    """User-defined PIM devices (added to, or replacing, the catalogue's)."""
    storage: dict[str, StorageSpec] = {}
    """User-defined flash drives (added to, or replacing, the catalogue's), for offloaded weights and experts."""
    cluster: ClusterConfig
    """The cluster."""
    workload: WorkloadConfig
    """The requests."""
    slo: SloConfig | None = None
    """Latency targets for SLO attainment."""
    idealized: IdealizedConfig = IdealizedConfig()
    """Reference GPU and engine of the requests' idealized runtime."""

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, v: str) -> str:
        """Refuses names that would leave runs/ or sweeps/ as a default output directory."""
        if v in ("", ".", "..") or "/" in v or "\\" in v or not v.isprintable() or len(v.encode()) > 200:
            raise ValueError("must be a plain file name (it names the default output directory runs/<name>): "
                             "no / or \\, not . or .., no control characters, at most 200 bytes")
        return v

    _source: str | None = PrivateAttr(default=None)
    _base_dir: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The file the scenario was loaded from, if any."""
        return self._source
