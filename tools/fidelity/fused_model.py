"""A decoder on random bf16 weights that runs an iteration the way vLLM does on a GPU.

What makes it "efficient", item by item (what ``torch_model.py``, the unfused engine, does not do):

* fused residual-add + RMSNorm, rotary embedding and SiLU-and-multiply (``fused_kernels.py``);
* one CUDA graph per iteration, prefill and mixed iterations included (``fused_grid.py`` captures
  and replays it), so no kernel launch gaps;
* FlashAttention's variable-length kernel for every attention (prefill, chunked prefill with a
  cached prefix, decode and mixed batches in one call);
* mixture-of-experts as fused-MoE engines do it (routing made uniformly random per token): tokens sorted by expert, then one grouped GEMM
  per projection over all experts (``torch._grouped_mm``), weighted scatter-add back;
* the LM head only on the rows that are sampled (the last token of each sequence).

The KV cache is one flat buffer per layer; each sequence of an iteration owns a contiguous range.
Gated-MLP (Llama/Mistral/Qwen) decoders only; Qwen3's per-head q/k norms are left out (a few KB
per token). PyTorch and Triton only (it does not import fleetwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fused_kernels import Fused

DT = torch.bfloat16


@dataclass
class Shape:
    """A model's shape (names as in fleetwise's model catalogue) and how many of its layers run."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    layers_run: int = 0
    """Layers instantiated and timed (0: all); a subset keeps large models in one GPU's memory."""

    @property
    def layers(self) -> int:
        """Number of layers this run builds."""
        return self.layers_run or self.num_layers

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token holds over the layers that run."""
        return self.layers * 2 * self.num_kv_heads * self.head_dim * 2


@dataclass
class Batch:
    """One iteration's inputs on the device: the sequences' new tokens and where their keys live."""

    ids: torch.Tensor
    pos: torch.Tensor
    widx: torch.Tensor
    sample: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    used_k: torch.Tensor
    max_q: int
    max_k: int


def make_batch(seqs: list[tuple[int, int]], vocab: int, device: str, sample_all: bool = False) -> Batch:
    """The batch of sequences given as (new tokens, cached tokens): a decode is (1, context), a
    prompt (or chunk) is (length, cached prefix). Sequences sit one after another in the cache.
    The LM head runs on each sequence's last token, or with ``sample_all`` on every new token (a
    speculative verify pass scores every draft token and the one after them)."""
    ids, pos, widx, sample, cu_q, cu_k, used = [], [], [], [], [0], [], []
    off = 0
    for q, cached in seqs:
        pos.append(torch.arange(cached, cached + q))
        widx.append(torch.arange(off + cached, off + cached + q))
        cu_k.append(off)
        used.append(cached + q)
        off += cached + q
        cu_q.append(cu_q[-1] + q)
        sample.extend(range(cu_q[-2], cu_q[-1]) if sample_all else [cu_q[-1] - 1])
    cu_k.append(off)
    t = cu_q[-1]
    g = torch.Generator().manual_seed(t)
    ids = torch.randint(0, vocab, (t,), generator=g)
    as_i32 = lambda v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    return Batch(ids.to(device), torch.cat(pos).to(device), torch.cat(widx).to(device), torch.tensor(sample, device=device),
                 as_i32(cu_q), as_i32(cu_k), as_i32(used), max(q for q, _ in seqs), max(used))


class FusedModel:
    """A decoder of ``shape`` on random weights with a flat KV cache of ``kv_tokens`` tokens."""

    def __init__(self, shape: Shape, kv_tokens: int, device: str, max_pos: int = 16384):
        self.s, self.device = shape, device
        self.fused = Fused(device)
        s = shape
        gen = lambda *size: (torch.randn(*size, device=device, dtype=DT) * 0.02)  # noqa: E731
        qkv = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
        self.embed = gen(s.vocab_size, s.hidden_size)
        self.layers = []
        for _ in range(s.layers):
            w = {"ln1": torch.ones(s.hidden_size, device=device, dtype=DT), "qkv": gen(s.hidden_size, qkv),
                 "o": gen(s.num_heads * s.head_dim, s.hidden_size), "ln2": torch.ones(s.hidden_size, device=device, dtype=DT)}
            if s.num_experts:
                w["router"] = gen(s.hidden_size, s.num_experts)
                w["route_noise"] = torch.randn(max_pos, s.num_experts, device=device) * 8.0
                w["w1"] = gen(s.num_experts, s.hidden_size, 2 * s.moe_intermediate_size)
                w["w2"] = gen(s.num_experts, s.moe_intermediate_size, s.hidden_size)
            else:
                w["gu"] = gen(s.hidden_size, 2 * s.intermediate_size)
                w["down"] = gen(s.intermediate_size, s.hidden_size)
            self.layers.append(w)
        if s.num_experts:
            self._expert_layout()
        self.norm = torch.ones(s.hidden_size, device=device, dtype=DT)
        self.head = gen(s.hidden_size, s.vocab_size)
        d = s.head_dim
        inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        f = torch.outer(torch.arange(0, max_pos, device=device, dtype=torch.float32), inv)
        self.cos, self.sin = f.cos().contiguous(), f.sin().contiguous()
        self.k = [torch.zeros(kv_tokens, s.num_kv_heads, d, device=device, dtype=DT) for _ in range(s.layers)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.flash = device == "cuda"

    def _expert_layout(self) -> None:
        """Stores the expert weights column-major if this PyTorch's grouped GEMM wants them so."""
        w1 = self.layers[0]["w1"]
        a = torch.zeros(32, w1.shape[1], device=self.device, dtype=DT)
        offs = torch.full((w1.shape[0],), 32, dtype=torch.int32, device=self.device)
        try:
            torch._grouped_mm(a, w1, offs=offs)
        except RuntimeError:
            for w in self.layers:
                for key in ("w1", "w2"):
                    w[key] = w[key].transpose(-2, -1).contiguous().transpose(-2, -1)

    def attention(self, i: int, q: torch.Tensor, b: Batch) -> torch.Tensor:
        """Causal attention (aligned to each sequence's end) of packed queries over layer ``i``'s cache."""
        if self.flash:
            return torch.ops.aten._flash_attention_forward(
                q, self.k[i], self.v[i], b.cu_q, b.cu_k, b.max_q, b.max_k, 0.0, True, False, seqused_k=b.used_k)[0]
        out = []
        cu_q, cu_k, used = b.cu_q.tolist(), b.cu_k.tolist(), b.used_k.tolist()
        for j in range(len(used)):
            qs = q[cu_q[j]:cu_q[j + 1]].transpose(0, 1)[None]
            ks = self.k[i][cu_k[j]:cu_k[j] + used[j]].transpose(0, 1)[None]
            vs = self.v[i][cu_k[j]:cu_k[j] + used[j]].transpose(0, 1)[None]
            nq, nk = qs.shape[2], ks.shape[2]
            mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
            out.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1))
        return torch.cat(out)

    def moe(self, w: dict, h: torch.Tensor) -> torch.Tensor:
        """Top-k routed experts, fused-MoE style: sort token slots by expert, two grouped GEMMs."""
        s = self.s
        t, k, e = h.shape[0], s.experts_per_token, s.num_experts
        # Random weights route every token to nearly the same experts (attention outputs look
        # alike); a fixed per-row noise term makes routing uniformly random per token, as the
        # simulator's default routing assumes, while the router GEMM is still paid.
        probs = ((h @ w["router"]).float() + w["route_noise"][:t]).softmax(-1)
        top_w, top_i = probs.topk(k, dim=-1)
        top_w = (top_w / top_w.sum(-1, keepdim=True)).to(DT)
        flat = top_i.flatten()
        order = flat.argsort()
        counts = torch.zeros(e, dtype=torch.int32, device=h.device).scatter_add_(0, flat.to(torch.int64), torch.ones_like(flat, dtype=torch.int32))
        offs = counts.cumsum(0, dtype=torch.int32)
        token = order // k
        xs = h[token]
        a = self.fused.silu_mul(torch._grouped_mm(xs, w["w1"], offs=offs))
        y = torch._grouped_mm(a, w["w2"], offs=offs) * top_w.flatten()[order][:, None]
        return torch.zeros_like(h).index_add_(0, token, y)

    def forward(self, b: Batch) -> torch.Tensor:
        """One iteration: writes the new tokens' K/V, returns the greedy next token of each sequence."""
        s, f = self.s, self.fused
        H, KV, d = s.num_heads, s.num_kv_heads, s.head_dim
        t = b.ids.shape[0]
        x = self.embed[b.ids]
        residual = None
        for i, w in enumerate(self.layers):
            if residual is None:
                residual = x
                h = f.add_rms(x, None, w["ln1"])
            else:
                h = f.add_rms(x, residual, w["ln1"])
            qkv = h @ w["qkv"]
            f.rope(qkv, H + KV, b.pos, self.cos, self.sin)
            q, k, v = qkv.split([H * d, KV * d, KV * d], dim=-1)
            self.k[i].index_copy_(0, b.widx, k.view(t, KV, d))
            self.v[i].index_copy_(0, b.widx, v.reshape(t, KV, d))
            a = self.attention(i, q.reshape(t, H, d), b)
            x = a.reshape(t, H * d) @ w["o"]
            h = f.add_rms(x, residual, w["ln2"])
            x = self.moe(w, h) if s.num_experts else f.silu_mul(h @ w["gu"]) @ w["down"]
        last = f.add_rms(x[b.sample].contiguous(), residual[b.sample].contiguous(), self.norm)
        return (last @ self.head).argmax(-1)
