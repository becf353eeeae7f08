"""Type stubs of the Rust extension ``fleetwise._core`` (bindings over fleetwise-core)."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class FleetwiseError(Exception):
    """Base class of every fleetwise error caused by user input."""

class ConfigError(FleetwiseError):
    """A scenario or configuration value is invalid."""

class CapacityError(FleetwiseError):
    """A model, request or cache does not fit in the memory available."""

class TraceError(FleetwiseError):
    """A trace or workload file is malformed."""

class SimulationError(FleetwiseError):
    """The simulation could not proceed."""

class PolicyError(FleetwiseError):
    """A user's policy raised or answered something the engine cannot apply."""

Prefill = tuple[int, int, bool]

class CostModel:
    """The roofline cost model of one instance (a model on ``tp`` GPUs of one kind)."""

    def __init__(
        self,
        model_json: str,
        gpu_json: str,
        calibration_json: str,
        tp: int,
        pp: int = 1,
        microbatches: int | None = None,
        power_cap_watts: float | None = None,
        gpus_per_node: int = 8,
        pim_json: str | None = None,
        offload_json: str | None = None,
        ep: int = 1,
        quantization_json: str | None = None,
    ) -> None: ...
    def iteration_seconds(self, prefills: list[Prefill] = ..., decodes: list[int] = ...) -> float: ...
    def solo_decode_seconds(self, longest: int) -> list[float]: ...
    def solo_prefill_seconds(self, lengths: list[int]) -> list[float]: ...
    def iteration_ns(self, prefills: list[Prefill] = ..., decodes: list[int] = ...) -> int: ...
    def stage_ns(self, prefills: list[Prefill] = ..., decodes: list[int] = ...) -> list[int]: ...
    def breakdown(self, prefills: list[Prefill] = ..., decodes: list[int] = ...) -> list[dict[str, Any]]: ...
    def activation_bytes(self, tokens: int, sampled: int) -> int: ...
    def memory_plan(self, memory_json: str, max_tokens: int, max_seqs: int) -> dict[str, int]: ...
    def weight_bytes(self) -> int: ...
    def weight_bytes_per_gpu(self) -> int: ...
    def kv_bytes_per_token(self) -> int: ...
    def speculative_step(self, speculative_json: str, decodes: list[int]) -> tuple[float, float, float, int]: ...
    def speculative_memory(self, speculative_json: str) -> tuple[int, int]: ...
    def speculative_step_ns(self, speculative_json: str, prefills: list[Prefill] = ..., decodes: list[int] = ..., speculating: list[tuple[int, int]] = ...) -> int: ...
    def busy_watts(self, prefills: list[Prefill] = ..., decodes: list[int] = ...) -> float: ...

class Router:
    """A built-in router (``{"kind": ...}``)."""

    def __init__(self, config_json: str, instances: int, seed: int = 0) -> None: ...
    def route(
        self,
        prompt_tokens: int,
        outstanding_tokens: list[int],
        waiting: list[int] | None = None,
        running: list[int] | None = None,
    ) -> int: ...

class Scheduler:
    """A built-in batch scheduler driven step by step."""

    def __init__(self, config_json: str, num_blocks: int, block_size: int = 16, watermark: int | None = None, block_bytes: int = ..., planner: Any | None = None, context_tokens: int = 8192) -> None: ...
    def add(self, request_id: int, prompt: int, output: int, arrival: float = 0.0) -> None: ...
    def schedule(self) -> list[tuple[int, int]]: ...
    def complete(self) -> list[tuple[int, bool]]: ...
    def abort(self, request_id: int) -> bool: ...
    def waiting(self) -> list[int]: ...
    def running(self) -> list[int]: ...
    def preempted(self) -> int: ...
    def used_blocks(self) -> int: ...
    def free_blocks(self) -> int: ...

class RequestRow:
    """A request as the core hands it to a policy bridge (the fields of ``fleetwise.policy.RequestView``)."""

    id: int
    prompt_tokens: int
    max_output_tokens: int
    computed_tokens: int
    generated_tokens: int
    cached_tokens: int
    arrival: float
    preemptions: int
    prefix_hashes: list[int]

class LoadRow:
    """An instance's load as the core hands it to a policy bridge."""

    outstanding_tokens: int
    waiting: int
    running: int
    cached_prefix_tokens: int
    kv_used_blocks: int
    kv_total_blocks: int

class LoadTable:
    """Several instances' loads as one read-only sequence of ``LoadRow`` (made when indexed)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> LoadRow: ...

class IdlePrefixRow:
    """An idle prefix-cache entry as the core offers it to a prefix cache bridge."""

    hash: int
    last_use: int
    hits: int

class SimControl:
    """Follows and cancels a running simulate call from another thread."""

    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    def arrived(self) -> int: ...

def simulate(
    config_json: str,
    arrival_ns: npt.NDArray[np.int64],
    prompt_tokens: npt.NDArray[np.int64],
    output_tokens: npt.NDArray[np.int64],
    control: SimControl | None = None,
    hash_offsets: npt.NDArray[np.int64] | None = None,
    hash_values: npt.NDArray[np.int64] | None = None,
    routing_offsets: npt.NDArray[np.int64] | None = None,
    routing_experts: npt.NDArray[np.int64] | None = None,
    routing_shape: tuple[int, int] | None = None,
    router: Any | None = None,
    planners: dict[int, Any] | None = None,
    evictors: dict[int, Any] | None = None,
    expert_caches: dict[int, Any] | None = None,
    decode_choice: Any | None = None,
    given_classes: dict[int, npt.NDArray[np.uint8]] | None = None,
) -> dict[str, Any]:
    """Runs the simulation; per-request result columns (numpy, one entry per request): the times
    ``first_token_ns``, ``first_scheduled_ns``, ``completion_ns``, ``kv_transfer_ns`` as int64 (-1:
    never), ``instance`` and ``prefill_instance`` as uint32 (2**32 - 1: none),
    ``preemptions`` and ``generated_tokens`` as uint32, ``status`` as uint8 (0 finished,
    1 rejected, 2 pending, 3 waiting, 4 running, 5 swapped, 6 handoff); plus ``rejections``,
    ``itl``, ``instances_json``, ``events``, ``end_time_ns`` and optionally ``mixed_pool`` and
    ``iterations``. A run that stops on a policy's or the simulation's error raises with the
    request columns so far in the exception's ``partial`` attribute. ``given_classes`` maps a pool
    index to each request's acceptance class in that pool (uint8; 255: drawn by share)."""
    ...

def expert_cache_hits(
    policy: str,
    num_experts: int,
    capacity: int,
    accesses: list[int],
    popularity: list[float] | None = None,
) -> int:
    """Hits of one layer's expert cache (lru, lfu, static) of ``capacity`` experts over ``accesses``."""
    ...

def acceptance_classes(seed: int, shares: list[float], n: int, given: npt.NDArray[np.uint8] | None = None) -> np.ndarray:
    """The acceptance class (uint8, an index into ``shares``) of each of a run's ``n`` requests in
    the run seeded with ``seed``, as the core assigns it: the class ``given`` names (by request;
    255: none), else drawn by share (the request table's ``acceptance_class``)."""
    ...

def resolve_config(config_json: str) -> str:
    """The scenario JSON as the core reads it: deserialised into the core's config and serialised
    back, with serde's defaults filled in (ConfigError on an unknown or invalid field)."""
    ...
