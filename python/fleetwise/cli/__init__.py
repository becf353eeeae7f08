"""The ``fleetwise`` command line: run, compare, sweep, goodput, place, report, estimate, catalog, validate, calibrate,
check-policy, serve-engine, serve-router (one module per command family).

User mistakes (bad scenario fields, unknown names, models that do not fit, malformed traces) end
with a one-paragraph message on stderr and exit code 2, never a traceback.
"""

from fleetwise.cli.app import app, err, main, out

# Registering the commands (import order is the order of `fleetwise --help`).
from fleetwise.cli import run, sweeps, compare, report, hardware, calibration, policy, serve  # noqa: E402,F401  isort: skip

__all__ = ["app", "main", "out", "err"]
