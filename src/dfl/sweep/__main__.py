"""`python -m dfl.sweep worker ...`: how `dfl sweep` starts its local workers. The same as
`dfl worker`, without building the whole CLI (and importing every command module) per worker."""

from __future__ import annotations

import os
import sys

from dfl.cli import Parser
from dfl.errors import CALLER, DflError
from dfl.runtime import flushed_to_zero
from dfl.runtime.interrupts import InterruptOnce, SigtermAsInterrupt, interrupted_exit_code
from dfl.sweep.commands import add_worker_arguments


def main(argv: list[str] | None = None) -> int:
    # Started by `dfl sweep` (a command) or by dfl.sweep.run (the API): word it as they do.
    CALLER.set(os.environ.get("DFL_CALLER", "cli"))
    parser = Parser(prog="python -m dfl.sweep")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_worker_arguments(sub.add_parser("worker"))
    args = parser.parse_args(argv)
    # a second Ctrl-C (or SIGTERM) cannot cut short putting the trial back
    with InterruptOnce(), SigtermAsInterrupt():
        try:
            with flushed_to_zero():  # before torch starts its threads: they inherit it
                return args.run(args) or 0
        except DflError as e:
            print(f"dfl worker: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("dfl worker: interrupted; its trial goes back in the queue", file=sys.stderr)
            return interrupted_exit_code()


if __name__ == "__main__":
    sys.exit(main())
