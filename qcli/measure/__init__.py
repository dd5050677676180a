"""Measurements of a candidate against its reference: fidelity, latency and size (evaluate.py), the per-layer
error (layers.py: diagnose.py for quantize's own model, layerwise.py for any two), activation sensitivity."""
