"""The fleetwise exception hierarchy.

The classes are defined once, in the Rust extension, so that an error raised by the core and one
raised by Python code are the same type::

    FleetwiseError
    ├── ConfigError      a scenario or configuration value is invalid
    ├── CapacityError    a model or request does not fit in memory
    ├── TraceError       a trace or workload file is malformed (the message names the line)
    ├── SimulationError  the simulation could not proceed
    └── PolicyError      a user's policy raised, or answered what the engine cannot apply
"""

from fleetwise._core import (
    CapacityError,
    ConfigError,
    FleetwiseError,
    PolicyError,
    SimulationError,
    TraceError,
)

__all__ = ["FleetwiseError", "ConfigError", "CapacityError", "TraceError", "SimulationError", "PolicyError"]
