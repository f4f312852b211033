from snapkit.cli.app import main

main()
