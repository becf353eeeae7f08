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


def load_routing_trace(path: str | Path) -> RoutingTrace:
    """Reads a routing trace file (format in this module's docstring)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TraceError(f"{path}: cannot read the routing trace: {e.strerror or e}") from None
    rows = [(i + 1, text) for i, text in enumerate(lines) if text.strip()]
    if not rows:
        raise TraceError(f"{path}: the routing trace is empty")
    first, header_text = rows[0]
    try:
        header = json.loads(header_text)
    except json.JSONDecodeError as e:
        raise _fail(path, first, f"the header is not JSON: {e.msg}") from None
    if not isinstance(header, dict) or header.get("fleetwise_routing") != 1:
        raise _fail(path, first, 'the first line must be a header {"fleetwise_routing": 1, "num_layers": L, "top_k": K, "num_experts": E}')
    dims = {}
    for key in ("num_layers", "top_k", "num_experts"):
        v = header.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(path, first, f"header field {key} must be a positive integer, got {v!r}")
        dims[key] = v
    layers, k, n_exp = dims["num_layers"], dims["top_k"], dims["num_experts"]
    if k > n_exp:
        raise _fail(path, first, f"top_k {k} exceeds num_experts {n_exp}")
    if n_exp > 65535:
        raise _fail(path, first, f"num_experts {n_exp} exceeds 65535")
    experts = np.empty((len(rows) - 1, layers, k), dtype=np.uint16)
    offsets = [0]
    current, expected = None, 0
    for t, (line, text) in enumerate(rows[1:]):
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise _fail(path, line, f"not JSON: {e.msg}") from None
        if not isinstance(rec, dict) or not {"request", "token", "experts"} <= rec.keys():
            raise _fail(path, line, 'each token line needs "request", "token" and "experts"')
        req, tok, ids = rec["request"], rec["token"], rec["experts"]
        if req != current:
            if current is not None:
                offsets.append(t)
            current, expected = req, 0
        if tok != expected:
            raise _fail(path, line, f"request {req!r}: expected token {expected}, got {tok!r} (tokens must follow each other from 0)")
        expected += 1
        if not isinstance(ids, list) or len(ids) != layers:
            raise _fail(path, line, f"experts must hold one list per MoE layer ({layers}), got {len(ids) if isinstance(ids, list) else type(ids).__name__}")
        for layer, chosen in enumerate(ids):
            if not isinstance(chosen, list) or len(chosen) != k or len(set(chosen)) != k:
                raise _fail(path, line, f"layer {layer}: needs {k} distinct expert ids, got {chosen!r}")
            for e in chosen:
                if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e < n_exp:
                    raise _fail(path, line, f"layer {layer}: expert id {e!r} is not in [0, {n_exp})")
            experts[t, layer] = chosen
    if current is None:
        raise _fail(path, first, "the routing trace has a header but no tokens")
    offsets.append(len(rows) - 1)
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
