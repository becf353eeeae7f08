"""Workloads: the requests a simulated cluster serves, generated from distributions or replayed
from traces.

``WorkloadConfig`` is the scenario's ``workload`` section; ``build_workload`` turns it into a
``Workload`` of arrival times, token counts and (optionally) prefix-block hashes and session ids.
The ``load_*`` functions read the supported file formats directly (see ``traces/README.md``):
traces (``load_azure_csv``, ``load_mooncake``, ``load_burstgpt``, ``load_parquet``) and length
files (``load_length_file``, ``load_sharegpt``, ``load_vllm_bench``); ``fit_lognormal`` fits a
length distribution.
"""

from fleetwise.workload.azure import load_azure_csv
from fleetwise.workload.build import build_workload
from fleetwise.workload.burstgpt import load_burstgpt, read_burstgpt
from fleetwise.workload.config import WorkloadConfig
from fleetwise.workload.fit import fit_lognormal
from fleetwise.workload.lengths import load_length_file, load_lengths
from fleetwise.workload.loaded import LoadedTable
from fleetwise.workload.mooncake import load_mooncake
from fleetwise.workload.native import load_parquet
from fleetwise.workload.requests import Workload
from fleetwise.workload.sharegpt import load_sharegpt
from fleetwise.workload.traces import load_trace
from fleetwise.workload.vllm_bench import load_vllm_bench, read_vllm_bench

load_azure = load_azure_csv
"""Alias of ``load_azure_csv`` (every trace reader is ``load_<format>``)."""

__all__ = [
    "WorkloadConfig",
    "Workload",
    "build_workload",
    "LoadedTable",
    "fit_lognormal",
    "load_azure",
    "load_azure_csv",
    "load_burstgpt",
    "load_length_file",
    "load_lengths",
    "load_mooncake",
    "load_parquet",
    "load_sharegpt",
    "load_trace",
    "load_vllm_bench",
    "read_burstgpt",
    "read_vllm_bench",
]
