#!/usr/bin/env python3
"""Times each phase of ``fleetwise.simulate()`` on the Vidur benchmark's workload, in this process.

Every module-level function ``simulate()`` calls around the Rust core is wrapped by a timer; the
core's run is ``_run_core``, the rest is the Python before and after it. A fresh process's first
call is what ``bench_vs_vidur.py`` times, so run it as one (``--calls 1``) several times::

    for i in 1 2 3; do taskset -c 0 python benchmarks/time_simulate_phases.py; done

``--scenario FILE`` times a scenario file's run instead (its requests set by ``--requests``), e.g.
the quickstart at a million requests (issue 17's "1M quickstart requests <= 2 s")::

    taskset -c 0 python benchmarks/time_simulate_phases.py --scenario scenarios/quickstart.yaml --requests 1000000

Prints one line per call: the whole call, the Python part (the call less the core) and each phase,
in milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from vs_vidur import scenario as bench_scenario  # noqa: E402
from vs_vidur.fleetwise_run import timed_into  # noqa: E402

import fleetwise  # noqa: E402
from fleetwise.workload import build_workload  # noqa: E402

PHASES = ("core_config", "_run_core", "compact_requests", "_idealized_runtime_expr", "request_table", "_instances_frame", "pool_prices", "summarize", "idealized_summary")
"""The functions of ``fleetwise.simulate``'s module that ``simulate()`` calls, timed."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=1, help="simulate() calls in this process")
    ap.add_argument("--scenario", type=Path, help="a scenario file to time instead of the Vidur benchmark's workload")
    a = ap.parse_args()
    sim = sys.modules["fleetwise.simulate"]
    if a.scenario is None:
        sc = fleetwise.scenario_from_dict(bench_scenario.scenario_dict(a.requests, 4, 4.0, 0, "round-robin", bench_scenario.sharegpt_lengths()))
    else:
        own = fleetwise.load_scenario(a.scenario)
        sc = own.model_copy(update={"workload": own.workload.model_copy(update={"requests": a.requests})})
    wl = build_workload(sc.workload, sc.seed, None)
    spent: dict[str, float] = {}
    for name in PHASES:
        setattr(sim, name, timed_into(spent, name, getattr(sim, name)))
    for _ in range(a.calls):
        spent.clear()
        start = time.perf_counter()
        sim.simulate(sc, workload=wl)
        total = time.perf_counter() - start
        phases = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in spent.items())
        print(f"simulate {total * 1e3:.1f} ms; Python {(total - spent['_run_core']) * 1e3:.1f} ms; {phases}")


if __name__ == "__main__":
    main()
