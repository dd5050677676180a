from qcli.cli.app import main

main()
