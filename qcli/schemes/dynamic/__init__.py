"""Dynamic quantization: the handler (handler.py) and its planner."""
