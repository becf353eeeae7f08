"""The ``workload`` section of a scenario: how requests arrive, how long they are, and how their
prompts share prefixes (system prompts, multi-turn sessions)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from fleetwise.config.base import StrictModel
from fleetwise.config.limits import MAX_REQUESTS, MAX_TIME_NS, MAX_TOKENS

MAX_TIME_S = MAX_TIME_NS / 1e9
"""Longest time a window or offset may span, seconds (``MAX_TIME_NS``)."""

TraceFormat = Literal["azure", "mooncake", "burstgpt", "parquet"]
"""The trace formats (files with arrival times and token counts) fleetwise reads."""

LengthFormat = Literal["csv", "sharegpt", "vllm-bench"]
"""The length-only formats (token counts without arrival times) fleetwise reads."""

AnyFormat = Literal["csv", "sharegpt", "vllm-bench", "azure", "mooncake", "burstgpt", "parquet"]
"""Every format a file of token counts can be read from: the length formats and the trace
formats."""


# --- arrival processes ----------------------------------------------------------------------------


class PoissonArrivals(StrictModel):
    """Requests arrive as a Poisson process: independent exponential gaps with mean ``1 / rate``."""

    kind: Literal["poisson"] = "poisson"
    """Selects this arrival process."""
    rate: float = Field(gt=0, allow_inf_nan=False)
    """Mean arrival rate in requests per second."""


class GammaArrivals(StrictModel):
    """Independent Gamma-distributed gaps (a renewal process): ``cv = 1`` is Poisson, ``cv > 1``
    is burstier (clustered arrivals separated by long gaps), ``cv < 1`` more regular."""

    kind: Literal["gamma"] = "gamma"
    """Selects this arrival process."""
    rate: float = Field(gt=0, allow_inf_nan=False)
    """Mean arrival rate in requests per second (the gaps have mean ``1 / rate``)."""
    cv: float = Field(ge=0.001, le=1000, allow_inf_nan=False)
    """Coefficient of variation (standard deviation / mean) of the gaps, 0.001 to 1000 (measured
    traces sit between about 0.5 and 10); the Gamma shape is ``1 / cv**2``."""


class OnOffArrivals(StrictModel):
    """Poisson arrivals at ``rate`` during on periods of ``on_s`` seconds, alternating with silent
    off periods of ``off_s`` seconds; the first on period starts at time 0."""

    kind: Literal["onoff"] = "onoff"
    """Selects this arrival process."""
    rate: float = Field(gt=0, allow_inf_nan=False)
    """Arrival rate during on periods, requests per second (the long-run mean is
    ``rate * on_s / (on_s + off_s)``)."""
    on_s: float = Field(gt=0, le=MAX_TIME_S, allow_inf_nan=False)
    """Length of each on period, seconds."""
    off_s: float = Field(ge=0, le=MAX_TIME_S, allow_inf_nan=False)
    """Length of each off period, seconds (0: plain Poisson)."""


class DiurnalArrivals(StrictModel):
    """A non-homogeneous Poisson process with a sinusoidal rate
    ``mean_rate * (1 + amplitude * sin(2 pi (t + phase_s) / period_s))``, generated exactly by
    time rescaling."""

    kind: Literal["diurnal"] = "diurnal"
    """Selects this arrival process."""
    mean_rate: float = Field(gt=0, allow_inf_nan=False)
    """Time-averaged arrival rate, requests per second."""
    amplitude: float = Field(ge=0, le=1, allow_inf_nan=False)
    """Relative swing of the rate: the peak is ``mean_rate * (1 + amplitude)`` and the trough
    ``mean_rate * (1 - amplitude)``."""
    period_s: float = Field(gt=0, le=MAX_TIME_S, allow_inf_nan=False)
    """Period of the rate, seconds (86400 for a daily cycle)."""
    phase_s: float = Field(default=0.0, ge=-MAX_TIME_S, le=MAX_TIME_S, allow_inf_nan=False)
    """Shift of the cycle, seconds: the rate at time ``t`` is the unshifted rate at
    ``t + phase_s`` (``period_s / 4`` starts at the peak)."""


class RampArrivals(StrictModel):
    """A non-homogeneous Poisson process whose rate grows (or falls) linearly from ``start_rate`` to
    ``end_rate`` over ``duration_s`` seconds and then stays at ``end_rate``; generated exactly."""

    kind: Literal["ramp"] = "ramp"
    """Selects this arrival process."""
    start_rate: float = Field(ge=0, allow_inf_nan=False)
    """Rate at time 0, requests per second."""
    end_rate: float = Field(gt=0, allow_inf_nan=False)
    """Rate from ``duration_s`` on, requests per second."""
    duration_s: float = Field(gt=0, le=MAX_TIME_S, allow_inf_nan=False)
    """Length of the ramp, seconds."""


class TraceArrivals(StrictModel):
    """Requests are replayed from a trace file, which gives both arrival times and token counts.

    The selection is applied in this order: the time window (``start_s``, ``duration_s``, in the
    trace's own time), then the length filters (``min_prompt_tokens``, ``max_prompt_tokens``,
    ``max_output_tokens``), so filtering never moves the window; the arrivals left are re-based so
    that the first is at 0; then the workload's ``requests`` keeps the first N of them; finally
    ``rate_scale`` compresses time.
    """

    kind: Literal["trace"] = "trace"
    """Selects this arrival process."""
    path: str = Field(min_length=1)
    """The trace file; a relative path is resolved against the scenario file's directory first,
    then the current directory."""
    format: TraceFormat = "azure"
    """The trace format: ``azure`` (Azure LLM inference 2023/2024 CSV), ``mooncake`` (Mooncake
    JSONL with ``hash_ids``), ``burstgpt`` (BurstGPT CSV) or ``parquet`` (fleetwise's native
    Parquet). See ``traces/README.md``."""
    hash_block_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Tokens each prefix-block hash of the trace covers, for prefix caching (Mooncake: 512 by default)."""
    rate_scale: float = Field(default=1.0, ge=1e-6, le=1e9, allow_inf_nan=False)
    """Multiplies the arrival rate by dividing every arrival offset (2.0 replays twice as fast)."""
    start_s: float = Field(default=0.0, ge=0, le=MAX_TIME_S, allow_inf_nan=False)
    """Start of the replayed window, seconds after the trace's first request."""
    duration_s: float | None = Field(default=None, gt=0, le=MAX_TIME_S, allow_inf_nan=False)
    """Length of the replayed window, seconds: requests arriving in ``[start_s, start_s +
    duration_s)`` are kept. ``None``: to the end of the trace."""
    min_prompt_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Drop requests with fewer prompt tokens (applied after the time window). ``None``: no
    limit."""
    max_prompt_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Drop requests with more prompt tokens (applied after the time window). ``None``: no
    limit."""
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Drop requests with more output tokens (applied after the time window). ``None``: no
    limit."""
    model: str | None = None
    """``burstgpt`` only: keep only rows whose ``Model`` is this (e.g. ``ChatGPT`` or ``GPT-4``).
    ``None``: all models."""
    log_type: str | None = None
    """``burstgpt`` only: keep only rows whose ``Log Type`` is this (``Conversation log`` or
    ``API log``). ``None``: all."""

    @model_validator(mode="after")
    def _check_options(self) -> TraceArrivals:
        if (
            self.min_prompt_tokens is not None
            and self.max_prompt_tokens is not None
            and self.min_prompt_tokens > self.max_prompt_tokens
        ):
            raise ValueError(
                f"min_prompt_tokens ({self.min_prompt_tokens}) must be <= max_prompt_tokens "
                f"({self.max_prompt_tokens})"
            )
        if self.format != "burstgpt":
            for name in ("model", "log_type"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} applies only to format burstgpt, not {self.format}"
                    )
        return self


ArrivalProcess = Annotated[
    Union[
        PoissonArrivals, GammaArrivals, OnOffArrivals, DiurnalArrivals, RampArrivals, TraceArrivals
    ],
    Field(discriminator="kind"),
]
"""Any arrival process, selected by its ``kind`` field."""

GeneratedArrivals = (PoissonArrivals, GammaArrivals, OnOffArrivals, DiurnalArrivals, RampArrivals)
"""The synthetic arrival processes (everything but ``trace``): they need ``lengths`` and
``requests``."""


# --- length distributions -------------------------------------------------------------------------


class ConstantLengths(StrictModel):
    """Every request has the same prompt and output length."""

    kind: Literal["constant"] = "constant"
    """Selects this length distribution."""
    prompt: int = Field(ge=1, le=MAX_TOKENS)
    """Prompt (prefill) tokens per request."""
    output: int = Field(ge=1, le=MAX_TOKENS)
    """Output (decode) tokens per request."""


class UniformLengths(StrictModel):
    """Prompt and output lengths are independent, uniform over inclusive integer ranges."""

    kind: Literal["uniform"] = "uniform"
    """Selects this length distribution."""
    prompt_min: int = Field(ge=1, le=MAX_TOKENS)
    """Smallest prompt length (inclusive)."""
    prompt_max: int = Field(ge=1, le=MAX_TOKENS)
    """Largest prompt length (inclusive)."""
    output_min: int = Field(ge=1, le=MAX_TOKENS)
    """Smallest output length (inclusive)."""
    output_max: int = Field(ge=1, le=MAX_TOKENS)
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
    prompt_median: float = Field(gt=0, le=MAX_TOKENS, allow_inf_nan=False)
    """Median prompt length in tokens (``exp(mu)`` of the underlying normal)."""
    prompt_sigma: float = Field(ge=0, le=20, allow_inf_nan=False)
    """Standard deviation of the log of the prompt length."""
    output_median: float = Field(gt=0, le=MAX_TOKENS, allow_inf_nan=False)
    """Median output length in tokens."""
    output_sigma: float = Field(ge=0, le=20, allow_inf_nan=False)
    """Standard deviation of the log of the output length."""
    prompt_max: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Largest prompt length; longer samples are clipped to it. ``None``: ``MAX_TOKENS`` (a
    billion, beyond any model's context)."""
    output_max: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Largest output length; longer samples are clipped to it. ``None``: ``MAX_TOKENS`` (a
    billion, beyond any model's context)."""


def _check_format_options(model: StrictModel, fmt: str) -> None:
    """Reject reader options given a non-default value for a format that does not use them."""
    fields = type(model).model_fields
    unused = [] if fmt == "csv" else ["prompt_column", "output_column"]
    unused += [] if fmt == "sharegpt" else ["chars_per_token"]
    for name in unused:
        if getattr(model, name) != fields[name].default:
            only = "sharegpt" if name == "chars_per_token" else "csv"
            raise ValueError(f"{name} applies only to format {only}, not {fmt}")


class FileLengths(StrictModel):
    """(prompt, output) pairs drawn uniformly, with replacement, from the requests of a length
    file: a CSV such as ShareGPT's ``sharegpt_8k_lengths_llama2tok.csv``, a ShareGPT conversation
    JSON, or a ``vllm bench serve --save-result --save-detailed`` JSON."""

    kind: Literal["file"] = "file"
    """Selects this length distribution."""
    path: str = Field(min_length=1)
    """The length file; a relative path is resolved against the scenario file's directory first,
    then the current directory."""
    format: LengthFormat = "csv"
    """The file format: ``csv`` (one row per request, columns named by ``prompt_column`` and
    ``output_column``), ``sharegpt`` (conversation JSON; tokens estimated from characters) or
    ``vllm-bench`` (``input_lens`` / ``output_lens`` of a vLLM benchmark result)."""
    prompt_column: str = "num_prefill_tokens"
    """``csv`` only: the column holding prompt (prefill) token counts."""
    output_column: str = "num_decode_tokens"
    """``csv`` only: the column holding output (decode) token counts."""
    chars_per_token: float = Field(default=4.0, ge=0.01, le=1e6, allow_inf_nan=False)
    """``sharegpt`` only: a message of ``c`` characters counts as ``ceil(c / chars_per_token)``
    tokens (at least 1)."""
    max_total_tokens: int | None = Field(default=None, ge=2, le=2 * MAX_TOKENS)
    """Rows whose prompt + output exceeds this are dropped before sampling. ``None``: keep all."""

    @model_validator(mode="after")
    def _check_options(self) -> FileLengths:
        _check_format_options(self, self.format)
        return self


class FitLengths(StrictModel):
    """Prompt and output lengths sampled from log-normal distributions fitted (maximum likelihood
    on the log lengths, independently for prompt and output) to the requests of a file."""

    kind: Literal["fit"] = "fit"
    """Selects this length distribution."""
    path: str = Field(min_length=1)
    """The file fitted to; a relative path is resolved against the scenario file's directory
    first, then the current directory."""
    format: AnyFormat = "csv"
    """The file format: any length format (``csv``, ``sharegpt``, ``vllm-bench``) or trace format
    (``azure``, ``mooncake``, ``burstgpt``, ``parquet``)."""
    distribution: Literal["lognormal"] = "lognormal"
    """The fitted family (only ``lognormal`` for now)."""
    prompt_column: str = "num_prefill_tokens"
    """``csv`` only: the column holding prompt (prefill) token counts."""
    output_column: str = "num_decode_tokens"
    """``csv`` only: the column holding output (decode) token counts."""
    chars_per_token: float = Field(default=4.0, ge=0.01, le=1e6, allow_inf_nan=False)
    """``sharegpt`` only: characters per estimated token."""
    prompt_max: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Largest prompt length; longer samples are clipped to it. ``None``: ``MAX_TOKENS`` (a
    billion, beyond any model's context)."""
    output_max: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """Largest output length; longer samples are clipped to it. ``None``: ``MAX_TOKENS`` (a
    billion, beyond any model's context)."""

    @model_validator(mode="after")
    def _check_options(self) -> FitLengths:
        _check_format_options(self, self.format)
        return self


LengthDistribution = Annotated[
    Union[ConstantLengths, UniformLengths, LognormalLengths, FileLengths, FitLengths],
    Field(discriminator="kind"),
]
"""Any length distribution, selected by its ``kind`` field."""


# --- prompt structure -----------------------------------------------------------------------------


class PrefixGroups(StrictModel):
    """Shared system prompts: a fraction of requests (of sessions, with ``sessions``: their first
    turn, which later turns extend) starts with one of ``groups`` shared prefixes.

    A member of group ``g`` gets ``prefix_tokens`` prepended (its ``prompt_tokens`` grows by that
    much) and ``hash_ids`` whose first ``ceil(prefix_tokens / block_tokens)`` entries are group
    ``g``'s block hashes: equal across the group, distinct across groups. The last prefix block
    counts as shared even when ``prefix_tokens`` is not a multiple of ``block_tokens``; choose a
    multiple for exact block accounting. All other blocks get hashes no other request has.
    """

    groups: int = Field(ge=1, le=MAX_REQUESTS)
    """Number of distinct shared prefixes; each member picks one uniformly at random."""
    prefix_tokens: int = Field(ge=1, le=MAX_TOKENS)
    """Length of every shared prefix, tokens."""
    fraction: float = Field(ge=0, le=1, allow_inf_nan=False)
    """Probability that a request (a session, with ``sessions``) gets a shared prefix."""
    block_tokens: int = Field(default=16, ge=1, le=MAX_TOKENS)
    """Tokens per KV block, the unit ``hash_ids`` are counted in."""


class Sessions(StrictModel):
    """Multi-turn sessions: requests are grouped into sessions whose later turns resend the whole
    conversation so far.

    The number of turns of a session is geometric on ``1, 2, ...`` with mean ``turns_mean``; the
    last session is cut short so that the workload has exactly ``requests`` requests. The arrival
    process gives the first turns (so the overall request rate is about ``turns_mean`` times the
    process's rate); turn ``j > 1`` arrives an exponential think time (mean ``think_time_s``) after
    turn ``j - 1``'s *arrival* (open loop: the simulator does not wait for turn ``j - 1`` to
    complete). Turn ``j``'s prompt is turn ``j - 1``'s prompt + output + its own new tokens (drawn
    from ``lengths``), and its ``hash_ids`` extend turn ``j - 1``'s, so later turns reuse the
    earlier context's blocks. Prompts grow without bound with the turn count: clip ``lengths`` or
    keep ``turns_mean`` small when the model's context is short.
    """

    turns_mean: float = Field(ge=1, le=MAX_REQUESTS, allow_inf_nan=False)
    """Mean number of turns per session (1: every session is a single request)."""
    think_time_s: float = Field(ge=0, le=MAX_TIME_S, allow_inf_nan=False)
    """Mean gap between the arrivals of consecutive turns of a session, seconds (exponential)."""
    block_tokens: int = Field(default=16, ge=1, le=MAX_TOKENS)
    """Tokens per KV block, the unit ``hash_ids`` are counted in."""


# --- the section ----------------------------------------------------------------------------------


class WorkloadConfig(StrictModel):
    """The requests a simulation serves: an arrival process and, unless it is a trace, a length
    distribution and a request count; optionally shared prefixes and multi-turn sessions."""

    arrivals: ArrivalProcess
    """How requests arrive (``kind``: ``poisson``, ``gamma``, ``onoff``, ``diurnal``, ``ramp`` or
    ``trace``)."""
    lengths: LengthDistribution | None = None
    """Prompt and output lengths (``kind``: ``constant``, ``uniform``, ``lognormal``, ``file`` or
    ``fit``). Required with generated arrivals; not allowed with a trace, which carries its own
    lengths."""
    requests: int | None = Field(default=None, ge=1, le=MAX_REQUESTS)
    """Number of requests. Required with generated arrivals; with a trace, only the first
    ``requests`` rows (after the trace's window and filters) are replayed (``None``: all of
    them)."""
    prefixes: PrefixGroups | None = None
    """Shared system prompts (adds ``hash_ids``). Not allowed with a trace that has its own
    ``hash_ids``. ``None``: no shared prefixes."""
    sessions: Sessions | None = None
    """Multi-turn sessions (adds ``hash_ids`` and ``session_id``); generated arrivals only.
    ``None``: every request is independent."""

    @model_validator(mode="after")
    def _check_combination(self) -> WorkloadConfig:
        if isinstance(self.arrivals, TraceArrivals):
            if self.lengths is not None:
                raise ValueError(
                    "lengths must not be set with trace arrivals: lengths come from the trace"
                )
            if self.sessions is not None:
                raise ValueError(
                    "sessions need generated arrivals and lengths; they cannot be used with a trace"
                )
        else:
            kind = self.arrivals.kind
            if self.lengths is None:
                raise ValueError(f"{kind} arrivals require a lengths distribution")
            if self.requests is None:
                raise ValueError(f"{kind} arrivals require requests (the number of requests)")
        if (
            self.prefixes is not None
            and self.sessions is not None
            and self.prefixes.block_tokens != self.sessions.block_tokens
        ):
            raise ValueError(
                f"prefixes.block_tokens ({self.prefixes.block_tokens}) and sessions.block_tokens "
                f"({self.sessions.block_tokens}) must be equal"
            )
        return self
