"""`python -m dfl` is the `dfl` command (for environments where the script is not on PATH)."""

import sys

from dfl.cli import main

if __name__ == "__main__":  # not when a worker process imports it
    sys.exit(main())
