"""An independent reference model of the simulator's serving semantics.

``simulate_reference(scenario, workload)`` replays a workload through a pure-Python SimPy model of
the cluster (arrivals, routing, the vLLM, Sarathi-Serve, Sarathi and Orca batch schedulers, paged
KV accounting, preemption by recompute, speculative decoding with a draft model at acceptance
rates of 0 or 1 in ``speculative.py``). It shares only the roofline cost model and the memory plan
with the Rust core, so the differential test in ``tests/test_reference.py`` checks the core's event
loop, router and schedulers against a second implementation written from their documented rules.
"""

from reference.simpy_model import simulate_reference

__all__ = ["simulate_reference"]
