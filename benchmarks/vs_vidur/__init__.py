"""The parts of ``benchmarks/bench_vs_vidur.py`` (run that script; this package is its library).

* :mod:`vs_vidur.scenario`: paths, Vidur's scheduler limits, the layouts and the fleetwise scenario;
* :mod:`vs_vidur.fleetwise_run`: one measured fleetwise run in a fresh, pinned process;
* :mod:`vs_vidur.vidur_run`: Vidur replaying fleetwise's requests, its phases, memory and latencies;
* :mod:`vs_vidur.report`: the Markdown report of a result.
"""
