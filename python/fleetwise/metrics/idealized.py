"""Idealized runtime: each request's runtime as if served alone on a reference GPU and engine.

Narayanan et al., "Cheaply Evaluating Inference Efficiency Metrics for Autoregressive Transformer
APIs" (NeurIPS 2023), compare models by the time a request would take on fixed reference hardware
and software with nothing else running, so that a model's cost does not depend on the serving
stack or on contention. Here that is the cost model of the request's model on the reference GPU
(default an A100-80GB, as the paper's) under the reference engine profile (default ``vllm``): the
whole prompt in one prefill pass, then one decode per further output token, alone::

    runtime = prefill(prompt) + sum over c = prompt+1 .. prompt+output-1 of decode(c)

where ``decode(c)`` decodes one sequence whose KV holds ``c`` tokens including the new one. The
cost-aware variant multiplies it by the GPUs the model needs on the reference GPU: the smallest
power-of-two tensor-parallel degree whose weights, one longest request's KV cache and its
activations fit 90% of each GPU's memory.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

GPU_MEMORY_UTILIZATION = 0.9
"""The fraction of a GPU's memory the model, KV cache and activations may take (vLLM's default)."""
MAX_GPUS = 64
"""The largest tensor-parallel degree tried before a model is declared too large for the GPU."""


@dataclass
class IdealizedRuntime:
    """The idealized runtime of requests of one model on one reference GPU and engine."""

    model: str
    """The model's name."""
    gpu: str
    """The reference GPU's name."""
    engine: str
    """The reference engine profile."""
    gpus: int
    """GPUs (tensor-parallel degree) the model needs on the reference GPU."""
    _cost: object
    _decode_cumsum: np.ndarray
    _prefill: dict = field(default_factory=dict, repr=False)
    """Solo prefill seconds by prompt length, as computed (a runtime reused across runs reuses them)."""

    @classmethod
    def build(cls, model: str, gpu: str, engine: str = "vllm", max_tokens: int | None = None, user_models: dict | None = None,
              user_gpus: dict | None = None) -> "IdealizedRuntime":
        """Finds the GPUs ``model`` needs on ``gpu`` for a request of ``max_tokens`` (default: the
        model's context) and tabulates its solo decode times up to that length. A model that does
        not fit on ``MAX_GPUS`` GPUs is a ``CapacityError``."""
        from fleetwise.catalog import lookup
        from fleetwise.cost import cost_model
        from fleetwise.errors import CapacityError, ConfigError

        m = lookup("model", model, user_models or {}, "idealized.model")
        g = lookup("gpu", gpu, user_gpus or {}, "idealized.gpu")
        longest = int(max_tokens or m.max_position_embeddings)
        usable = g.memory_bytes * GPU_MEMORY_UTILIZATION
        tp, cost = 1, None
        while tp <= MAX_GPUS:
            try:
                c = cost_model(m, g, tp=tp, model_name=model, gpu_name=gpu, engine=engine)
            except ConfigError:  # heads not divisible by this degree: try the next
                tp *= 2
                continue
            need = c.weight_bytes_per_gpu() + longest * c.kv_bytes_per_token() + c.activation_bytes(longest, 1)
            if need <= usable:
                cost = c
                break
            tp *= 2
        if cost is None:
            raise CapacityError(f"idealized runtime: {model} with a {longest}-token request does not fit {MAX_GPUS} x {gpu}")
        decode = np.array(cost.solo_decode_seconds(longest), dtype=np.float64)
        return cls(model, gpu, engine, tp, cost, np.concatenate([[0.0], np.cumsum(decode)]))

    def seconds(self, prompt: np.ndarray, output: np.ndarray) -> np.ndarray:
        """Idealized runtime of each (prompt, output) request, seconds."""
        prompt = np.asarray(prompt, dtype=np.int64)
        output = np.asarray(output, dtype=np.int64)
        last = prompt + output - 1
        if len(last) and last.max() >= len(self._decode_cumsum):
            raise ValueError(f"a request of {int(last.max()) + 1} tokens is longer than the {len(self._decode_cumsum) - 1} tabulated")
        # One prefill cost per distinct prompt length (memoised across calls), looked up per
        # request (a table over the lengths, not a sort of the requests: a few bytes a request).
        table = self._prefill_table(np.flatnonzero(np.bincount(prompt)) if len(prompt) else prompt)
        # Decodes at contexts prompt+1 .. prompt+output-1: cumsum[c] holds decode(1) + ... + decode(c).
        # prefill + cumsum[last] - cumsum[prompt], evaluated in that order, in place.
        runtime = table[prompt]
        runtime += self._decode_cumsum[last]
        del last
        runtime -= self._decode_cumsum[prompt]
        return runtime

    def _prefill_table(self, lengths: np.ndarray) -> np.ndarray:
        """Solo prefill seconds indexed by prompt length, for the sorted distinct ``lengths`` (0
        elsewhere); one cost per length, memoised across calls."""
        known = self._prefill
        new = [p for p in lengths.tolist() if p not in known]
        known.update(zip(new, self._cost.solo_prefill_seconds(new)))
        table = np.zeros(int(lengths.max()) + 1 if len(lengths) else 0)
        table[lengths] = [known[p] for p in lengths.tolist()]
        return table

    def seconds_expr(self, prompt_lengths: np.ndarray, prompt: "pl.Expr", output: "pl.Expr", elementwise: bool = False) -> "pl.Expr":
        """``seconds`` as a polars expression over requests whose prompt lengths are among
        ``prompt_lengths`` (distinct lengths) and whose ``prompt + output`` is at most the
        tabulated length: the same tables, looked up the same way, so each value is bit-identical
        to ``seconds``; no per-request array is kept. Other requests get a meaningless value.

        Two forms of the same values: the tables gathered in the query (the default, fastest
        over a whole column), or with ``elementwise`` the same gathers on each batch of rows (a
        map polars knows to be elementwise), for a table read a slice at a time: polars does not
        treat a gather from a literal table as elementwise, so every slice of the first form
        looks up the whole column (a chunked read of N rows then costs N rows per slice)."""
        import polars as pl

        table = self._prefill_table(np.unique(np.asarray(prompt_lengths, dtype=np.int64)))
        if not len(table):
            table = np.zeros(1)
        prefill, decoded = pl.Series(table), pl.Series(self._decode_cumsum)
        last_prefill, top = len(table) - 1, len(decoded) - 1
        if not elementwise:
            # Indices are clipped into the tables: a request outside them gets a meaningless value
            # (the caller masks it) instead of failing the whole column.
            return ((pl.lit(prefill).gather(prompt.clip(0, last_prefill)) + pl.lit(decoded).gather((prompt + output - 1).clip(0, top)))
                    - pl.lit(decoded).gather(prompt.clip(0, top)))

        def batch_seconds(rows: "pl.Series") -> "pl.Series":
            # The same lookups on one batch of rows, as polars Series (no numpy arrays: the
            # batches run on polars' threads, whose own allocator keeps nothing back).
            p, o = rows.struct.field("prompt"), rows.struct.field("output")
            return (prefill.gather(p.clip(0, last_prefill)) + decoded.gather((p + o - 1).clip(0, top))) - decoded.gather(p.clip(0, top))

        return pl.struct(prompt.alias("prompt"), output.alias("output")).map_batches(batch_seconds, return_dtype=pl.Float64, is_elementwise=True)

    def gpu_seconds(self, prompt: np.ndarray, output: np.ndarray) -> np.ndarray:
        """The cost-aware variant: idealized runtime x the GPUs the model needs, GPU-seconds."""
        return self.seconds(prompt, output) * self.gpus


