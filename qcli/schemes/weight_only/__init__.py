"""Weight-only schemes (w4a16, w8a16): the handler (handler.py), the planner and the calibration statistics
the data-aware weight algorithms read (stats.py)."""
