"""Speculative decoding in the reference model, for acceptance rates of 0 or 1 only (so that the
accepted count needs no random draw): which decodes speculate, their KV lookahead, the step's
time, the accepted tokens and the proposer's share of the memory; acceptance classes (requests
drawn into classes by the run's seed and their index, as the core draws them: SplitMix64 written
out here)."""

from __future__ import annotations

import json

from fleetwise.cost import cost_model

MASK = (1 << 64) - 1
DECAY = 63 / 64
"""The weight of a step's observations relative to the next step's (the core's HISTORY_DECAY)."""
CLASS_STREAM = "speculative acceptance class"


def uniform_at(seed: int, name: str, index: int) -> float:
    """The core's stateless draw for item ``index`` of stream ``name``: SplitMix64's output from
    the stream's seed advanced ``index + 1`` times, as a float in [0, 1)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    rot = ((h << 17) | (h >> 47)) & MASK
    state = ((seed ^ rot) + index * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    return (z >> 11) * (1.0 / (1 << 53))


class ReferenceSpeculation:
    """A speculating pool's proposer as the reference applies it (docs/speculative-decoding.md):
    each decode proposes min(k, output left - 1, token budget left) tokens, shortened until its
    lookahead blocks are free, and its 1 + k tokens count against the scheduler's token budget;
    position i is accepted iff rates[0..=i] are all 1. With a token tree, k is its node count
    and a grant speculates the whole levels it holds (positions are levels)."""

    def __init__(self, pool: dict, seed: int = 0, named: list | None = None) -> None:
        """The ``speculative`` section of ``pool`` (core JSON) in the run seeded with ``seed``,
        ``named`` the workload's class name of each request (None: drawn); refuses rates other
        than 0 and 1."""
        spec = pool["speculative"]
        self.json = json.dumps(spec)
        k = spec["num_speculative_tokens"]
        # A token tree's nodes down to each level (its rates are per level); a chain's positions.
        tree = spec.get("speculative_token_tree") or []
        self.levels = [sum(len(p) <= d for p in tree) for d in range(1, max(map(len, tree), default=0) + 1)] or list(range(1, k + 1))
        given = [(1.0, spec["acceptance_rate"])] if spec.get("acceptance_classes") is None else [(c["share"], c["acceptance_rate"]) for c in spec["acceptance_classes"]]
        self.class_rates = [list(a) if isinstance(a, list) else [a] * len(self.levels) for _, a in given]
        self.upto = [sum(share for share, _ in given[:c + 1]) for c in range(len(given))]
        self.seed = seed
        # Each request's class by the name the workload gives it (a class is labelled by its name,
        # or "class i"), None where it is drawn.
        labels = [c.get("name") or f"class {i}" for i, c in enumerate(spec.get("acceptance_classes") or [])]
        self.named = None if named is None or len(labels) < 2 else [None if n is None else labels.index(n) for n in named]
        # The most draft tokens a request of each class proposes (a class's shorter drafts).
        self.class_k = [k if spec.get("acceptance_classes") is None else c.get("num_speculative_tokens") or k for c in (spec.get("acceptance_classes") or [{}])]
        # Each class's cap on the grant of the step formed: its own k, or under adaptive
        # verification with several classes its verified k (None: no cap by class).
        self.caps: list[int] | None = self.class_k if min(self.class_k) < k else None
        # Dynamic speculation: k by the requests the previous step scheduled ([start, end, k]).
        self.table = spec.get("num_speculative_tokens_per_batch_size") or []
        # Adaptive verification: k verified chosen for the next step's decodes by tokens per ns.
        self.adaptive = bool(spec.get("enable_adaptive_verification"))
        # Learning from history: decayed verified and accepted slots by position (DECAY a step).
        self.history = None if spec.get("adaptive_estimate", "request") != "history" else ([0.0] * len(self.levels), [0.0] * len(self.levels))
        # The context candidate steps are priced at (None: each decode's own).
        self.profile_context = spec.get("adaptive_profile_context")
        self.k_now = k
        self.syncing = False
        if any(r not in (0.0, 1.0) for rates in self.class_rates for r in rates) or spec["method"] != "draft":
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
            cap = self.k_now if self.caps is None else min(self.k_now, self.caps[self.class_of(req.index)])
            want = min(cap, req.output - req.generated - 1)
            if budget is not None:
                want = min(want, budget - used)
            req.draft = 0
            for ki in range(want, 0, -1):
                if inst.grow(req, 1 + ki):
                    req.draft = ki
                    break
            used += req.draft
        return used

    def class_of(self, index: int) -> int:
        """The acceptance class of request ``index``: the one the workload names, else the first
        whose cumulative share exceeds its draw (0 without a draw for one class)."""
        if len(self.upto) == 1:
            return 0
        if self.named is not None and self.named[index] is not None:
            return self.named[index]
        u = uniform_at(self.seed, CLASS_STREAM, index)
        return next((c for c, upto in enumerate(self.upto) if u < upto), len(self.upto) - 1)

    def plan(self, inst, items) -> list[int]:
        """The accepted draft tokens of every item (0 for prefill chunks and decodes proposing
        nothing), from the drafts the scheduler granted and the request's class's rates; sets the
        draft lengths the step's time needs in ``self.drafts`` (and in ``self.syncing`` whether the
        step was formed with k = 0, its decodes then running through one proposer step; in
        ``self.unverified`` the decodes of a class adaptive verification verifies none of); sets
        the next step's k."""
        self.drafts = [req.draft if decode and n == 1 else 0 for req, n, decode in items]
        # The levels a grant holds (a chain's: every token; a tree's: its whole levels); a grant
        # holding none is a plain decode.
        depths = [sum(upto <= k for upto in self.levels) for k in self.drafts]
        self.drafts = [k if d else 0 for k, d in zip(self.drafts, depths)]
        self.syncing = self.k_now == 0
        classes = [self.class_of(r.index) for r, _, _ in items]
        self.unverified = [self.caps is not None and self.caps[c] == 0 for c in classes]
        accepted = [next((i for i, r in enumerate(self.class_rates[c][:d]) if r != 1.0), d) for c, d in zip(classes, depths)]
        if self.adaptive:
            # The next step's decodes (this step's and the prompts it completes), at their cached
            # tokens once it ends, with their classes; the plan with the most tokens per ns.
            decodes = [(r.computed + n if self.profile_context is None else self.profile_context, c) for (r, n, _), c in zip(items, classes) if r.computed + n == r.known]
            if self.history is not None:
                self.observe([(d, a) for d, a in zip(depths, accepted) if d > 0])
                plan = self.history_plan(inst.cost, decodes)
            else:
                plan = self.adaptive_plan(inst.cost, decodes)
            self.k_now = max(plan)
            self.caps = plan if len(plan) > 1 else None
            return accepted
        self.caps = self.class_k if min(self.class_k) < self.levels[-1] else None
        # The k of the last range starting at or below the batch size (vLLM carries a range's k
        # over the gap after it and past the last range); the full k after an empty step.
        self.k_now = next((k for start, _, k in sorted(self.table, reverse=True) if start <= len(items)), self.levels[-1]) if items else self.levels[-1]
        return accepted

    def observe(self, verified: list[tuple[int, int]]) -> None:
        """Folds one step's (verified depth, accepted) pairs into the history: the older counts
        weighted DECAY less, then the step's added; a step verifying nothing changes nothing."""
        if not verified:
            return
        ver, acc = self.history
        for i in range(len(ver)):
            ver[i] = ver[i] * DECAY + sum(d > i for d, _ in verified)
            acc[i] = acc[i] * DECAY + sum(d > i and a > i for d, a in verified)

    def history_plan(self, cost, decodes: list[tuple[int, int]]) -> list[int]:
        """The draft tokens verified by each class's decodes when every slot is scored by the
        history's survival ((accepted + 1) / (verified + 1) by position, never rising): of j = 0..k (each class at most its own k), the one with the most
        expected tokens (1 + the survivals of the slots verified) per ns, the smallest on a tie."""
        if not decodes:
            return list(self.class_k)
        survival, s = [], 1.0
        for v, a in zip(*self.history):
            s = min(s, (a + 1.0) / (v + 1.0))
            survival.append(s)
        plans: list[list[int]] = []
        for j in range(self.levels[-1] + 1):
            plan = [min(j, kc) for kc in self.class_k]
            if not plans or plans[-1] != plan:
                plans.append(plan)
        count = [sum(c == x for _, c in decodes) for x in range(len(self.class_rates))]
        best, best_rate = plans[0], float("-inf")
        for plan in plans:
            ns = max(1, cost.speculative_step_ns(self.json, speculating=[(cached, plan[c]) for cached, c in decodes]))
            tokens = 0.0
            for c in range(len(self.class_rates)):
                if count[c]:
                    t = 1.0
                    for x in survival[:plan[c]]:
                        t += x
                    tokens += count[c] / len(decodes) * t
            if tokens / ns > best_rate:
                best, best_rate = plan, tokens / ns
        return best

    def adaptive_plan(self, cost, decodes: list[tuple[int, int]]) -> list[int]:
        """Adaptive verification's draft tokens verified by each class's decodes in a step of
        ``decodes`` (cached tokens, class): of the cut-offs of the slots ranked by survival
        probability (then position), nothing verified first, the one with the most expected
        tokens (1 + the leading accepted positions verified, by class share of the decodes) per
        ns of that step, the earliest on a tie; each class's own k with none."""
        if not decodes:
            return list(self.class_k)
        survival = [[float(all(r == 1.0 for r in rates[:i + 1])) for i in range(kc)] for rates, kc in zip(self.class_rates, self.class_k)]
        present = sorted({c for _, c in decodes})
        cuts = sorted({(s, i + 1) for c in present for i, s in enumerate(survival[c])}, key=lambda x: (-x[0], x[1]))
        plans = [[0] * len(self.class_rates)]
        for s, p in cuts:
            plan = [sum(si > s or (si == s and i < p) for i, si in enumerate(sv)) for sv in survival]
            if plan != plans[-1]:
                plans.append(plan)
        count = [sum(c == x for _, c in decodes) for x in range(len(self.class_rates))]
        best, best_rate = plans[0], float("-inf")
        for plan in plans:
            ns = max(1, cost.speculative_step_ns(self.json, speculating=[(cached, plan[c]) for cached, c in decodes]))
            tokens = sum(count[c] / len(decodes) * (1 + next((i for i, r in enumerate(self.class_rates[c][:plan[c]]) if r != 1.0), plan[c])) for c in range(len(self.class_rates)) if count[c])
            if tokens / ns > best_rate:
                best, best_rate = plan, tokens / ns
        return best

    def duration(self, cost, items) -> int:
        """The step's integer ns from the core's cost model: plain items as they are, speculating
        decodes as (cached tokens, draft tokens)."""
        plain = [(it, u) for it, k, u in zip(items, self.drafts, self.unverified) if k == 0]
        # A step formed with k = 0 verifies its decodes plainly and runs the proposer over them
        # (so does a class adaptive verification verifies none of).
        syncing = [(r.computed, 0) for (r, n, decode), u in plain if decode and n == 1 and (self.syncing or u)]
        return cost.speculative_step_ns(
            self.json,
            prefills=[(n, r.computed, r.computed + n == r.known) for (r, n, decode), _ in plain if not decode],
            decodes=[r.computed + 1 for (r, n, decode), u in plain if decode and not ((self.syncing or u) and n == 1)],
            speculating=[(r.computed, k) for (r, _, _), k in zip(items, self.drafts) if k > 0] + syncing,
        )
