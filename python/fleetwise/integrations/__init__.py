"""Integrations of fleetwise policies with real engines and models: vLLM, Hugging Face transformers."""
