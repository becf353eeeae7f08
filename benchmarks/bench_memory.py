"""Memory of one bench_core case at a given request count: resident set after the imports, after
building the workload and at the end of the run, with the peak (VmHWM) at each point, and a digest
of the per-request results so runs of two trees can be compared for identity.

    PYTHONPATH=python /usr/bin/time -v python benchmarks/bench_memory.py --requests 10000000 --mode core
    PYTHONPATH=python /usr/bin/time -v python benchmarks/bench_memory.py --requests 2000000 --mode simulate
    PYTHONPATH=python /usr/bin/time -v python benchmarks/bench_memory.py --requests 10000000 --mode write

``--mode core`` runs ``fleetwise._core.simulate`` alone (the arrays it takes, the columns it
returns); ``--mode simulate`` runs ``fleetwise.simulate`` end to end (the Result's frames and
summary); ``--mode write`` also writes the Result (``Result.write``, what ``fleetwise run -o``
does: requests.parquet streamed from the compact columns) and reads the digest from the file. The digest is taken after the peak is printed; it allocates, so read the process peak
of a ``core`` run from the ``run`` line, not from ``/usr/bin/time``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def memory() -> str:
    """This process's resident set and its peak so far, MiB."""
    d = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            d[key] = int(value.split()[0]) / 1024
    return f"rss {d['VmRSS']:.0f} MiB, peak {d['VmHWM']:.0f} MiB"


def core_digest(out: dict) -> str:
    """A digest of the core's request columns, widened to int64 as ``fleetwise.simulate`` reads them
    (so cores returning int64 and uint32 columns compare equal), and its other results."""
    import numpy as np

    h = hashlib.sha256()
    for key in sorted(out):
        v = out[key]
        if key in ("instance", "preemptions", "generated_tokens", "prefill_instance"):
            v = v.astype(np.int64)
            if key == "prefill_instance":
                v[v == 2**32 - 1] = -1
        h.update(key.encode())
        h.update(v.tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
    return h.hexdigest()[:16]


def main() -> int:
    from bench_core import CASES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="quickstart100k", choices=sorted(CASES))
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--mode", choices=["core", "simulate", "write"], default="core")
    a = ap.parse_args()
    import numpy as np

    import fleetwise
    from fleetwise.cluster import core_config
    from fleetwise.workload import build_workload

    print(f"imports   {memory()}", flush=True)
    d = CASES[a.case]()
    d["workload"]["requests"] = a.requests
    sc = fleetwise.scenario_from_dict(d)
    wl = build_workload(sc.workload, sc.seed, None)
    print(f"workload  {memory()}", flush=True)
    t = time.perf_counter()
    if a.mode == "core":
        arrays = tuple(np.ascontiguousarray(x, dtype=np.int64) for x in (wl.arrival_ns, wl.prompt_tokens, wl.output_tokens))
        out = fleetwise._core.simulate(json.dumps(core_config(sc, False, None)), *arrays)
        print(f"run       {memory()}  ({time.perf_counter() - t:.1f} s)", flush=True)
        print(f"digest    {core_digest(out)}")
    else:
        res = fleetwise.simulate(sc, workload=wl)
        print(f"run       {memory()}  ({time.perf_counter() - t:.1f} s)", flush=True)
        if a.mode == "write":
            import tempfile

            import polars as pl

            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                res.write(d)
                print(f"write     {memory()}  ({time.perf_counter() - t:.1f} s)", flush=True)
                del res
                print(f"digest    {pl.read_parquet(Path(d) / 'requests.parquet').hash_rows().sum()}")
        else:
            print(f"digest    {res.requests.hash_rows().sum()} {res.summary['events']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
