"""The fused elementwise kernels an efficient serving engine runs between its GEMMs, in Triton.

vLLM replaces PyTorch's chains of small elementwise kernels with one kernel each for the residual
add + RMSNorm, the rotary embedding of queries and keys, and SiLU-and-multiply; these are the same
three fusions, so that each reads and writes its tensors once. Without Triton (or on a CPU without
``TRITON_INTERPRET=1``) each function falls back to plain PyTorch with the same result.

PyTorch and Triton only (it does not import fleetwise).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None


def triton_usable(device: str) -> bool:
    """Whether the Triton kernels run here: on a GPU, or on the CPU through Triton's interpreter."""
    return triton is not None and (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _add_rms_kernel(x_ptr, res_ptr, w_ptr, out_ptr, n_cols, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            x += tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(res_ptr + row * n_cols + cols, x.to(res_ptr.dtype.element_ty), mask=mask)
        var = tl.sum(x * x, axis=0) / n_cols
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = x * tl.rsqrt(var + eps) * w
        tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_kernel(qk_ptr, pos_ptr, cos_ptr, sin_ptr, row_stride, n_heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
        tok = tl.program_id(0)
        pos = tl.load(pos_ptr + tok)
        heads = tl.arange(0, BLOCK_H)[:, None]
        j = tl.arange(0, HALF)[None, :]
        mask = heads < n_heads
        c = tl.load(cos_ptr + pos * HALF + j).to(tl.float32)
        s = tl.load(sin_ptr + pos * HALF + j).to(tl.float32)
        base = qk_ptr + tok * row_stride + heads * (2 * HALF)
        x1 = tl.load(base + j, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(base + HALF + j, mask=mask, other=0.0).to(tl.float32)
        tl.store(base + j, (x1 * c - x2 * s).to(qk_ptr.dtype.element_ty), mask=mask)
        tl.store(base + HALF + j, (x2 * c + x1 * s).to(qk_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        blk = tl.program_id(1)
        cols = blk * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        g = tl.load(gu_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        y = g / (1.0 + tl.exp(-g)) * u
        tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


class Fused:
    """The three fused operations, on Triton where it runs and in PyTorch otherwise."""

    def __init__(self, device: str, eps: float = 1e-5):
        self.triton = triton_usable(device)
        self.eps = eps

    def add_rms(self, x: torch.Tensor, residual: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
        """RMSNorm of ``x + residual`` (of ``x`` alone when ``residual`` is None); the sum is
        written back into ``residual`` in place, as vLLM's fused_add_rms_norm does."""
        if not self.triton:
            if residual is not None:
                residual.add_(x)
                x = residual
            v = x.float().pow(2).mean(-1, keepdim=True)
            return (x.float() * torch.rsqrt(v + self.eps) * w.float()).to(x.dtype)
        t, h = x.shape
        out = torch.empty_like(x)
        _add_rms_kernel[(t,)](x, x if residual is None else residual, w, out, h, self.eps,
                              HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(h))
        return out

    def rope(self, qk: torch.Tensor, n_heads: int, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotates the first ``n_heads`` heads of each row of ``qk`` (tokens, width) in place
        (rotate-half convention, Llama's); ``cos``/``sin`` are (positions, head_dim / 2)."""
        half = cos.shape[1]
        if not self.triton:
            x = qk[:, : n_heads * 2 * half].unflatten(1, (n_heads, 2 * half))
            c, s = cos[pos][:, None, :].float(), sin[pos][:, None, :].float()
            x1, x2 = x[..., :half].float(), x[..., half:].float()
            x.copy_(torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(qk.dtype))
            return
        _rope_kernel[(qk.shape[0],)](qk, pos, cos, sin, qk.stride(0), n_heads, HALF=half,
                                     BLOCK_H=triton.next_power_of_2(n_heads))

    def silu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        """SiLU of the first half of each row times its second half."""
        t, two_i = gu.shape
        i = two_i // 2
        if not self.triton:
            return (torch.nn.functional.silu(gu[:, :i].float()) * gu[:, i:].float()).to(gu.dtype)
        out = torch.empty(t, i, dtype=gu.dtype, device=gu.device)
        block = 1024
        _silu_mul_kernel[(t, triton.cdiv(i, block))](gu, out, i, BLOCK=block)
        return out
