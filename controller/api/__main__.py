from ftctl.controller.cli import main

main()