RUNTIMES_KEPT = 8
"""Idealized runtimes ``idealized_runtime`` keeps per process (a sweep's points share a few)."""
_RUNTIMES: "OrderedDict[tuple, IdealizedRuntime]" = OrderedDict()
_RUNTIMES_LOCK = threading.Lock()


def _specs_key(specs: dict | None) -> str:
    """A scenario's own model or GPU specs as canonical JSON (part of a cache key)."""
    return json.dumps({k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in (specs or {}).items()}, sort_keys=True, default=str)


def idealized_runtime(model: str, gpu: str, engine: str, max_tokens: int, user_models: dict | None = None,
                      user_gpus: dict | None = None) -> IdealizedRuntime:
    """``IdealizedRuntime.build`` of these arguments, reused while the process keeps it (the last
    ``RUNTIMES_KEPT`` built): a sweep's points, run one after another in a worker, tabulate each
    model's solo decodes and prefills once instead of once per point. The key holds the scenario's
    own model and GPU specs by value (a point that redefines one builds its own) and, for an engine
    profile given as a file, the directory it resolves from."""
    is_file = "/" in engine or "\\" in engine or engine.endswith((".yaml", ".yml"))
    key = (model, gpu, engine, os.getcwd() if is_file else "", int(max_tokens), _specs_key(user_models), _specs_key(user_gpus))
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is not None:
            _RUNTIMES.move_to_end(key)
            return rt
    rt = IdealizedRuntime.build(model, gpu, engine, max_tokens, user_models, user_gpus)
    with _RUNTIMES_LOCK:
        _RUNTIMES[key] = rt
        while len(_RUNTIMES) > RUNTIMES_KEPT:
            _RUNTIMES.popitem(last=False)
    return rt


def idealized_summary(requests, scenario, gpus: dict[str, int]) -> dict:
    """The summary's ``idealized`` entry: the reference, each model's GPUs on it (``gpus``), and
    the distribution and total of the finished requests' idealized runtime and GPU-seconds."""
    import polars as pl

    from fleetwise.metrics.distribution import distribution

    from fleetwise.metrics.table_reads import finished_columns

    summary = {"gpu": scenario.idealized.gpu, "engine": scenario.idealized.engine, "gpus": dict(gpus)}
    for name, values in finished_columns(requests, ["idealized_runtime_s", "idealized_gpu_seconds"]):
        # Totals as polars sums them (one contiguous column), before the percentiles reorder it.
        total = float(pl.Series(values).sum())
        if name == "idealized_runtime_s":
            summary.update(runtime_s=distribution(values, reorder=True), total_runtime_s=total)
        else:
            summary["total_gpu_seconds"] = total
        del values  # before the next column is read
    return summary
