"""W8A8 static QDQ: the handler (handler.py), planning from data (calibrated.py), the planner and its int8
regions, and the float-model rewrites before calibration (prepare.py)."""
