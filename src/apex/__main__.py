from apex.cli import main

# Guarded: the analysis sandbox's child processes import the main module again.
if __name__ == "__main__":
    main()
