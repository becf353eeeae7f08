"""Integrations of fleetwise policies with real serving and modelling stacks."""
