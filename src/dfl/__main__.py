"""`python -m dfl` is the `dfl` command (for environments where the script is not on PATH)."""

import sys

from dfl.cli import main

sys.exit(main())
