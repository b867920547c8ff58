"""The `ddpm` command line: thin subcommands over the library."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__
from .errors import DDPMError

EPILOG = """examples:
  ddpm --version
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020): train, sample, measure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ddpm: interrupted", file=sys.stderr)
        return 130
    except (DDPMError, ValueError, OSError) as e:
        if args.traceback:
            raise
        print(f"ddpm: error: {e}", file=sys.stderr)
        return 1
