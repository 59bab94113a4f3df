"""Ctrl-C that ends a command with one line, whenever it comes.

Two things made it a traceback. A SIGINT during an import (building the parser imports torch
and numpy; torch imports `torch._dynamo` on the first optimiser it builds, 0.75 s) can leave a
module half-initialised, and some of those imports swallow the KeyboardInterrupt: the run
then went on, or failed later with "cannot load module more than once per process". And
under `timeout`, or with Ctrl-C sent to a process group, the same SIGINT arrives twice, the
second during shutdown (in torch's atexit handlers). So imports hold a Ctrl-C until they are
done (`deferred_interrupt`), and after the first one the rest are ignored (`InterruptOnce`).

Both act only where Python handles SIGINT itself, in the main thread: a process started with
SIGINT ignored (a script's background job) keeps ignoring it.

SIGTERM (a scheduler, `timeout`, a launcher stopping its workers) ends a command the same way,
once (`SigtermAsInterrupt`); the exit code then says which it was, as a shell would: 130 after
Ctrl-C, 143 after SIGTERM (`interrupted_exit_code`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class InterruptOnce:
    """While active, the first Ctrl-C raises KeyboardInterrupt and later ones are ignored, so
    the way out (a trial put back in its queue, a half-made checkpoint removed, torch's atexit
    handlers) is not cut into a traceback. Once fired, SIGINT stays ignored: the process is
    on its way out. Otherwise the previous handler comes back at the end."""

    def __enter__(self) -> InterruptOnce:
        self.previous = signal.getsignal(signal.SIGINT)
        self.active = self.previous is signal.default_int_handler and _in_main_thread()
        self.fired = False
        if self.active:
            signal.signal(signal.SIGINT, self._fire)
        return self

    def _fire(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.fired = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self.active and not self.fired:
            signal.signal(signal.SIGINT, self.previous)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block and deliver it (to the handler that was
    there before) when the block ends: for imports and other setup that must not be cut in
    half. Keep such blocks short: the user waits for them."""
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or not _in_main_thread():  # ignored, default, or a thread
        yield
        return
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        previous(signal.SIGINT, None)  # raises KeyboardInterrupt (or does what it does)


INTERRUPTED, TERMINATED = 130, 143  # exit codes after SIGINT and SIGTERM: 128 + the signal
_terminated = False  # whether this process was asked to stop by SIGTERM


def note_sigterm() -> None:
    """Record that the KeyboardInterrupt on its way came from SIGTERM (for the exit code)."""
    global _terminated
    _terminated = True


def interrupted_exit_code() -> int:
    return TERMINATED if _terminated else INTERRUPTED


class SigtermAsInterrupt:
    """While active (in the main thread, where SIGTERM has its default action), the first
    SIGTERM raises KeyboardInterrupt, so the command winds down as after Ctrl-C (checkpoints
    kept, trials requeued) instead of dying mid-write; later ones are ignored. A block that
    needs its own handler (a group of workers) sets it inside, calling `note_sigterm`."""

    def __enter__(self) -> SigtermAsInterrupt:
        global _terminated
        _terminated = False  # a new command (main() called again, as the tests do)
        self.previous = signal.getsignal(signal.SIGTERM)
        self.active = self.previous is signal.SIG_DFL and _in_main_thread()
        if self.active:
            signal.signal(signal.SIGTERM, self._fire)
        return self

    def _fire(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        note_sigterm()
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self.active:
            signal.signal(signal.SIGTERM, self.previous)


class ReaderGone(KeyboardInterrupt):
    """The reader of dfl's progress lines went away (`dfl train 2>&1 | head -1`). The command
    ends as after a Ctrl-C, its run resumable, and exits as a shell's SIGPIPE would: a training
    must not be recorded failed because nobody reads its log."""


def say(line: str) -> None:
    """`line` on stderr in one write with its newline. `print` writes the two apart, and a
    Ctrl-C or SIGTERM between them left the line open, so "dfl: interrupted" ended up at the end
    of a progress line instead of on its own."""
    try:
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())  # later writes vanish
        raise ReaderGone from None
