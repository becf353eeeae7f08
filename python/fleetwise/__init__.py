"""fleetwise: simulate and schedule LLM serving clusters.

``simulate(scenario)`` runs a scenario (a YAML path, a dict or a ``Scenario``) through the Rust
discrete-event core and returns a ``Result`` with a per-request polars DataFrame and a summary.
"""

from fleetwise.config.load import load_scenario, scenario_from_dict
from fleetwise.config.scenario import Scenario
from fleetwise.cost import cost_model
from fleetwise.errors import CapacityError, ConfigError, FleetwiseError, PolicyError, SimulationError, TraceError
from fleetwise.result import Result
from fleetwise.simulate import simulate

__all__ = [
    "simulate",
    "cost_model",
    "load_scenario",
    "scenario_from_dict",
    "Scenario",
    "Result",
    "FleetwiseError",
    "ConfigError",
    "CapacityError",
    "TraceError",
    "SimulationError",
    "PolicyError",
]
