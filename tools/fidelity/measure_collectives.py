"""Measures NCCL all-reduce and point-to-point sends between the GPUs of one machine.

Runs with PyTorch only (no fleetwise import), one process per GPU:

    torchrun --nproc-per-node=2 tools/fidelity/measure_collectives.py --out calibration/h200x2

Writes (rank 0) ``allreduce.csv`` (world_size, bytes, seconds) and ``sendrecv.csv`` (bytes, seconds):
medians of CUDA-event timings of bf16 tensors, and ``device.json``. ``operator_fit.py`` fits the
cost model's ``collective`` efficiency to them (``fleetwise.calibrate.fit.fit_collective``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

SIZES = [1 << k for k in range(10, 30)]  # 1 KiB .. 512 MiB


def timed(fn, reps: int, warmup: int = 5) -> float:
    """Median seconds of ``fn`` over ``reps`` runs, synchronised across ranks."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        dist.barrier()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    allreduce, sendrecv = [], []
    for size in SIZES:
        x = torch.ones(size // 2, dtype=torch.bfloat16, device="cuda")
        reps = 30 if size < (64 << 20) else 10
        s = timed(lambda: dist.all_reduce(x), reps)
        allreduce.append({"world_size": world, "bytes": size, "seconds": s})

        def p2p():
            if rank == 0:
                dist.send(x, dst=1)
            elif rank == 1:
                dist.recv(x, src=0)

        sendrecv.append({"bytes": size, "seconds": timed(p2p, reps)})
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, rows in (("allreduce.csv", allreduce), ("sendrecv.csv", sendrecv)):
            with (args.out / name).open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        p = torch.cuda.get_device_properties(0)
        info = {"name": p.name, "gpus": world, "torch": torch.__version__, "nccl": ".".join(map(str, torch.cuda.nccl.version())), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        (args.out / "device.json").write_text(json.dumps(info, indent=2) + "\n")
        for r in allreduce[::4]:
            print(r, flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
