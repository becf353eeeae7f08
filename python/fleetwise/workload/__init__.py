"""Workloads: the requests a simulated cluster serves, generated from distributions or replayed
from traces.

``WorkloadConfig`` is the scenario's ``workload`` section; ``build_workload`` turns it into a
``Workload`` of arrival times and token counts. ``load_azure_csv`` and ``load_length_file`` read the
supported file formats directly.
"""

from fleetwise.workload.azure import load_azure_csv
from fleetwise.workload.build import Workload, build_workload
from fleetwise.workload.config import WorkloadConfig
from fleetwise.workload.lengths import load_length_file

__all__ = ["WorkloadConfig", "Workload", "build_workload", "load_azure_csv", "load_length_file"]
