"""Calibration: one streaming session over the float model, observers (one file per method, in a registry)
and the overrides file."""
