"""Adapters that run fleetwise policies inside real serving engines (vLLM)."""
