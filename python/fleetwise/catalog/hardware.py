"""What a GPU's hardware itself reaches, apart from the serving software that runs on it.

Three fractions describe it (``HardwareFractions``): of the 16-bit tensor peak reached by large
GEMMs, of the memory bandwidth reached by memory-bound kernels, and of the GPU-to-GPU link's
bandwidth reached by collectives. A GPU entry may give them in a ``hardware:`` block (measured);
otherwise they default from its architecture family and memory type, the priors in
``architectures.yaml`` beside this file, each with its source and expected error.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, get_args

import yaml
from pydantic import Field, ValidationError

from fleetwise.config.base import StrictModel
from fleetwise.config.yaml_input import FAST_SAFE_LOADER

if TYPE_CHECKING:
    from fleetwise.catalog import GpuSpec

PRIORS_FILE = Path(__file__).parent / "architectures.yaml"
"""The architecture priors, shipped with the package."""

Architecture = Literal["ampere", "ada", "hopper", "blackwell", "cdna3"]
"""A GPU architecture family with priors (NVIDIA Ampere, Ada Lovelace, Hopper, Blackwell; AMD CDNA 3)."""
MemoryType = Literal["hbm", "gddr"]
"""Device memory technology: stacked HBM (datacentre parts) or GDDR (PCIe cards)."""
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
"""The allowed ``architecture`` values, in the order errors list them."""
MEMORY_TYPES: tuple[str, ...] = get_args(MemoryType)
"""The allowed ``memory_type`` values."""

_HardwareFraction = Annotated[float, Field(ge=0.01, le=1)]
"""A fraction of a hardware peak, in [0.01, 1]."""


class HardwareFractions(StrictModel):
    """The fractions of its datasheet peaks that a GPU's hardware reaches, whatever engine runs on it."""

    gemm_compute: _HardwareFraction
    """Fraction of the dense 16-bit tensor peak reached by large (compute-bound) GEMMs of LLM shapes."""
    memory: _HardwareFraction
    """Fraction of the memory bandwidth reached by memory-bound kernels (small-batch GEMMs streaming weights)."""
    collective: _HardwareFraction
    """Fraction of the GPU-to-GPU link's per-direction bandwidth reached by all-reduces (ring model's bus bandwidth)."""
    fp8_gemm_compute: _HardwareFraction | None = None
    """Fraction of the FP8 tensor peak reached by large GEMMs with FP8 inputs (W8A8); unset: the
    architecture prior's, else ``gemm_compute``."""


Basis = Literal["measured", "public", "guess"]
"""Where a prior comes from: measured in this repository, read from a public measurement, or a guess."""


class PriorFactor(StrictModel):
    """One factor of an architecture prior, with where it comes from and how far off it may be."""

    value: _HardwareFraction
    """The prior's fraction."""
    expected_error: float = Field(ge=0, le=1)
    """Expected absolute error of ``value`` on a GPU of this family (the spread of the evidence)."""
    basis: Basis
    """``measured`` (here, files in calibration/), ``public`` (a published measurement) or ``guess``."""
    source: str = Field(min_length=1)
    """The measurement or publication it is read from, and how it was turned into ``value``."""


class ArchitecturePrior(StrictModel):
    """The default hardware fractions of one architecture family and memory type."""

    examples: list[str] = []
    """GPUs of this family and memory type (catalogue names or products)."""
    gemm_compute: PriorFactor
    """Fraction of the tensor peak reached by large GEMMs."""
    memory: PriorFactor
    """Fraction of the memory bandwidth reached by memory-bound kernels."""
    collective: PriorFactor
    """Fraction of the link bandwidth reached by collectives."""
    fp8_gemm_compute: PriorFactor | None = None
    """Fraction of the FP8 tensor peak reached by large W8A8 GEMMs (unset: ``gemm_compute``'s value)."""
    reasoning: str = ""
    """Why these values hold for the family, and where they may not."""

    def fractions(self) -> HardwareFractions:
        """The prior's values as ``HardwareFractions``."""
        fp8 = None if self.fp8_gemm_compute is None else self.fp8_gemm_compute.value
        return HardwareFractions(gemm_compute=self.gemm_compute.value, memory=self.memory.value, collective=self.collective.value, fp8_gemm_compute=fp8)


