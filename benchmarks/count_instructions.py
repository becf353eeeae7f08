"""Count the instructions the Rust core executes on one of ``bench_core.py``'s cases, under
callgrind: a deterministic measure of the core's work, for comparing two builds on a machine
whose timings drift by +-10% from run to run (instructions are not time — cache misses and
dependency chains are not counted — but they do not move with the machine's load).

    python benchmarks/count_instructions.py                              # vidur20k, 20,000 requests
    python benchmarks/count_instructions.py --cases vidur20k scale4 --requests 5000
    python benchmarks/count_instructions.py --against /tmp/base/python   # also another tree's core

Needs valgrind (``apt-get install valgrind``). Counts only inside the core's event loop
(``sim::run``: building the workload and the result frames is left out), so the number is the
simulation's own. Each count runs the case once (about 40 s for 20,000 requests of vidur20k).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def count(case: str, requests: int, pythonpath: str | None) -> int:
    """Instructions executed inside the core's event loop for ``case`` with ``requests`` requests."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ, BENCH_CORE_REQUESTS=str(requests))
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}",
               "--toggle-collect=*sim*run*", sys.executable, str(HERE / "bench_core.py"), "--child", case]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"callgrind failed on {case}:\n{proc.stderr[-2000:]}")
        m = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
        if not m:
            raise SystemExit(f"no instruction summary for {case} (is the core built with symbols for sim::run?)")
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["vidur20k"])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--against", default=None, help="another tree's python/ directory: counted too, and the ratio reported")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    for case in a.cases:
        this = count(case, a.requests, None)
        line = f"{case:<16} {this:>15,} instructions  {this / a.requests:>10,.0f} per request"
        if a.against:
            other = count(case, a.requests, a.against)
            line += f"   against {other:>15,} ({other / this:.3f}x this)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
