"""CUDA-graph capture for the serving engine: one decode graph per batch size and one prefill graph
per (padded token count, prompt-count bucket), all in one memory pool; ``Engine.prefill`` and
``Engine.decode`` replay them.

PyTorch only (it does not import fleetwise); part of the engine of ``torch_engine.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings beside this file, also when run as a script
from torch_batches import PREFILL_SEQ_BUCKETS, PREFILL_STEP, Seq  # noqa: E402


class CudaGraphCapture:
    """Captures the engine's CUDA graphs (a mixin of ``Engine``, which owns the buffers, the
    ``graphs`` and ``prefill_graphs`` they go into and the memory ``pool``)."""

    def capture_prefill_graphs(self) -> None:
        """Captures one prefill CUDA graph per padded token count (multiples of ``PREFILL_STEP``
        up to ``max_num_batched_tokens``) and prompt-count bucket, largest first, in one memory pool."""
        c = self.model.cfg
        dummy = [Seq(-1, 0, 1, 2, slot=0)]
        for Tb in range(c.max_num_batched_tokens // PREFILL_STEP * PREFILL_STEP, 0, -PREFILL_STEP):
            for S in sorted({*PREFILL_SEQ_BUCKETS, c.max_num_seqs}, reverse=True):
                self.capture_prefill_graph(Tb, S, dummy)
        torch.cuda.synchronize()

    def capture_prefill_graph(self, Tb: int, S: int, dummy: list) -> None:
        """Captures the prefill graph of ``Tb`` padded tokens for up to ``S`` prompts (after one
        warm-up run on a side stream), sharing the engine's graph memory pool."""
        dummy[0].prompt = Tb
        self._prefill_fill(dummy, Tb, S)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self._prefill_static(Tb, S)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            self.pbuf["out"][:S].copy_(self._prefill_static(Tb, S))
        self.pool = g.pool()
        self.prefill_graphs[(Tb, S)] = g

    def capture_graphs(self) -> None:
        """Captures one decode CUDA graph per batch size, largest first, sharing one memory pool."""
        n, L = self.model.cfg.max_num_seqs, self.model.cfg.max_len
        dummy = [Seq(rid=-1, arrival=0, prompt=1, output=2, slot=j, computed=1) for j in range(n)]
        pool = self.pool
        for B in range(n, 0, -1):
            seqs = dummy[:B]
            self._decode_fill(seqs)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                self._decode_eager(seqs)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.buf["out"][:B].copy_(self._decode_eager(seqs))
            pool = self.pool = g.pool()
            self.graphs[B] = g
        torch.cuda.synchronize()
        del L
