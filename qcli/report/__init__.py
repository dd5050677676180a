"""The report: its data (report.py), assembled once from the steps' parts (assemble.py), drawn for people
(render.py), its provenance, and `qcli inspect`."""
