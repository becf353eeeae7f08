"""Recorded expert routing: per token, per MoE layer, the experts chosen.

File format (JSON Lines, UTF-8). The first line is a header::

    {"fleetwise_routing": 1, "num_layers": 32, "top_k": 2, "num_experts": 8, "model": "mixtral-8x7b"}

(``model`` is optional). Every further line is one token::

    {"request": 0, "token": 0, "experts": [[1, 5], [0, 3], ...]}

with one list of ``top_k`` distinct expert ids per MoE layer. A request's tokens (prompt, then
output) come in order from token 0 on one after another; requests follow each other in the order
they first appear, and the i-th request of the file replays for the simulation's request
``i mod R``. Blank lines are ignored. Errors name the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetwise.errors import TraceError
from fleetwise.workload._files import clip, nonblank_lines, read_text


@dataclass(frozen=True)
class RoutingTrace:
    """A routing trace in columns: ``experts`` has shape (tokens, layers, top_k); request ``r`` owns
    tokens ``offsets[r]:offsets[r + 1]``."""

    num_layers: int
    """MoE layers per token."""
    top_k: int
    """Experts per token and layer."""
    num_experts: int
    """Experts per layer."""
    offsets: np.ndarray
    """Token offsets per request (length requests + 1)."""
    experts: np.ndarray
    """Expert ids, shape (tokens, num_layers, top_k), uint16."""
    model: str | None = None
    """The model it was recorded on, if given."""

    @property
    def num_requests(self) -> int:
        """Requests in the trace."""
        return len(self.offsets) - 1

    def core_arrays(self) -> dict:
        """The keyword arguments ``_core.simulate`` takes for this trace."""
        return {
            "routing_offsets": np.ascontiguousarray(self.offsets, dtype=np.int64),
            "routing_experts": np.ascontiguousarray(self.experts.reshape(-1), dtype=np.int64),
            "routing_shape": (self.num_layers, self.top_k),
        }


def _fail(path: Path, line: int, message: str) -> TraceError:
    return TraceError(f"{path}:{line}: {message}")


MAX_LAYERS = 10_000
"""Most MoE layers a header may give (``ModelSpec.num_layers`` allows at most 10,000)."""
MAX_EXPERTS = 65_535
"""Most experts per layer a header may give: expert ids are stored as uint16 (``ModelSpec.num_experts``
allows at most 65,535)."""


def _json(path: Path, line: int, text: str, what: str):
    """``text`` (line ``line`` of ``path``) parsed as JSON; ``TraceError`` naming the line when it is
    not (``what``: "the header" or "the line")."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, line, f"{what} is not JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise _fail(path, line, f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise _fail(path, line, f"{what} is not valid JSON: {str(e)[:200]}") from None


def load_routing_trace(path: str | Path) -> RoutingTrace:
    """Reads a routing trace file (format in this module's docstring).

    Raises ``TraceError`` naming the file (and line) for a missing, unreadable, binary or non-UTF-8
    file, a line that is not JSON (or is nested too deeply), a header whose ``num_layers`` is not in
    1 .. 10,000, ``num_experts`` not in 1 .. 65,535 or ``top_k`` not in 1 .. ``num_experts``, and a
    token line that does not match the header.
    """
    path = Path(path)
    lines = nonblank_lines(read_text(path))  # size, NUL-byte and UTF-8 checks naming the line
    rows = list(zip(lines["line"].to_list(), lines["text"].to_list()))
    if not rows:
        raise TraceError(f"{path}: the routing trace is empty")
    first, header_text = rows[0]
    header = _json(path, first, header_text, "the header")
    if not isinstance(header, dict) or header.get("fleetwise_routing") != 1:
        raise _fail(path, first, 'the first line must be a header {"fleetwise_routing": 1, "num_layers": L, "top_k": K, "num_experts": E}')
    dims = {}
    for key, most in (("num_layers", MAX_LAYERS), ("num_experts", MAX_EXPERTS), ("top_k", MAX_EXPERTS)):
        v = header.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(path, first, f"header field {key} must be a positive integer, got {clip(v)}")
        if v > most:
            raise _fail(path, first, f"header field {key} must be at most {most:,}, got {clip(v)}")
        dims[key] = v
    layers, k, n_exp = dims["num_layers"], dims["top_k"], dims["num_experts"]
    if k > n_exp:
        raise _fail(path, first, f"top_k {k} exceeds num_experts {n_exp}")
    tokens = len(rows) - 1
    # Grown as token lines are checked (doubling), never sized from the header alone: a header's
    # layers x top_k ids per token are only allocated for lines that hold them.
    experts = np.empty((0, layers, k), dtype=np.uint16)
    offsets = [0]
    current, expected = None, 0
    for t, (line, text) in enumerate(rows[1:]):
        rec = _json(path, line, text, "the line")
        if not isinstance(rec, dict) or not {"request", "token", "experts"} <= rec.keys():
            raise _fail(path, line, 'each token line needs "request", "token" and "experts"')
        req, tok, ids = rec["request"], rec["token"], rec["experts"]
        if req != current:
            if current is not None:
                offsets.append(t)
            current, expected = req, 0
        if tok != expected:
            raise _fail(path, line, f"request {clip(req)}: expected token {expected}, got {clip(tok)} (tokens must follow each other from 0)")
        expected += 1
        if not isinstance(ids, list) or len(ids) != layers:
            raise _fail(path, line, f"experts must hold one list per MoE layer ({layers}), got {len(ids) if isinstance(ids, list) else type(ids).__name__}")
        for layer, chosen in enumerate(ids):
            if not isinstance(chosen, list) or len(chosen) != k:
                raise _fail(path, line, f"layer {layer}: needs {k} distinct expert ids, got {clip(chosen)}")
            for e in chosen:
                if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e < n_exp:
                    raise _fail(path, line, f"layer {layer}: expert id {clip(e)} is not in [0, {n_exp})")
            if len(set(chosen)) != k:
                raise _fail(path, line, f"layer {layer}: needs {k} distinct expert ids, got {clip(chosen)}")
        if t == len(experts):
            grown = np.empty((min(max(2 * t, 1), tokens), layers, k), dtype=np.uint16)
            grown[:t] = experts
            experts = grown
        experts[t] = ids
    if current is None:
        raise _fail(path, first, "the routing trace has a header but no tokens")
    offsets.append(tokens)
    return RoutingTrace(layers, k, n_exp, np.asarray(offsets, dtype=np.int64), experts, header.get("model"))


def write_routing_trace(path: str | Path, trace: RoutingTrace) -> None:
    """Writes ``trace`` in the routing trace format."""
    header = {"fleetwise_routing": 1, "num_layers": trace.num_layers, "top_k": trace.top_k, "num_experts": trace.num_experts}
    if trace.model:
        header["model"] = trace.model
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for r in range(trace.num_requests):
            for t, tok in enumerate(trace.experts[trace.offsets[r]:trace.offsets[r + 1]]):
                f.write(json.dumps({"request": r, "token": t, "experts": tok.tolist()}, separators=(",", ":")) + "\n")
