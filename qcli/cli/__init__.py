"""The command line: one module per command, flags -> QuantConfig (defaults read from core.config), errors ->
exit codes, output on stdout and stderr. No algorithms here."""
