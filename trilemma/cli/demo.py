"""``trilemma demo``: the main job end to end on the embedded shapes data (``trilemma.demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from trilemma.cli.options import command, positive_int
from trilemma.demo import run_demo


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "demo", "the main job: every tokenizer and generator family, trained and evaluated on shapes", run)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a ~2 minute smoke version (used in tests)")
    size.add_argument("--full", action="store_true", help="the same study with 3-13x longer schedules (measured 32 min on 2 Xeon cores)")
    p.add_argument("--out", default="runs/demo", help="output directory (finished trainings there are kept)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes sharing the cores (default 2: two one-thread trainings at once on 2 cores "
                        "do ~45%% more steps than one on both)")


def run(args: argparse.Namespace) -> None:
    run_demo(Path(args.out), "quick" if args.quick else "full" if args.full else "standard", workers=args.workers)
