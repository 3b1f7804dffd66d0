"""The ``trilemma`` command line: ``main.py`` builds the parser from one module per command family
(``info``, ``train``, ``tokens``, ``generate``, ``evaluate``, ``demo``), each adding its subcommands
with ``set_defaults(func=...)``; ``options.py`` holds the flags several families share. Thin: it
parses, calls library functions and prints."""

from trilemma.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
