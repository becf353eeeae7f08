"""Parameter sweeps and goodput search: many scenario variants, run in parallel, saved as they finish."""
