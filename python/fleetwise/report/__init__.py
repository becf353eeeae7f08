"""HTML reports of runs, sweeps and goodput searches: ``write_report(inputs, output)``.

Modules: ``load`` (reading run and sweep directories), ``colors`` (one colour per label),
``latency``, ``slo``, ``timeseries``, ``timeline``, ``hardware`` (the figure families),
``tables`` and ``page`` (HTML assembly), ``write`` (the entry point).
"""

from fleetwise.report.write import FIGURE_IDS, write_report

__all__ = ["write_report", "FIGURE_IDS"]
