"""A pool's ``speculative``: speculative decoding as vLLM's ``--speculative-config`` sets it
(docs/speculative-decoding.md)."""

from __future__ import annotations

import ast
import warnings
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fleetwise.config.base import FieldError, StrictModel
from fleetwise.config.limits import MAX_TOKENS

MAX_SPECULATIVE_TOKENS = 16
"""The largest ``num_speculative_tokens`` accepted (the core's ``MAX_SPECULATIVE_TOKENS``)."""
MAX_SUFFIX_TOKENS = 32
"""The largest ``num_speculative_tokens`` of suffix decoding (the core's ``MAX_SUFFIX_TOKENS``; vLLM's default)."""
MAX_TREE_NODES = 64
"""The most nodes a ``speculative_token_tree`` may hold (the core's ``MAX_TREE_NODES``)."""
MAX_ACCEPTANCE_CLASSES = 16
"""The most ``acceptance_classes`` a pool may give (the core's ``MAX_ACCEPTANCE_CLASSES``)."""
MAX_BATCH_SIZE = 2**32 - 1
"""The largest batch size a ``num_speculative_tokens_per_batch_size`` range may name (the core's u32)."""


class AcceptanceClass(StrictModel):
    """A class of requests with acceptance rates of their own (``acceptance_classes``): code and
    structured output accept more draft tokens than open-ended chat. Each request is drawn into a
    class once, by the run's seed and its index, so it keeps its class on every pool."""

    name: str | None = Field(default=None, min_length=1)
    """A label for reports (``code``, ``chat``); optional."""
    share: float = Field(gt=0.0, le=1.0)
    """The fraction of requests in the class, in (0, 1]; the classes' shares sum to 1."""
    acceptance_rate: float | list[float]
    """The class's acceptance rates, as ``acceptance_rate`` gives them (one number, or one per position)."""
    num_speculative_tokens: int | None = Field(default=None, ge=1)
    """The most draft tokens a request of the class proposes a step: 1 to the pool's
    ``num_speculative_tokens`` (which it is unless given); not with a token tree. Suffix
    decoding's and n-gram matches' shorter drafts for requests whose matches are short."""


