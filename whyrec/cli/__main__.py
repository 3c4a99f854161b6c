from whyrec.cli import main

main()
