"""Files and runtimes at the edge: model files (external data, >2 GB, atomic writes), onnxruntime sessions
(one place, always closed) and data feeds."""
