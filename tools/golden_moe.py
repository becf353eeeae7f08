"""Digests of bench_core's MoE cases and of per-iteration-routing variants, to check that a change to
the expert runtime left results byte-identical (tools/golden.py covers the shipped scenarios).

    PYTHONPATH=python python tools/golden_moe.py record /tmp/moe-golden.json   # before the change
    PYTHONPATH=python python tools/golden_moe.py check  /tmp/moe-golden.json   # after: lists what differs

Each case runs with and without per-iteration records ("/norec"), and hashes the request,
instance and iteration tables and the summary as tools/golden.py does. The variants reach the
expert runtime's other paths: uniform routing with LFU, a static cache, no prefetch, prefetching two
layers ahead at 0.6, expert parallelism (DRAM and HBM), small batches (token-by-token routing, wrong
prefetch guesses with unused experts to name), flash placement, a large LRU cache, per-token routing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tools"))
import bench_core  # noqa: E402
import golden  # noqa: E402


def cases() -> dict[str, dict]:
    """Every case by name: bench_core's four MoE cases and variants of moe-offload-agg (300 requests)."""
    out = {n: bench_core.CASES[n]() for n in ["moe-dense", "moe-offload", "moe-offload-l0", "moe-offload-agg"]}
    agg = bench_core.CASES["moe-offload-agg"]()

    def v(name: str, change) -> None:
        d = copy.deepcopy(agg)
        d["workload"]["requests"] = 300
        change(d["cluster"]["pools"][0])
        out[name] = d

    v("agg-uniform-lfu", lambda p: (p["experts"]["routing"].update(kind="uniform"), p["experts"]["cache"].update(policy="lfu")))
    v("agg-static", lambda p: p["experts"]["cache"].update(policy="static"))
    v("agg-noprefetch", lambda p: p["experts"].pop("prefetch"))
    v("agg-lead2", lambda p: p["experts"].update(prefetch={"accuracy": 0.6, "lead_layers": 2}))
    v("agg-tp2ep2", lambda p: p.update(parallelism={"tp": 2, "ep": 2}))
    v("agg-hbm-ep2", lambda p: (p.update(parallelism={"tp": 2, "ep": 2}), p["experts"].update(placement="hbm"), p["experts"].pop("cache"), p["experts"].pop("prefetch")))
    v("agg-seqs2", lambda p: p["scheduler"].update(max_num_seqs=2))
    v("agg-seqs8", lambda p: p["scheduler"].update(max_num_seqs=8))
    v("agg-flash", lambda p: p["experts"].update(placement="flash"))
    v("agg-lru6", lambda p: p["experts"]["cache"].update(experts_per_layer=6))
    v("agg-lfu3-seqs4", lambda p: (p["experts"]["cache"].update(policy="lfu", experts_per_layer=3), p["scheduler"].update(max_num_seqs=4)))
    v("agg-seqs4-acc05", lambda p: (p["experts"].update(prefetch={"accuracy": 0.5, "lead_layers": 1}), p["scheduler"].update(max_num_seqs=4)))
    v("agg-seqs3-ep2-acc07", lambda p: (p.update(parallelism={"tp": 2, "ep": 2}), p["experts"].update(prefetch={"accuracy": 0.7, "lead_layers": 2}), p["scheduler"].update(max_num_seqs=3)))
    tok = copy.deepcopy(bench_core.CASES["moe-offload"]())
    tok["workload"]["requests"] = 150
    tok["cluster"]["pools"][0]["scheduler"]["max_num_seqs"] = 4
    tok["cluster"]["pools"][0]["experts"]["prefetch"] = {"accuracy": 0.5, "lead_layers": 1}
    out["tok-seqs4-acc05"] = tok
    return out


def digests() -> dict[str, dict[str, str]]:
    """Runs every case with and without iteration records and returns {case: {table: digest}}."""
    import fleetwise

    out: dict[str, dict[str, str]] = {}
    for name, d in cases().items():
        for suffix, record in (("", True), ("/norec", False)):
            r = fleetwise.simulate(fleetwise.scenario_from_dict(d), record_iterations=record)
            out[name + suffix] = {
                "requests": golden._digest_frame(r.requests),
                "instances": golden._digest_frame(r.instances),
                "iterations": golden._digest_frame(r.iterations),
                "summary": hashlib.sha256(json.dumps(r.summary, sort_keys=True, default=str).encode()).hexdigest()[:16],
            }
            print(f"{name + suffix:28s} {out[name + suffix]}", file=sys.stderr)
    return out


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("record", "check"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    mode, path = sys.argv[1], Path(sys.argv[2])
    got = digests()
    if mode == "record":
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return 0
    return golden.report(got, json.loads(path.read_text()))


if __name__ == "__main__":
    raise SystemExit(main())
