"""Lab scripts that produce real per-request logs for ``fleetwise validate`` / ``calibrate --requests``."""
