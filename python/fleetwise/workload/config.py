"""The ``workload`` section of a scenario: how requests arrive and how long they are."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from fleetwise.config.base import StrictModel


class PoissonArrivals(StrictModel):
    """Requests arrive as a Poisson process: independent exponential gaps with mean ``1 / rate``."""

    kind: Literal["poisson"] = "poisson"
    """Selects this arrival process."""
    rate: float = Field(gt=0, allow_inf_nan=False)
    """Mean arrival rate in requests per second."""


class TraceArrivals(StrictModel):
    """Requests are replayed from a trace file, which gives both arrival times and token counts."""

    kind: Literal["trace"] = "trace"
    """Selects this arrival process."""
    path: str = Field(min_length=1)
    """The trace file; a relative path is resolved against the scenario file's directory first,
    then the current directory."""
    format: Literal["azure"] = "azure"
    """The trace format: ``azure`` is the Azure LLM inference 2023 CSV
    (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    rate_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """Multiplies the arrival rate by dividing every arrival offset (2.0 replays twice as fast)."""


ArrivalProcess = Annotated[Union[PoissonArrivals, TraceArrivals], Field(discriminator="kind")]
"""Any arrival process, selected by its ``kind`` field."""


class ConstantLengths(StrictModel):
    """Every request has the same prompt and output length."""

    kind: Literal["constant"] = "constant"
    """Selects this length distribution."""
    prompt: int = Field(ge=1)
    """Prompt (prefill) tokens per request."""
    output: int = Field(ge=1)
    """Output (decode) tokens per request."""


class UniformLengths(StrictModel):
    """Prompt and output lengths are independent, uniform over inclusive integer ranges."""

    kind: Literal["uniform"] = "uniform"
    """Selects this length distribution."""
    prompt_min: int = Field(ge=1)
    """Smallest prompt length (inclusive)."""
    prompt_max: int = Field(ge=1)
    """Largest prompt length (inclusive)."""
    output_min: int = Field(ge=1)
    """Smallest output length (inclusive)."""
    output_max: int = Field(ge=1)
    """Largest output length (inclusive)."""

    @model_validator(mode="after")
    def _check_ranges(self) -> UniformLengths:
        if self.prompt_min > self.prompt_max:
            raise ValueError(
                f"prompt_min ({self.prompt_min}) must be <= prompt_max ({self.prompt_max})"
            )
        if self.output_min > self.output_max:
            raise ValueError(
                f"output_min ({self.output_min}) must be <= output_max ({self.output_max})"
            )
        return self


class LognormalLengths(StrictModel):
    """Prompt and output lengths are independent and log-normal, rounded to integers and clipped
    to ``[1, max]``."""

    kind: Literal["lognormal"] = "lognormal"
    """Selects this length distribution."""
    prompt_median: float = Field(gt=0, allow_inf_nan=False)
    """Median prompt length in tokens (``exp(mu)`` of the underlying normal)."""
    prompt_sigma: float = Field(ge=0, allow_inf_nan=False)
    """Standard deviation of the log of the prompt length."""
    output_median: float = Field(gt=0, allow_inf_nan=False)
    """Median output length in tokens."""
    output_sigma: float = Field(ge=0, allow_inf_nan=False)
    """Standard deviation of the log of the output length."""
    prompt_max: int | None = Field(default=None, ge=1)
    """Largest prompt length; longer samples are clipped to it. ``None``: no limit."""
    output_max: int | None = Field(default=None, ge=1)
    """Largest output length; longer samples are clipped to it. ``None``: no limit."""


class FileLengths(StrictModel):
    """(prompt, output) pairs drawn uniformly, with replacement, from the rows of a CSV length file
    such as ShareGPT's ``sharegpt_8k_lengths_llama2tok.csv``."""

    kind: Literal["file"] = "file"
    """Selects this length distribution."""
    path: str = Field(min_length=1)
    """The length file; a relative path is resolved against the scenario file's directory first,
    then the current directory."""
    prompt_column: str = "num_prefill_tokens"
    """The column holding prompt (prefill) token counts."""
    output_column: str = "num_decode_tokens"
    """The column holding output (decode) token counts."""
    max_total_tokens: int | None = Field(default=None, ge=2)
    """Rows whose prompt + output exceeds this are dropped before sampling. ``None``: keep all."""


LengthDistribution = Annotated[
    Union[ConstantLengths, UniformLengths, LognormalLengths, FileLengths],
    Field(discriminator="kind"),
]
"""Any length distribution, selected by its ``kind`` field."""


class WorkloadConfig(StrictModel):
    """The requests a simulation serves: an arrival process and, unless it is a trace, a length
    distribution and a request count."""

    arrivals: ArrivalProcess
    """How requests arrive (``kind``: ``poisson`` or ``trace``)."""
    lengths: LengthDistribution | None = None
    """Prompt and output lengths (``kind``: ``constant``, ``uniform``, ``lognormal`` or ``file``).
    Required with Poisson arrivals; not allowed with a trace, which carries its own lengths."""
    requests: int | None = Field(default=None, ge=1)
    """Number of requests. Required with Poisson arrivals; with a trace, only the first
    ``requests`` rows are replayed (``None``: all of them)."""

    @model_validator(mode="after")
    def _check_combination(self) -> WorkloadConfig:
        if isinstance(self.arrivals, TraceArrivals):
            if self.lengths is not None:
                raise ValueError(
                    "lengths must not be set with trace arrivals: lengths come from the trace"
                )
        else:
            if self.lengths is None:
                raise ValueError("poisson arrivals require a lengths distribution")
            if self.requests is None:
                raise ValueError("poisson arrivals require requests (the number of requests)")
        return self
