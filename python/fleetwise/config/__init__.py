"""Scenario configuration: pydantic models (``scenario``) loaded from YAML (``load``)."""
