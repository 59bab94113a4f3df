"""One process per run directory, for the life of the run.

`fit` claims its run directory before it reads or writes anything there: it creates the
directory if needed and takes an exclusive `flock` on `RUN_DIR/.lock`, which holds the
holder's pid. A second `dfl train` (or `--resume`, or a sweep worker) on a directory that is
being trained is refused at once, naming that pid, instead of two runs writing one directory
or deleting each other's half-written checkpoints. The kernel drops the lock when its holder
dies, even by SIGKILL, so a killed run's stale `.lock` never blocks its `--resume`.

Why `fcntl.flock` and not the `filelock` library: this is the one call we need (filelock's
Unix lock is the same `flock`), we want the holder's pid in the file for the message, and a
non-blocking attempt is one flag. flock, unlike `fcntl.lockf`, belongs to the open file, so
it also keeps two claims in one process apart; and it is independent of the sweep's own
`lockf` on `RUN_DIR.lock`. The lock file is opened close-on-exec, so processes a run starts
do not inherit (and keep) the lock.

A run that cannot start (a bad config, bad data, a full disk) gives the directory back as it
found it: one this claim created is removed, a file it wrote into an existing one is removed,
while the lock is still held, so nobody else can be using them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dfl.errors import DflError, DiskFull, disk_full

LOCK_NAME = ".lock"
ATTEMPTS = 5  # the lock file can vanish under us when another claim gives up its directory


class RunDirInUse(DflError):
    """Another live process holds the run directory (exit 2: choose another --out, or wait)."""


@dataclass
class Claim:
    """A run directory this process holds. `started` marks the point after which a failure
    is the run's own (recorded in status.json) rather than a run that never started."""

    path: Path
    fd: int
    made_dirs: list[Path] = field(default_factory=list)  # created by this claim, outermost first
    made_files: list[Path] = field(default_factory=list)
    started: bool = False

    def new_file(self, path: Path) -> None:
        """Note that `path` is about to be written: removed again if the run does not start."""
        if not path.exists():
            self.made_files.append(path)

    def give_back(self) -> None:
        """Undo what this claim made, with the lock still held (nobody else is inside)."""
        if self.made_dirs and self.made_dirs[-1] == self.path:
            shutil.rmtree(self.path, ignore_errors=True)  # the lock file goes with it
            _remove_dirs(self.made_dirs[:-1])
        else:
            for path in self.made_files:
                with contextlib.suppress(OSError):
                    path.unlink()

    def release(self) -> None:
        lock = self.path / LOCK_NAME
        with contextlib.suppress(OSError):
            if _is_our_lock(self.fd, lock):
                lock.unlink()  # while still held: a process that opened it sees it gone, retries
        os.close(self.fd)


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, doing: str = "training it") -> Iterator[Claim]:
    """Hold `run_dir` exclusively for the `with` block (see the module docstring); `doing`
    says what the holder does there, for the message another claim gets."""
    claim = _acquire(run_dir, doing)
    try:
        yield claim
    except BaseException:
        if not claim.started:
            claim.give_back()
        raise
    finally:
        claim.release()


def _acquire(run_dir: Path, doing: str) -> Claim:
    for _ in range(ATTEMPTS):
        made = _make_dirs(run_dir)
        lock = run_dir / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # another claim removed the directory it had made
            continue
        except NotADirectoryError:
            raise DflError(f"{run_dir} is a file, not a directory; choose another --out") from None
        except OSError as e:
            _remove_dirs(made)
            raise unwritable(run_dir, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            then = " (then --resume)" if doing == "training it" else ""
            raise RunDirInUse(
                f"run directory {run_dir} is in use by {holder}, which is still {doing}; "
                f"wait for it to finish{then}, or choose another --out"
            ) from None
        if not _is_our_lock(fd, lock):  # given up and removed between our open and our lock
            os.close(fd)
            continue
        claim = Claim(run_dir, fd, made)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as e:
            claim.give_back()
            claim.release()
            raise unwritable(run_dir, e) from None
        return claim
    raise DflError(f"cannot lock run directory {run_dir}: it keeps disappearing; try again")


def _make_dirs(run_dir: Path) -> list[Path]:
    """Create `run_dir` and its missing parents; returns the ones this call created. The leaf
    is made with a plain mkdir, so of two processes creating it together exactly one owns it."""
    missing = []
    path = run_dir
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    made = []
    try:
        for directory in reversed(missing):
            try:
                os.mkdir(directory)
                made.append(directory)
            except FileExistsError:
                pass
    except NotADirectoryError:
        _remove_dirs(made)
        raise DflError(
            f"cannot create run directory {run_dir}: a parent is a file; choose another --out"
        ) from None
    except OSError as e:
        _remove_dirs(made)
        raise unwritable(run_dir, e) from None
    return made


def _remove_dirs(made: list[Path]) -> None:
    for directory in reversed(made):
        with contextlib.suppress(OSError):
            directory.rmdir()


def unwritable(run_dir: Path, e: OSError) -> DflError:
    """A directory that cannot be written (permissions, read-only, full): exit 1."""
    how = {
        errno.ENOSPC: "free some space or choose another --out",
        errno.EDQUOT: "free some space or choose another --out",
        errno.EFBIG: "free some space or choose another --out",
    }.get(e.errno or 0, "choose a directory you can write to with --out")
    kind = DiskFull if disk_full(e) else DflError
    return kind(f"cannot write to run directory {run_dir}: {e.strerror or e} ({how})", exit_code=1)


def _is_our_lock(fd: int, lock: Path) -> bool:
    try:
        st = os.stat(lock)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(fd: int) -> str:
    """'process PID' (on HOST when another machine's) from the lock file, as far as known."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if not text or not text[0].isdigit():
        return "another process"  # it has the lock but has not written its pid yet
    host = text[1] if len(text) > 1 else None
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"process {text[0]}{where}"