def prior_key(architecture: str, memory_type: str) -> str:
    """The key of a prior in ``architectures.yaml``: ``architecture/memory_type``."""
    return f"{architecture}/{memory_type}"


@lru_cache(maxsize=1)
def architecture_priors() -> dict[str, ArchitecturePrior]:
    """The priors of ``architectures.yaml`` by ``architecture/memory_type`` key.

    Raises ``ConfigError`` naming the file and field path when the file is malformed.
    """
    from fleetwise.config.load import format_validation_error
    from fleetwise.errors import ConfigError

    raw = yaml.load(PRIORS_FILE.read_text(), Loader=FAST_SAFE_LOADER)
    priors = raw.get("priors") if isinstance(raw, dict) else None
    if not isinstance(priors, dict):
        raise ConfigError(f"{PRIORS_FILE}: expected a top-level 'priors:' mapping of architecture/memory_type keys")
    out = {}
    for key, spec in priors.items():
        arch, _, mem = str(key).partition("/")
        if arch not in ARCHITECTURES or mem not in MEMORY_TYPES:
            raise ConfigError(
                f"{PRIORS_FILE}: priors.{key}: the key must be architecture/memory_type with architecture one of "
                f"{', '.join(ARCHITECTURES)} and memory_type one of {', '.join(MEMORY_TYPES)}"
            )
        try:
            out[key] = ArchitecturePrior.model_validate(spec)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"{PRIORS_FILE}: priors.{key}", ArchitecturePrior)) from None
    return out


def prior_for(architecture: str, memory_type: str) -> ArchitecturePrior | None:
    """The prior of ``architecture`` with ``memory_type``, or ``None`` when there is none (e.g. hopper/gddr)."""
    return architecture_priors().get(prior_key(architecture, memory_type))


def hardware_fractions(gpu: GpuSpec, path: str = "gpu") -> HardwareFractions:
    """The hardware fractions of ``gpu``: its own ``hardware:`` block if it has one, else the prior of
    its ``architecture`` and ``memory_type``.

    A GPU's own block without ``fp8_gemm_compute`` takes its prior's. A legacy GPU that has
    neither (only a ``calibration:`` block) gets that calibration's
    ``gemm_compute``, ``memory`` and ``collective``. Raises ``ConfigError`` naming ``path`` when none
    of these is available.
    """
    from fleetwise.errors import ConfigError

    has_family = gpu.architecture is not None and gpu.memory_type is not None
    prior = prior_for(gpu.architecture, gpu.memory_type) if has_family else None
    if gpu.hardware is not None:
        # A GPU's own measurement, with its family's FP8 fraction where it has none of its own.
        if gpu.hardware.fp8_gemm_compute is None and prior is not None and prior.fp8_gemm_compute is not None:
            return gpu.hardware.model_copy(update={"fp8_gemm_compute": prior.fp8_gemm_compute.value})
        return gpu.hardware
    if has_family:
        if prior is None:
            raise ConfigError(
                f"{path}: no architecture prior for {prior_key(gpu.architecture, gpu.memory_type)}; "
                f"priors exist for {', '.join(sorted(architecture_priors()))}; give a hardware: block"
            )
        return prior.fractions()
    if gpu.calibration is not None:
        cal = gpu.calibration
        try:
            return HardwareFractions(gemm_compute=cal.gemm_compute, memory=cal.memory, collective=cal.collective)
        except ValidationError:
            raise ConfigError(
                f"{path}.calibration: gemm_compute, memory and collective must each be in [0.01, 1] to serve as "
                "hardware fractions; give a hardware: block"
            ) from None
    raise ConfigError(f"{path}: needs a hardware: block, or architecture and memory_type, or a calibration: block")
