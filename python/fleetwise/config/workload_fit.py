"""Checking a scenario's generated request lengths against the context its pools' models serve.

A request longer than every pool's context is rejected by the core; a workload whose *every*
request is (a constant 1,000,000-token prompt on an 8,192-token model, a shared prefix longer than
the context) is a configuration mistake, refused here with the field that causes it. The longest
context also bounds how much prompt structure (``hash_ids``) is built for each request.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetwise.config.scenario import Scenario


@dataclass(frozen=True)
class PoolContext:
    """What one pool can serve: the longest prompt + output and the longest prompt."""

    where: str
    """The pool's field path and model, e.g. ``cluster.pools.0 (llama-3-8b)``."""
    context: int
    """Most prompt + output tokens of one request (the model's ``max_position_embeddings``)."""
    prompt: int
    """Most prompt tokens of one request (``max_num_batched_tokens`` for the vLLM scheduler,
    which does not chunk prompts; otherwise ``context``)."""

    def fits(self, prompt: int, output: int) -> bool:
        """Whether a request of ``prompt`` and ``output`` tokens can ever run here."""
        return prompt + output <= self.context and prompt <= self.prompt


def pool_contexts(scenario: Scenario) -> list[PoolContext]:
    """The ``PoolContext`` of every pool whose model is known (unknown names are reported when the
    cluster is resolved)."""
    from fleetwise.catalog import builtin_models

    models = {**builtin_models(), **scenario.models}
    found = []
    for index, pool in enumerate(scenario.cluster.pools):
        model = models.get(pool.model)
        if model is None:
            continue
        context = model.max_position_embeddings
        prompt = context
        sched = pool.scheduler
        if sched.kind == "vllm":
            prompt = min(context, sched.batched_tokens(context))
        found.append(PoolContext(f"cluster.pools.{index} ({pool.model})", context, prompt))
    return found


def longest_context(scenario: Scenario) -> int | None:
    """The longest context of any pool's model (``None`` when no model is known)."""
    contexts = pool_contexts(scenario)
    return max((c.context for c in contexts), default=None)


def _smallest_request(scenario: Scenario) -> tuple[str, int, int] | None:
    """The field that sets the shortest generated request, and its prompt and output tokens, for
    the length distributions with a known minimum (``None`` for the others)."""
    lengths = scenario.workload.lengths
    kind = getattr(lengths, "kind", None)
    if kind == "constant":
        return "workload.lengths.prompt", lengths.prompt, lengths.output
    if kind == "uniform":
        return "workload.lengths.prompt_min", lengths.prompt_min, lengths.output_min
    return None


def check_workload_fits(scenario: Scenario) -> None:
    """Raise ``ConfigError`` (naming the scenario's file, the field and the pools' limits) when the
    generated requests can run on no pool: the shortest request of a ``constant`` or ``uniform``
    length distribution, or any request with a shared prefix (``prefixes.prefix_tokens``)."""
    from fleetwise.errors import ConfigError

    contexts = pool_contexts(scenario)
    if not contexts:
        return
    smallest = _smallest_request(scenario)
    field, prompt, output = smallest if smallest is not None else (None, 1, 1)
    checks = [] if field is None else [(field, prompt, output)]
    prefixes = scenario.workload.prefixes
    if prefixes is not None and prefixes.fraction > 0:
        checks.append(("workload.prefixes.prefix_tokens", prompt + prefixes.prefix_tokens, output))
    for field, prompt, output in checks:
        if any(c.fits(prompt, output) for c in contexts):
            continue
        limits = "; ".join(
            f"{c.where}: prompt + output <= {c.context}"
            + (f", prompt <= {c.prompt} (max_num_batched_tokens)" if c.prompt < c.context else "")
            for c in contexts
        )
        source = scenario.source or "<scenario>"
        shared = " (shared prefix included)" if field.startswith("workload.prefixes") else ""
        raise ConfigError(
            f"{source}: {field}: a request of {prompt} prompt{shared} + {output} output tokens fits no "
            f"pool's model, so every such request would be rejected; allowed: {limits}"
        )
