"""The one error type users see.

Everything that is the user's to fix (a missing or corrupt file, a bad config key, a layer
whose shapes do not fit, a diverged run) raises `DflError`. The CLI prints its message on one
line and exits with `exit_code`; nothing else is allowed to escape as a traceback.
"""

from __future__ import annotations

import errno
import shlex
from contextvars import ContextVar
from pathlib import Path

# Where the user is calling from: "python" (the API, a notebook) unless a `dfl` command's entry
# point says "cli" (dfl.cli.main, the sweep's worker processes); the processes dfl starts carry
# it on (dfl.runtime.local_workers). Messages name options as that caller gives them.
CALLER: ContextVar[str] = ContextVar("dfl_caller", default="python")


SWITCHES = {"resume", "retry-failed"}  # options given alone on the command line


def option(name: str, value: object = None) -> str:
    """An option as the caller gives it: `--out` (`--device auto`) on the command line, `out=`
    (`device='auto'`) in Python; a switch (resume, retry-failed) as `resume=True`."""
    if CALLER.get() == "cli":
        return f"--{name}" + (f" {value}" if value is not None else "")
    keyword = name.replace("-", "_")
    if name in SWITCHES:
        return f"{keyword}=True"
    return f"{keyword}=" + (repr(value) if value is not None else "")


def rerun() -> str:
    """What continues the caller's work: the same command, or the same call."""
    return "rerun the same command" if CALLER.get() == "cli" else "make the same call again"


def resume_command(run_dir: Path) -> str:
    """How the caller resumes the run in `run_dir`: a command, or the API's call, either one
    that works when pasted (the path quoted)."""
    if CALLER.get() == "cli":
        return f"`dfl train --resume --out {shlex.quote(str(run_dir))}`"
    return f"`dfl.train({str(run_dir / 'config.toml')!r}, out={str(run_dir)!r}, resume=True)`"


class DflError(Exception):
    """A problem the user can fix, with a one-line message that says what and how."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(DflError):
    """A config key that is unknown, mistyped or out of range."""


class DataError(DflError):
    """A data file that is missing, corrupt or fails its checksum."""


class ShapeError(DflError):
    """A layer that cannot take the shape of its input. `fitted`: the layers before it, as a
    module, where a layer list was being built (`dfl shapes` shows them)."""

    fitted: object = None


class UnloadableRun(DflError):
    """A run directory `load_trained` cannot rebuild a model from: its config.toml or its
    weights are missing or damaged."""


class DiskFull(DflError):
    """No room to write a file: a full disk, a quota, a file-size limit. The machine's problem,
    not the run's: a sweep puts the trial back in the queue rather than recording it failed,
    so the same command completes once there is room."""

    exit_code = 1


NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # an OSError's errno for a full disk
NO_ROOM_WORDS = ("No space left", "Disk quota exceeded", "File too large")  # and its message


def disk_full(e: BaseException) -> bool:
    return isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in NO_ROOM)


class TrainingDiverged(DflError):
    """A non-finite loss: the run stops and is recorded as failed."""

    exit_code = 3


class ExperimentsFailed(DflError):
    """`dfl reproduce` or `dfl lab` ran every selected experiment, but some failed: the others'
    results are saved and the report, written, marks each failed one with its reason."""

    exit_code = 4

    def __init__(self, failed: dict[str, str], report: object) -> None:
        self.failed, self.report = failed, report  # experiment -> reason; the report's path
        many = len(failed) > 1
        super().__init__(
            f"{len(failed)} experiment{'s' if many else ''} failed: {', '.join(failed)} "
            f"(the report marks {'them' if many else 'it'}: {report}; {rerun()} to retry, "
            "finished runs are kept)"
        )


def one_line(e: BaseException) -> str:
    """An exception as the one-line reason a report gives: a DflError's message as it is (it
    says what and how), any other's type first, then its first line ("RuntimeError: CUDA
    error: out of memory"; a bare "MemoryError")."""
    if isinstance(e, DflError):
        return str(e)
    first = str(e).strip().partition("\n")[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is an allocation that failed: Python's, the CPU allocator's or CUDA's."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
