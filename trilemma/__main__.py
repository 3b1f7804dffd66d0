"""``python -m trilemma``: the command line."""

import sys

from trilemma.cli import main

sys.exit(main())
