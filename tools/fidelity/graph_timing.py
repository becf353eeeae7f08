"""Timing a GPU call by replaying a CUDA graph of it: no launch gaps, so the kernels' own time.

PyTorch only (it does not import fleetwise).
"""

from __future__ import annotations

import torch


def replay_times(fn, calls: int, reps: int) -> list[float]:
    """Seconds per call of ``fn`` in each of ``reps`` replays of one CUDA graph of ``calls`` calls
    (warmed up on a side stream first, as graph capture asks; CUDA events around each replay)."""
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / calls)
    del graph
    return times