class SpeculativeConfig(StrictModel):
    """Speculative decoding: each decode step a proposer drafts ``num_speculative_tokens`` (k)
    tokens one after another, then the model verifies them all in one pass and keeps the accepted
    prefix plus its own next token.

    ``method: draft`` runs a smaller ``draft_model`` (catalogue or the scenario's ``models``; it
    must share the target's tokenizer) on the same GPUs; ``eagle`` and ``mtp`` run a head of one
    target-shaped decoder layer and the target's LM head per draft step; ``eagle3`` an EAGLE-3
    head: one dense decoder layer with its own LM head of ``draft_vocab_size`` rows (32,000), or
    the head ``draft_model`` names (its checkpoint's ``config.json`` through ``hf_config``);
    ``ngram`` looks the sequence's last tokens up in its context on the CPU (no model, no GPU
    time), drafting in a step with probability ``proposal_rate``; ``suffix`` is vLLM's suffix
    decoding (its Model Runner V2 form): the sequence's longest suffix match against its prompt,
    its output and earlier responses, looked up on the GPUs (not charged), always k draft tokens
    (up to 32), no model. ``acceptance_rate`` is
    the probability that a draft token is accepted given every earlier one was: one number for
    every position, or a list of k (vLLM reports it per position); ``acceptance_classes`` instead
    gives classes of requests their own rates.
    """

    method: Literal["draft", "eagle", "eagle3", "mtp", "ngram", "suffix"]
    """Proposer: a draft model, an EAGLE or EAGLE-3 head, the model's multi-token-prediction layers,
    n-gram (prompt lookup) matching, or suffix decoding."""
    draft_model: str | None = Field(default=None, min_length=1)
    """The draft model (method ``draft``), or the EAGLE-3 head's own shape (``eagle3``, optional)."""
    num_speculative_tokens: int = Field(ge=1, le=MAX_TREE_NODES)
    """Draft tokens proposed per step, k (1 to 16; suffix decoding up to 32; a token tree's nodes, up to 64)."""
    acceptance_rate: float | list[float] | None = None
    """Acceptance probability of each draft position given the earlier ones were accepted, in
    [0, 1]: one number, or a list of ``num_speculative_tokens`` numbers, the same for every
    request. vLLM's logged per-position rates p_i are unconditional: give a_1 = p_1,
    a_i = p_i / p_(i-1) (docs/speculative-decoding.md). Required unless ``acceptance_classes`` is given."""
    acceptance_classes: list[AcceptanceClass] | None = Field(default=None, min_length=1, max_length=MAX_ACCEPTANCE_CLASSES)
    """Acceptance that differs by request, instead of ``acceptance_rate``: classes of requests,
    each with its ``share`` of the requests (summing to 1) and its own ``acceptance_rate``."""
    draft_vocab_size: int | None = Field(default=None, ge=1)
    """Rows of an EAGLE-3 head's own LM head (method ``eagle3`` only): 32,000 unless given, or the
    ``draft_model`` head's vocabulary."""
    proposal_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    """The probability that a decode's n-gram lookup finds a match in a step and proposes its
    draft tokens (method ``ngram`` only; 1 unless given); without a match the step is a plain decode."""
    num_speculative_tokens_per_batch_size: list[tuple[int, int, int]] | None = None
    """Dynamic speculative decoding (vLLM's setting of that name): ``[start, end, k]`` entries, k
    draft tokens (0 to ``num_speculative_tokens``) in a step after one that scheduled start to end
    requests. Ranges may not overlap and the first starts at 1; between ranges and past the last,
    the k of the range before (vLLM's schedule carries it forward)."""
    speculative_token_tree: list[list[int]] | None = None
    """Tree speculation (the setting of that name in vLLM 0.10.2 to early 2026; methods ``draft``, ``eagle`` and ``eagle3``):
    the draft tree's nodes as paths of child ranks, level by level (``[[0], [1], [0, 0], [1, 0]]``,
    or vLLM's string ``"[(0,), (1,), (0, 0), (1, 0)]"``), every node of a level with the same
    number of children. ``num_speculative_tokens`` is its node count; ``acceptance_rate`` is per
    level: the probability that one of a level's candidates is accepted given the path above it was."""
    enable_adaptive_verification: bool = False
    """Adaptive verification (vLLM's setting of that name): the proposer drafts all k tokens every
    step, and the verify pass checks only the first j of them, j (0 to k) chosen after each step
    for the next to give that step's decodes the most expected tokens per second. For a chain of
    a model proposer (``draft``, ``eagle``, ``eagle3``, ``mtp``) or of ``suffix``; not beside
    ``num_speculative_tokens_per_batch_size`` (docs/speculative-decoding.md)."""
    adaptive_estimate: Literal["request", "history"] = "request"
    """What adaptive verification scores the draft slots by: ``request``, each request's own rates
    (its acceptance class's, as a confidence head estimates them; vLLM's DSpark proposers), each
    class verifying its own number; ``history``, the survival of each draft position the instance
    has observed over its recent steps (vLLM's DFlash proposers), one number for every decode.
    Needs ``enable_adaptive_verification``."""
    draft_lengths: list[float] | None = Field(default=None, min_length=1)
    """Draft lengths that vary step by step (``ngram``, ``suffix``: a match continues for 1 to k
    tokens): the probability that a proposal holds exactly i tokens, i = 1..k, summing to 1 (vLLM
    reports the mean, draft tokens / drafts). ``None``: every proposal holds all k (as the
    scheduler grants them). Under adaptive verification each slot's survival is weighed by the
    chance a proposal reaches it."""
    adaptive_profile_context: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    """The context, in tokens, at which adaptive verification prices its candidate steps: vLLM
    profiles its cost table once at startup at one context (``VLLM_ADAPTIVE_VERIFICATION_PROFILE_CONTEXT_LEN``,
    8192 by default), whatever the contexts served. ``None``: each step priced at its decodes' own
    contexts. Needs ``enable_adaptive_verification``."""

    @field_validator("speculative_token_tree", mode="before")
    @classmethod
    def _tree_from_vllm_string(cls, tree):
        """vLLM's string form (a Python literal of tuples) read as a list of paths; a boolean in a
        path is an error, not 1 or 0."""
        if isinstance(tree, str):
            try:
                tree = ast.literal_eval(tree)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
                raise ValueError(f"{tree!r} is not a list of paths such as \"[(0,), (1,), (0, 0)]\" ({type(e).__name__})") from None
        if isinstance(tree, (list, tuple)):
            tree = [list(node) if isinstance(node, tuple) else node for node in tree]
            for i, node in enumerate(tree):
                for j, x in enumerate(node if isinstance(node, list) else []):
                    if isinstance(x, bool):
                        raise FieldError(f"{i}.{j}", f"{str(x).lower()}, a boolean, where a child rank is expected")
        return tree

    @field_validator("num_speculative_tokens_per_batch_size", mode="before")
    @classmethod
    def _integers_in_entries(cls, table):
        """``true``/``false`` in an entry is an error, not 1 or 0 (pydantic's lax mode would take it)."""
        for i, entry in enumerate(table if isinstance(table, list) else []):
            for j, x in enumerate(entry if isinstance(entry, (list, tuple)) else []):
                if isinstance(x, bool):
                    raise FieldError(f"{i}.{j}", f"{str(x).lower()}, a boolean, where an integer is expected")
        return table

    @model_validator(mode="after")
    def _consistent(self) -> SpeculativeConfig:
        """Refuses rates outside [0, 1], a chain longer than its method drafts, a per-position
        list of the wrong length, a draft model with the wrong method (or none with ``draft``),
        settings of another method, two classes with one label, and adaptive verification beside a
        batch-size table, a token tree or an n-gram proposer."""
        if self.acceptance_rate is None and self.acceptance_classes is None:
            raise ValueError("acceptance_rate is required (or acceptance_classes: rates by class of request)")
        if self.acceptance_rate is not None and self.acceptance_classes is not None:
            raise ValueError("give acceptance_rate (every request alike) or acceptance_classes (rates by class of request), not both")
        if self.acceptance_classes is not None:
            total = sum(c.share for c in self.acceptance_classes)
            if abs(total - 1.0) > 1e-6:
                raise FieldError("acceptance_classes", f"the shares must sum to 1, got {total:g}")
            labels = [cls.name or f"class {c}" for c, cls in enumerate(self.acceptance_classes)]
            for c, label in enumerate(labels):
                if label in labels[:c]:
                    raise FieldError(f"acceptance_classes.{c}.name", f"{label!r} already labels class {labels.index(label)}: every class needs its own label "
                                     "(a trace and the request table name classes by it)")
            for c, cls in enumerate(self.acceptance_classes):
                if cls.num_speculative_tokens is not None and self.speculative_token_tree is not None:
                    raise FieldError(f"acceptance_classes.{c}.num_speculative_tokens", "applies to a chain of draft tokens, not a speculative_token_tree")
                if cls.num_speculative_tokens is not None and cls.num_speculative_tokens > self.num_speculative_tokens:
                    raise FieldError(f"acceptance_classes.{c}.num_speculative_tokens", f"must be 1 to the pool's num_speculative_tokens ({self.num_speculative_tokens}), got {cls.num_speculative_tokens}")
        chain = MAX_SUFFIX_TOKENS if self.method == "suffix" else MAX_SPECULATIVE_TOKENS
        if self.speculative_token_tree is None and self.num_speculative_tokens > chain:
            raise ValueError(f"num_speculative_tokens: a chain of method {self.method} drafts 1 to {chain} tokens, got {self.num_speculative_tokens} "
                             f"(suffix decoding up to {MAX_SUFFIX_TOKENS}, a speculative_token_tree up to {MAX_TREE_NODES} nodes)")
        levels = len(self.tree_levels())
        for where, a in self._given_rates():
            self._check_rates(where, a, levels)
        if self.method == "draft" and self.draft_model is None:
            raise ValueError("method draft needs draft_model (a catalogue model sharing the target's tokenizer, e.g. llama-3-8b for llama-3-70b)")
        if self.method in ("eagle", "mtp", "ngram", "suffix") and self.draft_model is not None:
            what = f"{self.method} runs no model" if self.method in ("ngram", "suffix") else f"{self.method} heads are layers of the target's shape"
            raise ValueError(f"draft_model applies to methods draft and eagle3 only; {what}")
        if self.draft_lengths is not None:
            self._check_draft_lengths()
        if self.method != "ngram" and self.proposal_rate is not None:
            raise ValueError(f"proposal_rate applies to method ngram only (how often its lookup finds a match), not {self.method}")
        if self.method != "eagle3" and self.draft_vocab_size is not None:
            raise ValueError(f"draft_vocab_size applies to method eagle3 only (an EAGLE-3 head's own LM head), not {self.method}")
        self._check_batch_size_table()
        if self.adaptive_estimate != "request" and not self.enable_adaptive_verification:
            raise FieldError("adaptive_estimate", "applies to adaptive verification: set enable_adaptive_verification: true")
        if self.adaptive_profile_context is not None and not self.enable_adaptive_verification:
            raise FieldError("adaptive_profile_context", "applies to adaptive verification: set enable_adaptive_verification: true")
        if self.enable_adaptive_verification:
            if self.num_speculative_tokens_per_batch_size is not None:
                raise ValueError("enable_adaptive_verification cannot be combined with num_speculative_tokens_per_batch_size (both choose how many draft tokens a step verifies)")
            if self.speculative_token_tree is not None:
                raise ValueError("enable_adaptive_verification applies to a chain of draft tokens, not a speculative_token_tree")
            if self.method == "ngram":
                raise ValueError("enable_adaptive_verification applies to model proposers (draft, eagle, eagle3, mtp) and suffix, not ngram "
                                 "(vLLM scores the drafts of models and suffix decoding only)")
        return self

    def _check_draft_lengths(self) -> None:
        """Refuses ``draft_lengths`` on a model proposer, of a length other than k, or with
        probabilities outside [0, 1] or not summing to 1."""
        lengths = self.draft_lengths
        if self.method not in ("ngram", "suffix"):
            raise FieldError("draft_lengths", f"applies to model-free proposers (ngram, suffix), whose matches vary in length; method {self.method} drafts all k")
        if len(lengths) != self.num_speculative_tokens:
            raise FieldError("draft_lengths", f"needs one probability per length 1..k ({self.num_speculative_tokens}), got {len(lengths)}")
        for i, p in enumerate(lengths):
            if not 0.0 <= p <= 1.0:
                raise FieldError(f"draft_lengths.{i}", f"must be a probability in [0, 1], got {p!r}")
        if abs(sum(lengths) - 1.0) > 1e-6:
            raise FieldError("draft_lengths", f"the probabilities must sum to 1, got {sum(lengths):g}")

    def _given_rates(self) -> list[tuple[str, float | list[float]]]:
        """Each ``acceptance_rate`` given, with the field path naming it."""
        if self.acceptance_classes is None:
            return [("acceptance_rate", self.acceptance_rate)]
        return [(f"acceptance_classes[{c}].acceptance_rate", cls.acceptance_rate) for c, cls in enumerate(self.acceptance_classes)]

    def _check_rates(self, where: str, a: float | list[float], levels: int) -> None:
        """Refuses a rate outside [0, 1] or a list of the wrong length (``where`` names the field)."""
        rates = a if isinstance(a, list) else [a]
        for i, x in enumerate(rates):
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"{where}{f'[{i}]' if isinstance(a, list) else ''} must be a probability in [0, 1], got {x}")
        if isinstance(a, list) and self.speculative_token_tree is not None and len(rates) != levels:
            raise ValueError(f"{where}: a per-level list needs one rate per level of speculative_token_tree ({levels}), got {len(rates)}")
        if isinstance(a, list) and self.speculative_token_tree is None and len(rates) != self.num_speculative_tokens:
            raise ValueError(f"{where}: a per-position list needs num_speculative_tokens = {self.num_speculative_tokens} rates, got {len(rates)}")

    def tree_levels(self) -> list[int]:
        """The token tree's nodes down to each level, cumulative (``[2, 6]`` for two candidates
        per node over two levels; empty without a tree), its nodes in any order (vLLM sorts them
        breadth first). Raises ``ValueError`` naming the node on an empty path or a negative
        rank, a missing parent, a repeated node, a level whose nodes have different numbers of
        children (ranked from 0), a method that cannot draft a tree, a batch-size table beside
        it, or a node count other than ``num_speculative_tokens``."""
        tree = self.speculative_token_tree
        if tree is None:
            return []
        where = "speculative_token_tree"
        if self.method not in ("draft", "eagle", "eagle3"):
            raise ValueError(f"{where} applies to methods draft, eagle and eagle3 (a model drafting the tree level by level), not {self.method}")
        if self.num_speculative_tokens_per_batch_size is not None:
            raise ValueError(f"{where} cannot be combined with num_speculative_tokens_per_batch_size (a tree's levels are fixed)")
        if not 1 <= len(tree) <= MAX_TREE_NODES:
            raise ValueError(f"{where} needs 1 to {MAX_TREE_NODES} nodes, got {len(tree)}")
        if len(tree) != self.num_speculative_tokens:
            raise ValueError(f"num_speculative_tokens must be the number of nodes of speculative_token_tree ({len(tree)}), got {self.num_speculative_tokens}")
        paths = [tuple(node) for node in tree]
        width = [0] * max(map(len, paths))
        for i, path in enumerate(paths):
            if not path or any(r < 0 for r in path):
                raise ValueError(f"{where}[{i}]: {tree[i]}: a node is a non-empty path of child ranks (0 or more) from the root")
            if path in paths[:i]:
                raise ValueError(f"{where}[{i}]: {tree[i]} is listed twice")
            if len(path) > 1 and path[:-1] not in paths:
                raise ValueError(f"{where}[{i}]: {tree[i]}: its parent {list(path[:-1])} is not in the tree")
            width[len(path) - 1] += 1
        for level, w in enumerate(width):
            parents = width[level - 1] if level else 1
            for i, path in enumerate(paths):
                if len(path) == level + 1 and (w % parents or path[level] >= w // parents):
                    raise ValueError(f"{where}[{i}]: {tree[i]}: every node of level {level} needs the same number of children, ranked from 0 ({w} nodes under {parents} parents)")
        return [sum(width[:level + 1]) for level in range(len(width))]

    def _check_batch_size_table(self) -> None:
        """Refuses an entry with start below 1 or past end, k outside 0 to k, a range
        overlapping an earlier one, and a table without a range from 1 (vLLM's rule)."""
        if self.num_speculative_tokens_per_batch_size == []:
            raise ValueError("num_speculative_tokens_per_batch_size needs at least one [start, end, k] entry")
        table = self.num_speculative_tokens_per_batch_size or []
        for i, (start, end, k) in enumerate(table):
            where = f"num_speculative_tokens_per_batch_size[{i}]"
            if not 1 <= start <= end <= MAX_BATCH_SIZE:
                raise ValueError(f"{where}: [start, end, k] needs 1 <= start <= end <= {MAX_BATCH_SIZE}, got [{start}, {end}, {k}]")
            if not 0 <= k <= self.num_speculative_tokens:
                raise ValueError(f"{where}: k must be 0 to num_speculative_tokens = {self.num_speculative_tokens} (the most draft tokens a step proposes), got {k}")
            for j, (s, e, _) in enumerate(table[:i]):
                if start <= e and s <= end:
                    raise ValueError(f"{where}: [{start}, {end}] overlaps entry {j} [{s}, {e}]")
        first = min((start for start, _, _ in table), default=1)
        if first != 1:
            raise ValueError(f"num_speculative_tokens_per_batch_size: the first range starts at {first}; it must start at 1 (vLLM's rule: every batch size has a k, "
                             "sizes between ranges and past the last taking the k of the range before them)")

    @property
    def proposer(self) -> str:
        """The proposer as a scenario names it: ``draft llama-3-8b``, ``eagle``, ``eagle3 my-head`` or ``mtp``."""
        name = self.method if self.draft_model is None else f"{self.method} {self.draft_model}"
        if self.draft_vocab_size is not None:
            name += f" (draft vocabulary {self.draft_vocab_size})"
        if self.draft_lengths is not None:
            name += f" (proposals of {sum(i * p for i, p in enumerate(self.draft_lengths, 1)):.2f} tokens on average)"
        return name if self.proposal_rate is None else f"{name} (proposal rate {self.proposal_rate})"

    def class_rates(self) -> list[tuple[float, list[float]]]:
        """Each class's share and its acceptance rate at each of the k positions (a token tree's
        levels): one class of share 1 for ``acceptance_rate``."""
        positions = len(self.tree_levels()) or self.num_speculative_tokens
        given = [(1.0, self.acceptance_rate)] if self.acceptance_classes is None else [(c.share, c.acceptance_rate) for c in self.acceptance_classes]
        return [(share, list(a) if isinstance(a, list) else [a] * positions) for share, a in given]

    def expected_tokens_per_step(self) -> float:
        """Tokens one step emits per sequence on average: 1 + sum of a_1 ... a_i over i (for a
        constant rate a, (1 - a^(k+1)) / (1 - a)), over the classes by their shares."""
        out = 0.0
        for share, rates in self.class_rates():
            p, total = 1.0, 1.0
            for a in rates:
                p *= a
                total += p
            out += share * total
        return out

    @property
    def acceptance_label(self) -> str:
        """The acceptance as a report names it: the rate(s), or each class's share and rates."""
        if self.acceptance_classes is None:
            return str(self.acceptance_rate)
        return "; ".join(f"{c.name + ' ' if c.name else ''}{c.share:g} at {c.acceptance_rate}" for c in self.acceptance_classes)

    def core_json(self, draft_model_json: dict | None) -> dict:
        """The core's view (its ``SpeculativeConfig``): these fields, the draft model resolved to
        its core JSON (``draft_model_json``), a token tree breadth first (as vLLM sorts it)."""
        out = {**self.model_dump(), "draft_model": draft_model_json}
        if self.speculative_token_tree is not None:
            out["speculative_token_tree"] = sorted(self.speculative_token_tree, key=lambda p: (len(p), p))
        return out


def parse_speculative(text: str, where: str = "--speculative") -> dict:
    """Reads ``method=draft,draft_model=llama-3-8b,num_speculative_tokens=4,acceptance_rate=0.8``
    (comma-separated KEY=VALUE; per-position rates separated by ``/``: ``acceptance_rate=0.9/0.7``;
    acceptance classes as ``SHARE:RATES`` separated by ``+``: ``acceptance_classes=0.3:0.9+0.7:0.6/0.5/0.4/0.3``;
    a batch-size table as ``START-END:K`` entries: ``num_speculative_tokens_per_batch_size=1-64:4/65-1024:1``;
    a token tree as its children per node at each level: ``speculative_token_tree=2/2``;
    ``enable_adaptive_verification=true``, ``adaptive_estimate=history``, ``adaptive_profile_context=8192``;
    varying draft lengths separated by ``/``: ``draft_lengths=0.5/0.25/0.25``)
    into a ``SpeculativeConfig`` dict; raises ``ConfigError`` naming ``where`` on a malformed item."""
    from fleetwise.errors import ConfigError

    out: dict = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"{where}: expected KEY=VALUE items separated by commas (keys: method, draft_model, num_speculative_tokens, acceptance_rate, acceptance_classes, draft_vocab_size, proposal_rate, num_speculative_tokens_per_batch_size, speculative_token_tree, enable_adaptive_verification, adaptive_estimate, adaptive_profile_context, draft_lengths), got {item!r}")
        if key in out:
            raise ConfigError(f"{where}: {key} given twice")
        if key in ("acceptance_rate", "draft_lengths") and "/" in value:
            out[key] = [v.strip() for v in value.split("/")]
        elif key == "acceptance_classes":
            out[key] = [_acceptance_class(v.strip(), where) for v in value.split("+")]
        elif key == "num_speculative_tokens_per_batch_size":
            out[key] = [_batch_size_entry(v.strip(), where) for v in value.split("/")]
        elif key == "speculative_token_tree":
            out[key] = _tree_of_widths(value, where)
        else:
            out[key] = value
    return out


