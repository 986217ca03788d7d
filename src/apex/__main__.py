from apex.cli import main

main()
