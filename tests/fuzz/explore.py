"""Exploration tool (not a test): draw many fuzz cases and group their failures by signature.

The pytest fuzz tests stop at the first failure and shrink it; while known bugs are still open they
hide new ones. This tool runs every drawn case, groups the failures by a signature (exception type
and message shape, or the kind of invariant broken) and prints the smallest case of each group::

    PYTHONPATH=python python tests/fuzz/explore.py scenarios 1000
    PYTHONPATH=python python tests/fuzz/explore.py overrides 500
    FUZZ_EXPLORE_IGNORE='is nan|NaN' PYTHONPATH=python python tests/fuzz/explore.py traces 500
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hypothesis import Phase, given, settings  # noqa: E402

from fuzz_worker import SandboxWorker, describe  # noqa: E402


IGNORE = re.compile(os.environ["FUZZ_EXPLORE_IGNORE"]) if os.environ.get("FUZZ_EXPLORE_IGNORE") else None
"""Violations matching this regex (env FUZZ_EXPLORE_IGNORE) are dropped: to look past known bugs."""


def signature(outcome: dict) -> str | None:
    """A failure's group key (None: not a failure)."""
    if IGNORE is not None and outcome.get("violations"):
        outcome["violations"] = [v for v in outcome["violations"] if not IGNORE.search(v)]
    kind = outcome["outcome"]
    if "exit_code" in outcome:
        text = outcome["stdout"] + outcome["stderr"]
        if kind == "ok" and outcome["exit_code"] in (0, 1, 2) and "Traceback" not in text and not outcome["violations"]:
            return None
    elif kind == "error" or (kind == "ok" and not outcome["violations"]):
        return None
    if kind == "crash":
        msg = re.sub(r"\d+", "N", outcome["message"])[:90]
        return f"crash {outcome['type']}: {msg}"
    if kind in ("hang", "died"):
        return kind
    return "violations: " + "; ".join(sorted({re.sub(r"[-\d.e+]+", "N", v)[:70] for v in outcome["violations"]}))


def _shown(case):
    """The case as printed: file contents cut to 400 bytes."""
    if isinstance(case, dict) and isinstance(case.get("data"), bytes):
        return {**case, "data": case["data"][:400]}
    return case


def explore(strategy, make_request, n: int) -> None:
    """Runs ``n`` drawn cases and prints the failure groups with their smallest case."""
    worker = SandboxWorker()
    groups: dict[str, list] = defaultdict(list)
    kinds: dict[str, int] = defaultdict(int)

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate])
    @given(case=strategy)
    def run(case):
        outcome = worker.call(make_request(case), timeout=20)
        kinds[outcome["outcome"] if outcome["outcome"] != "error" else "error " + outcome["type"] + ": " + re.sub(r"\d+", "N", outcome["message"].split(": ", 1)[-1])[:60]] += 1
        sig = signature(outcome)
        if sig is not None:
            groups[sig].append((len(json.dumps(_shown(case), default=str)), case, outcome))

    try:
        run()
    finally:
        worker.close()
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{v:5d} {k}")
    for sig, cases in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        size, case, outcome = min(cases, key=lambda c: c[0])
        print(f"\n=== {len(cases)} x {sig}\n--- smallest case: {json.dumps(_shown(case), default=str)}\n--- {describe(outcome)[:800]}")


def main() -> None:
    """``explore.py KIND N``: KIND is scenarios, overrides, traces, readers, policies, estimate,
    check-policy or compare-sweep."""
    kind, n = sys.argv[1], int(sys.argv[2])
    if kind == "scenarios":
        from fuzz_scenarios import scenarios

        explore(scenarios(), lambda sc: {"op": "simulate", "scenario": sc}, n)
    elif kind == "overrides":
        from fuzz_overrides import override_lists, override_request

        explore(override_lists(), override_request, n)
    elif kind == "traces":
        from fuzz_traces import read_request, trace_cases, trace_request

        explore(trace_cases(), trace_request, n)
    elif kind == "readers":
        from fuzz_traces import read_request, trace_cases

        explore(trace_cases(), read_request, n)
    elif kind == "policies":
        from fuzz_policy_cases import policy_cases, policy_request

        explore(policy_cases(), policy_request, n)
    elif kind in ("estimate", "check-policy", "compare-sweep"):
        import test_fuzz_cli as c

        strategy = {"estimate": c.estimate_args, "check-policy": c.check_policy_args, "compare-sweep": c.compare_and_sweep_args}[kind]()
        explore(strategy, lambda args: {"op": "cli", "args": args, "cwd": str(c._SCRATCH)}, n)
    else:
        raise SystemExit(f"unknown kind {kind!r}")


if __name__ == "__main__":
    main()