def _tree_of_widths(text: str, where: str) -> list[list[int]]:
    """``C1/C2/...`` (each level's children per node) as the token tree's paths, level by level:
    ``2/2`` is ``[[0], [1], [0, 0], [0, 1], [1, 0], [1, 1]]``; ``ConfigError`` naming ``where`` on
    a width that is not a positive integer or a tree past the node limit."""
    from fleetwise.errors import ConfigError

    widths = [w.strip() for w in text.split("/")]
    if not all(w.isdigit() and int(w) >= 1 for w in widths):
        raise ConfigError(f"{where}: speculative_token_tree takes each level's children per node separated by '/' (e.g. 2/2), got {text!r}")
    paths: list[list[int]] = [[]]
    tree: list[list[int]] = []
    for w in map(int, widths):
        # Counted before the level is built: a width of 10**9 is refused, not enumerated.
        if len(tree) + len(paths) * w > MAX_TREE_NODES:
            raise ConfigError(f"{where}: speculative_token_tree={text} has more than {MAX_TREE_NODES} nodes")
        paths = [p + [r] for p in paths for r in range(w)]
        tree += paths
    return tree


def _acceptance_class(text: str, where: str) -> dict:
    """``SHARE:A`` or ``SHARE:A1/A2/...`` as an acceptance class (validated as numbers by the
    model); ``ConfigError`` naming ``where`` when it has another shape."""
    from fleetwise.errors import ConfigError

    share, sep, rates = text.partition(":")
    if not (sep and share.strip() and rates.strip()):
        raise ConfigError(f"{where}: acceptance_classes takes SHARE:RATES classes separated by '+' (e.g. 0.3:0.9+0.7:0.6/0.5/0.4/0.3), got {text!r}")
    given = [r.strip() for r in rates.split("/")]
    return {"share": share.strip(), "acceptance_rate": given if len(given) > 1 else given[0]}


