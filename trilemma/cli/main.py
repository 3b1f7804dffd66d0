"""The root parser and the dispatch: ``trilemma [--version] [--debug] COMMAND ...``.

Errors print one line (``error: ...``), the library's names of fields and arguments as flags
(``options.in_flags``), and exit 1 (2 for a command line that does not parse); ``--debug``,
before or after the subcommand, shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from trilemma.cli import demo, evaluate, generate, info, tokens, train
from trilemma.cli.options import Parser, in_flags

FAMILIES = (info, train, generate, tokens, evaluate, demo)


def _version() -> str:
    try:
        return version("trilemma")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="trilemma", description="Image tokenizers and the generative transformers that run on their tokens.")
    parser.add_argument("--version", action="version", version=f"trilemma {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for users; --debug for developers
        if args.debug:
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {in_flags(msg)}", file=sys.stderr)
        return 1
    return 0
