"""A pool's ``quantization``: weights, GEMM activations and KV cache formats, as vLLM offers them
(docs/quantization.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fleetwise.config.base import StrictModel

DEFAULT_GROUP_SIZE = 128
"""INT4 weights per scale and zero point when ``group_size`` is unset (AWQ's and GPTQ's default)."""

WEIGHT_FORMATS = ("bf16", "fp8", "int8", "int4")
"""The allowed ``weights`` values."""


class QuantizationConfig(StrictModel):
    """How an instance stores its weights and KV cache and what its GEMMs compute in.

    The decoder layers' weights take ``weights`` (the embedding, LM head and MoE router stay 16-bit,
    as in vLLM); ``activations: fp8`` runs the GEMMs at the GPU's FP8 tensor peak (W8A8, needs
    ``weights: fp8`` and a GPU with ``fp8_peak_flops``); ``kv_cache: fp8`` halves the KV bytes.
    """

    weights: Literal["bf16", "fp8", "int8", "int4"] = "bf16"
    """Decoder-layer weights: bf16 (the model's 16-bit dtype), fp8, int8 (W8A16) or int4 (W4A16, AWQ/GPTQ)."""
    activations: Literal["bf16", "fp8"] = "bf16"
    """GEMM input activations: bf16, or fp8 (W8A8 with ``weights: fp8``: GEMMs at the FP8 tensor peak)."""
    kv_cache: Literal["bf16", "fp8"] = "bf16"
    """KV-cache elements: bf16, or fp8 (vLLM's ``--kv-cache-dtype fp8``: one byte each)."""
    group_size: int | None = Field(default=None, ge=8, le=65536)
    """INT4 weights sharing one 16-bit scale and 16-bit zero point (default 128); int4 only."""

    @model_validator(mode="after")
    def _combination_runs(self) -> QuantizationConfig:
        """Refuses a group size without int4 weights and FP8 activations without FP8 weights."""
        if self.group_size is not None and self.weights != "int4":
            raise ValueError(f"group_size applies to weights: int4 only (weights is {self.weights})")
        if self.activations == "fp8" and self.weights != "fp8":
            raise ValueError(f"activations: fp8 runs FP8 GEMMs, which need weights: fp8 (W8A8); weights is {self.weights}")
        return self

    def check_model(self, model, model_name: str, where: str) -> None:
        """Refuses an INT4 ``group_size`` that does not divide ``model``'s ``hidden_size`` (the input
        width of its QKV and gate/up projections): AWQ and GPTQ kernels group each row's inputs, so
        a group that straddles rows or outruns them is not a layout any checkpoint has. Raises
        ``ConfigError`` naming ``where`` (the pool's ``quantization`` path or ``--quantization``)."""
        from fleetwise.errors import ConfigError

        if self.weights == "int4" and self.group_size is not None and model.hidden_size % self.group_size:
            raise ConfigError(f"{where}.group_size: {self.group_size} does not divide {model_name}'s hidden_size {model.hidden_size}: "
                              "INT4 groups split each weight row's inputs evenly (AWQ/GPTQ use 32, 64 or 128)")

    def core_json(self) -> dict:
        """The core's view (its ``Quantization``): these fields with the group size resolved."""
        return {**self.model_dump(), "group_size": self.group_size or DEFAULT_GROUP_SIZE}


def parse_quantization(text: str, where: str = "--quantization") -> dict:
    """Reads ``weights=fp8,kv_cache=fp8`` (comma-separated KEY=VALUE) into a ``QuantizationConfig``
    dict; raises ``ConfigError`` naming ``where`` on a malformed item."""
    from fleetwise.errors import ConfigError

    out: dict = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{where}: expected KEY=VALUE items separated by commas (keys: weights, activations, kv_cache, group_size), got {item!r}")
        key, value = key.strip(), value.strip()
        if key in out:
            raise ConfigError(f"{where}: {key} given twice")
        out[key] = int(value) if key == "group_size" and value.isdigit() else value
    return out