def _batch_size_entry(text: str, where: str) -> list[str]:
    """``START-END:K`` as ``[START, END, K]`` (validated as numbers by the model); ``ConfigError``
    naming ``where`` when it has another shape."""
    from fleetwise.errors import ConfigError

    span, sep, k = text.partition(":")
    start, dash, end = span.partition("-")
    if not (sep and dash and start.strip() and end.strip() and k.strip()):
        raise ConfigError(f"{where}: num_speculative_tokens_per_batch_size takes START-END:K entries separated by '/' (e.g. 1-64:4/65-1024:1), got {text!r}")
    return [start.strip(), end.strip(), k.strip()]


def resolve_speculative(spec: SpeculativeConfig, path: str, target, target_name: str, user_models: dict, weight_bytes) -> dict:
    """The core JSON of pool ``path``'s ``speculative``: the draft model looked up (errors name
    ``{path}.draft_model``), checked against the target's tokenizer, and a warning when the draft
    holds at least as many weights as the target (``weight_bytes(model, name)``), which makes
    speculation slower than plain decoding; an EAGLE-3 head's model checked against the target's
    hidden size and vocabulary."""
    from fleetwise.catalog import lookup
    from fleetwise.errors import ConfigError

    if spec.method == "eagle3":
        head = None if spec.draft_model is None else lookup("model", spec.draft_model, user_models, f"{path}.draft_model")
        if head is not None and head.hidden_size != target.hidden_size:
            raise ConfigError(f"{path}.draft_model: {spec.draft_model}'s hidden size ({head.hidden_size}) differs from {target_name}'s ({target.hidden_size}): "
                              "an EAGLE-3 head reads the target's hidden states")
        vocab = spec.draft_vocab_size or (head.vocab_size if head is not None else None)
        if vocab is not None and vocab > target.vocab_size:
            field = "draft_vocab_size" if spec.draft_vocab_size else "draft_model"
            raise ConfigError(f"{path}.{field}: {vocab} exceeds {target_name}'s vocabulary ({target.vocab_size} tokens): the draft vocabulary is a part of the target's")
        return spec.core_json(None if head is None else head.core_json(spec.draft_model))
    if spec.draft_model is None:
        return spec.core_json(None)
    draft = lookup("model", spec.draft_model, user_models, f"{path}.draft_model")
    if draft.vocab_size != target.vocab_size:
        raise ConfigError(f"{path}.draft_model: {spec.draft_model}'s vocabulary ({draft.vocab_size} tokens) differs from {target_name}'s ({target.vocab_size}): "
                          "a draft model must share the target's tokenizer")
    if weight_bytes(draft, spec.draft_model) >= weight_bytes(target, target_name):
        warnings.warn(f"{path}.draft_model: {spec.draft_model} is not smaller than {target_name}; each draft step costs at least a target decode, "
                      "so speculation will slow decoding down", UserWarning, stacklevel=2)
    return spec.core_json(draft.core_json(spec.draft_model))
