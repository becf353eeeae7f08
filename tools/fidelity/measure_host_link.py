"""Measures host-to-GPU copy bandwidth (pinned host DRAM -> HBM), the path offloaded experts take.

Runs with PyTorch only, on a GPU machine: ``python3 tools/fidelity/measure_host_link.py OUT_DIR``. Writes
``host_link.csv`` (bytes, seconds, GB/s per copy size; median of repeated copies) to OUT_DIR.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path


def main(out_dir: str) -> None:
    """Times pinned host-to-device copies from 1 MiB to 1 GiB and writes host_link.csv."""
    import torch

    dev = torch.device("cuda")
    rows = []
    for mib in (1, 4, 16, 64, 176, 352, 704, 1024):
        n = mib << 20
        src = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(n, dtype=torch.uint8, device=dev)
        for _ in range(3):
            dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src, non_blocking=True)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) * 1e-3)
        s = statistics.median(times)
        rows.append({"bytes": n, "seconds": s, "gb_per_s": n / s / 1e9})
        print(f"{mib:5d} MiB  {s * 1e3:8.3f} ms  {n / s / 1e9:6.2f} GB/s", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "host_link.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["bytes", "seconds", "gb_per_s"])
        w.writeheader()
        w.writerows(rows)
    print(torch.cuda.get_device_name(0))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
