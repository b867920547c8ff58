"""`python -m ddpm` runs the CLI (also under `torchrun -m ddpm`)."""

from .cli.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
