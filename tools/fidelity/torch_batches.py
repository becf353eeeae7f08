"""How a batch of sequences is laid out for the serving engine's model: the sequences themselves
(``Seq``), the attention metadata of a packed batch, and the static input buffers that prefill and
decode iterations (and the CUDA graphs captured over them) read.

PyTorch only (it does not import fleetwise); part of the engine of ``torch_engine.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREFILL_STEP = 64
"""Prefill graphs pad the packed prompt tokens of an iteration to a multiple of this."""
PREFILL_SEQ_BUCKETS = (1, 2, 4, 8)
"""Prefill graphs are captured for these numbers of prompts (and for ``max_num_seqs``); an
iteration pads its prompts with empty ones up to the next bucket."""


@dataclass
class Seq:
    """One request being served."""

    rid: int
    arrival: float
    prompt: int
    output: int
    slot: int = -1
    computed: int = 0
    generated: int = 0
    last_token: int = 0
    first_t: float = float("nan")
    last_t: float = float("nan")


def static_buffers(cfg, dev: str) -> tuple[dict, dict]:
    """The engine's static input buffers on ``dev``: decode ones (one row per sequence slot) and
    prefill ones (one row per batched token), which CUDA graphs capture by address."""
    n = cfg.max_num_seqs
    buf = {"ids": torch.zeros(n, dtype=torch.long, device=dev), "pos": torch.zeros(n, dtype=torch.long, device=dev),
            "widx": torch.zeros(n, dtype=torch.long, device=dev), "cu_k": torch.zeros(n + 1, dtype=torch.int32, device=dev),
            "used_k": torch.zeros(n, dtype=torch.int32, device=dev), "cu_q": torch.arange(n + 1, dtype=torch.int32, device=dev),
            "sample": torch.arange(n, dtype=torch.long, device=dev), "out": torch.zeros(n, dtype=torch.long, device=dev)}
    t = cfg.max_num_batched_tokens
    pbuf = {"ids": torch.zeros(t, dtype=torch.long, device=dev), "pos": torch.zeros(t, dtype=torch.long, device=dev),
             "widx": torch.zeros(t, dtype=torch.long, device=dev), "cu_q": torch.zeros(n + 1, dtype=torch.int32, device=dev),
             "cu_k": torch.zeros(n + 1, dtype=torch.int32, device=dev), "used_k": torch.zeros(n, dtype=torch.int32, device=dev),
             "sample": torch.zeros(n, dtype=torch.long, device=dev), "out": torch.zeros(n, dtype=torch.long, device=dev)}
    return buf, pbuf


class BatchLayout:
    """Fills a batch into the engine's buffers and describes it to the model's attention (a mixin of
    ``Engine``, which owns ``model``, ``buf`` and ``pbuf``)."""

    def _meta(self, seqs: list[Seq], q_lens: list[int], k_lens: list[int], causal: bool) -> dict:
        """Attention metadata of a packed batch: ``q_lens`` query rows and ``k_lens`` keys per sequence."""
        L = self.model.cfg.max_len
        offs = [s.slot * L for s in seqs]
        cu_q = [0]
        for n in q_lens:
            cu_q.append(cu_q[-1] + n)
        dev = self.model.device
        return {"cu_q": torch.tensor(cu_q, dtype=torch.int32, device=dev),
                "cu_k": torch.tensor(offs + [offs[-1] + L], dtype=torch.int32, device=dev),
                "used_k": torch.tensor(k_lens, dtype=torch.int32, device=dev),
                "max_q": max(q_lens), "max_k": L if not causal else max(k_lens), "causal": causal,
                "q_ranges": list(zip(cu_q[:-1], cu_q[1:])), "k_ranges": list(zip(offs, k_lens))}

    def _prefill_fill(self, seqs: list[Seq], Tb: int, S: int) -> None:
        """Fills the static prefill buffers: real tokens first, then padding tokens (position 0,
        K/V to the dummy row); padding sequences have no queries and no keys."""
        c, b = self.model.cfg, self.pbuf
        L, n = c.max_len, c.max_num_seqs
        lens = [s.prompt for s in seqs]
        T = sum(lens)
        b = {k: v[: S + 1] if k in ("cu_q", "cu_k") else v[:S] if k in ("used_k", "sample") else v for k, v in b.items()}
        pos = torch.zeros(Tb, dtype=torch.long)
        widx = torch.full((Tb,), n * L, dtype=torch.long)
        cu_q, cu_k, used = [0], [], []
        for s, m in zip(seqs, lens):
            pos[cu_q[-1]:cu_q[-1] + m] = torch.arange(m)
            widx[cu_q[-1]:cu_q[-1] + m] = torch.arange(m) + s.slot * L
            cu_k.append(s.slot * L)
            used.append(m)
            cu_q.append(cu_q[-1] + m)
        end = cu_k[-1] + L
        cu_k += [end] * (S + 1 - len(cu_k))
        cu_q += [T] * (S + 1 - len(cu_q))
        used += [0] * (S - len(used))
        sample = [q - 1 for q in cu_q[1:len(seqs) + 1]] + [0] * (S - len(seqs))
        b["ids"][:Tb].copy_(torch.randint(0, c.vocab, (Tb,)))
        b["pos"][:Tb].copy_(pos)
        b["widx"][:Tb].copy_(widx)
        b["cu_q"].copy_(torch.tensor(cu_q, dtype=torch.int32))
        b["cu_k"].copy_(torch.tensor(cu_k, dtype=torch.int32))
        b["used_k"].copy_(torch.tensor(used, dtype=torch.int32))
        b["sample"].copy_(torch.tensor(sample, dtype=torch.long))

    def _prefill_static(self, Tb: int, S: int):
        """The forward pass over the static prefill buffers (``Tb`` tokens, ``S`` prompts), as graphs capture it."""
        b = self.pbuf
        meta = {"cu_q": b["cu_q"][:S + 1], "cu_k": b["cu_k"][:S + 1], "used_k": b["used_k"][:S], "max_q": Tb, "max_k": Tb, "causal": True}
        return self.model.forward(b["ids"][:Tb], b["pos"][:Tb], b["widx"][:Tb], b["sample"][:S], meta)

    def _decode_fill(self, seqs: list[Seq]) -> None:
        """Fills the static decode buffers with one token per sequence of ``seqs``."""
        L = self.model.cfg.max_len
        b, B = self.buf, len(seqs)
        b["ids"][:B].copy_(torch.tensor([s.last_token for s in seqs]))
        ctx = [s.computed for s in seqs]
        b["pos"][:B].copy_(torch.tensor(ctx))
        b["widx"][:B].copy_(torch.tensor([s.slot * L + p for s, p in zip(seqs, ctx)]))
        offs = [s.slot * L for s in seqs]
        b["cu_k"][:B + 1].copy_(torch.tensor(offs + [offs[-1] + L], dtype=torch.int32))
        b["used_k"][:B].copy_(torch.tensor([p + 1 for p in ctx], dtype=torch.int32))

    def _decode_meta(self, seqs: list[Seq]) -> dict:
        """Attention metadata of a decode batch over the static decode buffers."""
        B, b, L = len(seqs), self.buf, self.model.cfg.max_len
        meta = {"cu_q": b["cu_q"][:B + 1], "cu_k": b["cu_k"][:B + 1], "used_k": b["used_k"][:B], "max_q": 1, "max_k": L, "causal": False}
        if not self.model.flash:
            meta["q_ranges"] = [(j, j + 1) for j in range(B)]
            meta["k_ranges"] = [(s.slot * L, s.computed + 1) for s in seqs]
        return meta

    def _decode_eager(self, seqs: list[Seq]):
        """The decode forward pass over the static buffers, without a graph (and as graphs capture it)."""
        B, b = len(seqs), self.buf
        return self.model.forward(b["ids"][:B], b["pos"][:B], b["widx"][:B], b["sample"][:B], self._decode_meta(seqs))
