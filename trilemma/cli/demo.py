"""``trilemma demo``: the main job end to end on the embedded shapes data (``trilemma.demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from trilemma.cli.options import command


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "demo", "the main job: train, generate and evaluate end to end on shapes", run)
    p.add_argument("--quick", action="store_true", help="a ~2 minute version (used in tests)")
    p.add_argument("--out", default="runs/demo", help="output directory")


def run(args: argparse.Namespace) -> None:
    from trilemma.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
