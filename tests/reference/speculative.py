"""Speculative decoding in the reference model, for acceptance rates of 0 or 1 only (so that the
accepted count needs no random draw): which decodes speculate, their KV lookahead, the step's
time, the accepted tokens and the proposer's share of the memory."""

from __future__ import annotations

import json

from fleetwise.cost import cost_model


class ReferenceSpeculation:
    """A speculating pool's proposer as the reference applies it (docs/speculative-decoding.md):
    each decode proposes min(k, output left - 1, token budget left) tokens, shortened until its
    lookahead blocks are free, and its 1 + k tokens count against the scheduler's token budget;
    position i is accepted iff rates[0..=i] are all 1. With a token tree, k is its node count
    and a grant speculates the whole levels it holds (positions are levels)."""

    def __init__(self, pool: dict) -> None:
        """The ``speculative`` section of ``pool`` (core JSON); refuses rates other than 0 and 1."""
        spec = pool["speculative"]
        self.json = json.dumps(spec)
        k = spec["num_speculative_tokens"]
        a = spec["acceptance_rate"]
        # A token tree's nodes down to each level (its rates are per level); a chain's positions.
        tree = spec.get("speculative_token_tree") or []
        self.levels = [sum(len(p) <= d for p in tree) for d in range(1, max(map(len, tree), default=0) + 1)] or list(range(1, k + 1))
        self.rates = list(a) if isinstance(a, list) else [a] * len(self.levels)
        # Dynamic speculation: k by the requests the previous step scheduled ([start, end, k]).
        self.table = spec.get("num_speculative_tokens_per_batch_size") or []
        # Adaptive verification: k verified chosen for the next step's decodes by tokens per ns.
        self.adaptive = bool(spec.get("enable_adaptive_verification"))
        self.k_now = k
        self.syncing = False
        if any(r not in (0.0, 1.0) for r in self.rates) or spec["method"] != "draft":
            raise ValueError("the reference model speculates with a draft model and acceptance rates of 0 or 1 only")
        # The draft's weights in 16 bits, its KV in the pool's KV format (one cache dtype, as vLLM).
        kv_format = {"kv_cache": (pool.get("quantization") or {}).get("kv_cache", "bf16")}
        draft = cost_model(spec["draft_model"], pool["gpu"], calibration=pool["calibration"], tp=pool["parallelism"]["tp"], quantization=kv_format)
        self.draft_weight_bytes = draft.weight_bytes_per_gpu()
        self.draft_kv_bytes_per_token = draft.kv_bytes_per_token()
        # What a speculating prefill instance sends per prompt token beside the target's KV.
        self.draft_kv_bytes_per_token_whole_model = cost_model(spec["draft_model"], pool["gpu"], calibration=pool["calibration"], quantization=kv_format).kv_bytes_per_token()

    def num_blocks(self, plan: dict) -> int:
        """The KV blocks left once the draft's weights and its KV per token share the cache."""
        weights = plan["weight_bytes"] + self.draft_weight_bytes
        block_bytes = (plan["kv_bytes_per_token"] + self.draft_kv_bytes_per_token) * plan["block_size"]
        return (plan["usable_bytes"] - weights - plan["activation_bytes"]) // block_bytes

    def grant(self, inst, items, budget: int | None) -> int:
        """Grants draft tokens to the decodes among ``items``, in order, as the schedulers do
        before any prefill chunk: each proposes min(k, output left - 1, budget left) tokens,
        shortened until its lookahead blocks are free (no watermark); ``budget`` (None: no
        budget) counts the draft tokens beside the decodes' own. Returns the draft tokens granted."""
        used = 0
        for req, n, decode in items:
            if not (decode and n == 1):
                continue
            want = min(self.k_now, req.output - req.generated - 1)
            if budget is not None:
                want = min(want, budget - used)
            req.draft = 0
            for ki in range(want, 0, -1):
                if inst.grow(req, 1 + ki):
                    req.draft = ki
                    break
            used += req.draft
        return used

    def plan(self, inst, items) -> list[int]:
        """The accepted draft tokens of every item (0 for prefill chunks and decodes proposing
        nothing), from the drafts the scheduler granted; sets the draft lengths the step's time
        needs in ``self.drafts`` (and in ``self.syncing`` whether the step was formed with k = 0,
        its decodes then running through one proposer step); sets the next step's k."""
        self.drafts = [req.draft if decode and n == 1 else 0 for req, n, decode in items]
        # The levels a grant holds (a chain's: every token; a tree's: its whole levels); a grant
        # holding none is a plain decode.
        depths = [sum(upto <= k for upto in self.levels) for k in self.drafts]
        self.drafts = [k if d else 0 for k, d in zip(self.drafts, depths)]
        self.syncing = self.k_now == 0
        if self.adaptive:
            # The next step's decodes (this step's and the prompts it completes), at their cached
            # tokens once it ends; the j of 0..k with the most tokens per ns of a step of them.
            self.k_now = self.adaptive_k(inst.cost, [r.computed + n for r, n, _ in items if r.computed + n == r.known])
            return [next((i for i, r in enumerate(self.rates[:d]) if r != 1.0), d) for d in depths]
        # The k of the last range starting at or below the batch size (vLLM carries a range's k
        # over the gap after it and past the last range); the full k after an empty step.
        self.k_now = next((k for start, _, k in sorted(self.table, reverse=True) if start <= len(items)), self.levels[-1]) if items else self.levels[-1]
        return [next((i for i, r in enumerate(self.rates[:d]) if r != 1.0), d) for d in depths]

    def adaptive_k(self, cost, cached: list[int]) -> int:
        """Adaptive verification's draft tokens verified per decode in a step of decodes at
        ``cached`` tokens: the j with the most expected tokens (1 + the leading accepted
        positions among the first j) per ns of that step, the smallest on a tie; k with none."""
        k = self.levels[-1]
        if not cached:
            return k
        best, best_rate = 0, float("-inf")
        for j in range(k + 1):
            ns = max(1, cost.speculative_step_ns(self.json, speculating=[(c, j) for c in cached]))
            tokens = 1 + next((i for i, r in enumerate(self.rates[:j]) if r != 1.0), j)
            if tokens / ns > best_rate:
                best, best_rate = j, tokens / ns
        return best

    def duration(self, cost, items) -> int:
        """The step's integer ns from the core's cost model: plain items as they are, speculating
        decodes as (cached tokens, draft tokens)."""
        plain = [(it, k) for it, k in zip(items, self.drafts) if k == 0]
        # A step formed with k = 0 verifies its decodes plainly and runs the proposer over them.
        syncing = [(r.computed, 0) for (r, n, decode), _ in plain if decode and n == 1] if self.syncing else []
        return cost.speculative_step_ns(
            self.json,
            prefills=[(n, r.computed, r.computed + n == r.known) for (r, n, decode), _ in plain if not decode],
            decodes=[r.computed + 1 for (r, n, decode), _ in plain if decode and not (self.syncing and n == 1)],
            speculating=[(r.computed, k) for (r, _, _), k in zip(items, self.drafts) if k > 0] + syncing,
        )
