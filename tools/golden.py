"""Digests of every scenario's outputs, to check that a change to the core left results byte-identical.

    PYTHONPATH=python python tools/golden.py record /tmp/golden.json   # before the change
    PYTHONPATH=python python tools/golden.py check  /tmp/golden.json   # after: lists what differs

Each case runs one ``scenarios/*.yaml`` (request counts capped at ``--max-requests`` so the whole set
stays short) or one of a few variants that reach paths the shipped scenarios do not (round-robin on
many instances, a larger disaggregated cluster, the bench_vs_vidur workload), with per-iteration
records on, and hashes the per-request table, the per-instance table, the iteration table and the
summary separately (CSV with full float precision; JSON with sorted keys); ``--no-log`` runs every case
without per-iteration records (the iteration table is then absent: the core takes the paths that only
apply when nothing watches each iteration, e.g. pipelined instances running ahead between arrivals).
``check`` exits 1 naming
every case and table whose digest changed, so the lead can rerun it around any core change; the
digests themselves are not committed because features that change semantics change them.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
sys.path.insert(0, str(REPO / "benchmarks"))
from vs_vidur import scenario as bench_scenario  # noqa: E402


def _variants() -> dict[str, dict]:
    """Extra cases built from the shipped scenarios: paths the scenarios themselves do not reach."""
    load = lambda name: yaml.safe_load((SCENARIOS / f"{name}.yaml").read_text())  # noqa: E731
    out: dict[str, dict] = {}
    rr = load("quickstart")
    rr["cluster"]["pools"][0]["count"] = 16
    rr["cluster"]["router"] = {"kind": "round-robin"}
    rr["workload"]["arrivals"]["rate"] = 120.0
    out["quickstart-rr16"] = rr
    big = load("splitwise")
    big["cluster"]["pools"][0]["count"] = 8
    big["cluster"]["pools"][1]["count"] = 8
    big["workload"]["arrivals"]["rate"] = 80.0
    out["splitwise-8p8d"] = big
    lw = copy.deepcopy(big)
    lw["cluster"]["pools"][0]["kv_transfer"] = "layerwise"
    out["splitwise-8p8d-layerwise"] = lw
    spec = load("speculative-decoding")
    spec["workload"]["arrivals"]["rate"] = 40.0
    spec["cluster"]["pools"][0]["speculative"] = {
        "method": "eagle", "num_speculative_tokens": 4, "enable_adaptive_verification": True,
        "acceptance_classes": [{"name": "code", "share": 0.3, "acceptance_rate": 0.9}, {"name": "chat", "share": 0.7, "acceptance_rate": 0.45, "num_speculative_tokens": 2}]}
    out["speculative-classes-adaptive"] = spec
    learned = copy.deepcopy(spec)
    learned["cluster"]["pools"][0]["speculative"]["adaptive_estimate"] = "history"
    out["speculative-classes-history"] = learned
    if bench_scenario.SHAREGPT.exists():
        out["vs-vidur"] = bench_scenario.scenario_dict(3000, 4, 4.0, 0, "round-robin", bench_scenario.sharegpt_lengths())
    return out


def cases(max_requests: int) -> dict[str, dict]:
    """Every case by name: the scenario dict with relative paths resolved and requests capped."""
    out: dict[str, dict] = {}
    for path in sorted(SCENARIOS.glob("*.yaml")):
        out[path.stem] = yaml.safe_load(path.read_text())
    out.update(_variants())
    for sc in out.values():
        wl = sc["workload"]
        if isinstance(wl.get("requests"), int):
            wl["requests"] = min(wl["requests"], max_requests)
        _resolve_paths(wl)
    return out


def _resolve_paths(node) -> None:
    """Makes every relative ``path`` under ``node`` absolute (relative to scenarios/, as the YAML is)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "path" and isinstance(v, str) and not Path(v).is_absolute():
                node[k] = str((SCENARIOS / v).resolve())
            else:
                _resolve_paths(v)
    elif isinstance(node, list):
        for v in node:
            _resolve_paths(v)


def _digest_frame(df) -> str:
    if df is None:
        return "none"
    import polars as pl

    # Nested columns (lists, such as speculation's per-position rates) as JSON text: CSV has none.
    nested = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Array, pl.Struct))]
    if nested:
        df = df.with_columns(pl.col(c).map_elements(lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v), return_dtype=pl.String) for c in nested)
    return hashlib.sha256(df.write_csv(float_precision=None).encode()).hexdigest()[:16]


def digests(max_requests: int, only: list[str] | None, log: bool = True) -> dict[str, dict[str, str]]:
    """Runs every case (with per-iteration records if ``log``) and returns {case: {table: digest}},
    printing each case's wall time."""
    import fleetwise

    out: dict[str, dict[str, str]] = {}
    for name, sc in cases(max_requests).items():
        if only and name not in only:
            continue
        t = time.perf_counter()
        res = fleetwise.simulate(fleetwise.scenario_from_dict(sc, base_dir=SCENARIOS), record_iterations=log)
        out[name] = {
            "requests": _digest_frame(res.requests),
            "instances": _digest_frame(res.instances),
            "iterations": _digest_frame(res.iterations),
            "summary": hashlib.sha256(json.dumps(res.summary, sort_keys=True, default=str).encode()).hexdigest()[:16],
        }
        print(f"{name:28s} {time.perf_counter() - t:6.2f} s  {out[name]}", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["record", "check"])
    ap.add_argument("file", type=Path)
    ap.add_argument("--max-requests", type=int, default=3000)
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--no-log", action="store_true", help="run without per-iteration records")
    a = ap.parse_args()
    got = digests(a.max_requests, a.only, log=not a.no_log)
    if a.mode == "record":
        a.file.write_text(json.dumps({"max_requests": a.max_requests, "digests": got}, indent=1, sort_keys=True) + "\n")
        return 0
    return report(got, json.loads(a.file.read_text())["digests"])


def report(got: dict[str, dict[str, str]], want: dict[str, dict[str, str]]) -> int:
    """Prints each table whose digest differs from ``want`` and a count; 1 if any differs."""
    bad = [(c, t) for c, tables in got.items() for t, d in tables.items() if want.get(c, {}).get(t) != d]
    for c, t in bad:
        print(f"DIFFERS: {c} {t}")
    print(f"{len(got)} cases, {len(bad)} tables differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
