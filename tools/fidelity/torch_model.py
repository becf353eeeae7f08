"""The model the serving engine (``torch_engine.py``) serves: Llama on random bf16 weights over a
slot-contiguous KV cache, with FlashAttention's variable-length kernel or per-sequence SDPA.

PyTorch only (it does not import fleetwise), copied to the GPU machine with ``torch_engine.py`` and
its sibling ``torch_*.py`` files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DT = torch.bfloat16
DECODE_SPLITS = 0
"""Decode attention splits each sequence's keys into this many parts (flash-decoding), so that one
long context does not hold up the whole batch; 0 leaves FlashAttention's heuristic (which does not
split once batch x KV heads fills the GPU). ``--decode-splits`` sets it; it needs a PyTorch whose
``_flash_attention_forward`` takes ``num_splits`` (2.11 does not; the committed run tried 8)."""


@dataclass
class Config:
    """Model shape (Llama-3-8B by default) and engine limits."""

    layers: int = 32
    hidden: int = 4096
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 14336
    vocab: int = 128256
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 4096
    max_len: int = 2560


class Model:
    """Llama on random weights, over a slot-contiguous KV cache of ``max_num_seqs`` x ``max_len`` tokens."""

    def __init__(self, cfg: Config, device: str):
        self.cfg, self.device = cfg, device
        c = cfg
        g = lambda *s: torch.randn(*s, device=device, dtype=DT) * 0.02  # noqa: E731
        self.embed = g(c.vocab, c.hidden)
        self.layers = [
            {"ln1": torch.ones(c.hidden, device=device, dtype=DT), "qkv": g(c.hidden, (c.heads + 2 * c.kv_heads) * c.head_dim),
             "o": g(c.heads * c.head_dim, c.hidden), "ln2": torch.ones(c.hidden, device=device, dtype=DT),
             "gu": g(c.hidden, 2 * c.intermediate), "down": g(c.intermediate, c.hidden)}
            for _ in range(c.layers)
        ]
        self.norm = torch.ones(c.hidden, device=device, dtype=DT)
        self.head = g(c.hidden, c.vocab)
        d = c.head_dim
        inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        f = torch.outer(torch.arange(0, max(c.max_len, c.max_num_batched_tokens), device=device, dtype=torch.float32), inv)
        self.cos, self.sin = f.cos().to(DT), f.sin().to(DT)
        rows = c.max_num_seqs * c.max_len + 1  # the last row takes the K/V of padding tokens
        self.k = [torch.zeros(rows, c.kv_heads, d, device=device, dtype=DT) for _ in range(c.layers)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.flash = False
        self.splits = 0

    def rope(self, x, pos):
        c, s = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)

    @staticmethod
    def rms(x, w):
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(v + 1e-5)).to(DT) * w

    def attention(self, i: int, q, meta: dict):
        """Attention of packed queries ``q`` (tokens, heads, d) over layer ``i``'s cache."""
        if self.flash:
            extra = {"num_splits": self.splits} if self.splits and not meta["causal"] else {}
            return torch.ops.aten._flash_attention_forward(
                q, self.k[i], self.v[i], meta["cu_q"], meta["cu_k"], meta["max_q"], meta["max_k"],
                0.0, meta["causal"], False, seqused_k=meta["used_k"], **extra)[0]
        outs = []
        for (q0, q1), (k0, n) in zip(meta["q_ranges"], meta["k_ranges"]):
            qs = q[q0:q1].transpose(0, 1)[None]
            ks = self.k[i][k0:k0 + n].transpose(0, 1)[None]
            vs = self.v[i][k0:k0 + n].transpose(0, 1)[None]
            causal = meta["causal"] and q1 - q0 > 1
            a = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, enable_gqa=True)
            outs.append(a[0].transpose(0, 1))
        return torch.cat(outs)

    def forward(self, ids, pos, widx, sample, meta: dict):
        """One iteration: writes the new tokens' K/V at cache rows ``widx``; returns the greedy
        next token of each row in ``sample``."""
        c = self.cfg
        H, KV, d = c.heads, c.kv_heads, c.head_dim
        T = ids.shape[0]
        x = self.embed[ids]
        for i, w in enumerate(self.layers):
            y = self.rms(x, w["ln1"]) @ w["qkv"]
            q, k, v = y.split([H * d, KV * d, KV * d], dim=-1)
            q = self.rope(q.view(T, H, d), pos)
            k = self.rope(k.view(T, KV, d), pos)
            self.k[i].index_copy_(0, widx, k)
            self.v[i].index_copy_(0, widx, v.view(T, KV, d))
            a = self.attention(i, q, meta)
            x = x + a.reshape(T, H * d) @ w["o"]
            gu = self.rms(x, w["ln2"]) @ w["gu"]
            g_, u = gu.chunk(2, dim=-1)
            x = x + (F.silu(g_) * u) @ w["down"]
        logits = self.rms(x[sample], self.norm) @ self.head
        return logits.argmax(-1)
