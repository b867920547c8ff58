"""What the benchmarks share: their ``--smoke`` mode and the tiny trained run that the scripts measuring a run
use in it.

Every script runs from the repository root as a module, ``python -m benchmarks.<purpose>.<name> [--smoke]``;
``--smoke`` runs every part of it in seconds with tiny settings (its figures mean nothing), and the test suite
runs each one that way (tests/test_benchmarks.py), so that none can break unnoticed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

ROOT = Path(__file__).resolve().parents[1]
Smoke = Dict[str, Union[Any, Callable[[], Any]]]


def parse(ap: argparse.ArgumentParser, smoke: Smoke, argv: Optional[List[str]] = None,
          required: tuple = ()) -> argparse.Namespace:
    """``ap``'s arguments plus ``--smoke``, which makes ``smoke``'s values the defaults (a callable is called only
    then, e.g. ``tiny_run``). ``required``: flags that only a run without ``--smoke`` must be given."""
    ap.add_argument("--smoke", action="store_true",
                    help="tiny settings, seconds on a CPU: checks that the script runs (its figures mean nothing)")
    args = ap.parse_args(argv)
    if args.smoke:
        ap.set_defaults(**{k: v() if callable(v) else v for k, v in smoke.items()})
        args = ap.parse_args(argv)
    for flag in required:
        if getattr(args, flag.lstrip("-").replace("-", "_")) is None:
            ap.error(f"{flag} is required (or --smoke)")
    return args


_RUNS: Dict[str, str] = {}


def tiny_run(class_cond: bool = True) -> str:
    """A run of the tiny preset on the shipped digits (28 x 28, class-conditional unless ``class_cond`` is False),
    trained for 4 steps in a temporary folder: what ``--smoke`` measures where a script wants ``--run``."""
    key = "cond" if class_cond else "uncond"
    if key not in _RUNS:
        from ddpm.cli.commands import main

        run = Path(tempfile.mkdtemp(prefix="bench-smoke-")) / "run"
        argv = ["train", "--data", "mnist", "--preset", "tiny", "--image-size", "28", "--steps", "4",
                "--batch-size", "8", "--T", "50", "--out", str(run), "--quiet"]
        if main(argv + (["--class-cond"] if class_cond else [])) != 0:
            raise SystemExit("the smoke run did not train")
        _RUNS[key] = str(run)
    return _RUNS[key]
