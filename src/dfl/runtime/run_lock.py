"""One lock per run directory, for the life of the run, taken by refusing or by waiting.

`fit` claims its run directory before it reads or writes anything there: it creates the
directory if needed and takes an exclusive lock on `RUN_DIR/.lock`, which holds the holder's
pid. A second `dfl train` (or `--resume`, or `dfl reproduce`) on a directory that is being
trained is refused at once, naming that pid, instead of two runs writing one directory or
deleting each other's half-written checkpoints. A sweep trial takes the same lock by waiting
(`wait=True`): two workers whose points share one longer run take turns in it, and a worker
whose directory a `dfl train` holds waits for it rather than failing the trial. The kernel
drops the lock when its holder dies, even by SIGKILL, so a killed run's stale `.lock` never
blocks its `--resume`.

Refusing and waiting are two ways of taking one lock, and this module is the only place that
takes it: on Linux an `flock` and a `lockf` (POSIX record) lock on the same file do not see
each other, so a directory locked one way by the trainer and another way by the sweep (as it
once was) is not locked at all between the two. The one mechanism is `fcntl.flock`:

- it belongs to the open file, not to the process, so two claims in one process exclude each
  other too (`lockf`'s would both succeed), and the holder reading its own lock file, or any
  other code opening and closing it, cannot drop it (closing any descriptor of a file drops
  all of that process's `lockf` locks on it);
- the lock file is opened close-on-exec, so processes a run starts do not inherit (and keep)
  the lock; the kernel releases it when its last descriptor closes;
- on NFS, Linux carries it to the server as a whole-file lock, so workers on several machines
  sharing a sweep directory exclude each other as well (the lock file names the host).

Not the `filelock` library: its Unix lock is the same `flock`, but it waits by polling where a
claim without a timeout waits in the kernel, it has no hook for a "waiting for ..." line, and
we want the holder's pid in the file for the message. A claim with a timeout polls.

A claim made with `reentrant=True` (a sweep trial's) is joined by a claim of the same directory
made inside its block by the same thread (`fit`'s own): the inner claim gets the outer one
instead of refusing its own holder. Without it, a second claim in one process is refused like
any other.

A run that cannot start (a bad config, bad data, a full disk) gives the directory back as it
found it: one this claim created is removed, a file it wrote into an existing one is removed,
while the lock is still held, so nobody else can be using them.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dfl.errors import DflError, DiskFull, disk_full, option

LOCK_NAME = ".lock"
ATTEMPTS = 5  # the lock file can vanish under us when another claim gives up its directory
POLL_S = (0.05, 0.5)  # a claim with a timeout tries this often, from the first to the second


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


# The reentrant claims this thread holds (see the module docstring): a new thread starts empty.
_joinable: contextvars.ContextVar[tuple[Claim, ...]] = contextvars.ContextVar(
    "dfl_run_lock_joinable", default=()
)


@contextlib.contextmanager
def claim_run_dir(
    run_dir: Path,
    doing: str = "training it",
    *,
    wait: bool = False,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    reentrant: bool = False,
) -> Iterator[Claim]:
    """Hold `run_dir` exclusively for the `with` block (see the module docstring).

    Held by another process (or another claim in this one), the claim is refused at once with
    `RunDirInUse`; `doing` says what the holder does there, for that message. With `wait` it
    waits instead, until the holder lets go or, given a `timeout` in seconds, until that has
    passed (then `RunDirInUse`, saying how long it waited); `on_wait` is called once, with the
    holder ("process PID"), before it starts waiting. With `reentrant`, a claim of `run_dir`
    made inside the block by this thread joins this one (see the module docstring): it gets
    this `Claim`, and giving back and releasing stay with this block."""
    if timeout is not None and not wait:
        raise ValueError("a timeout is for a claim that waits (wait=True)")
    held = _joined(run_dir)
    if held is not None:
        yield held
        return
    claim = _acquire(run_dir, doing, wait, timeout, on_wait)
    token = _joinable.set((*_joinable.get(), claim)) if reentrant else None
    try:
        yield claim
    except BaseException:
        if not claim.started:
            claim.give_back()
        raise
    finally:
        if token is not None:
            _joinable.reset(token)
        claim.release()


@contextlib.contextmanager
def file_lock(lock_path: Path, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold a plain lock file (not a run directory: a sweep's `create.lock`), waiting for it;
    `on_wait` runs once if another holds it. The same `flock` as a claim, released by the
    kernel if the holder is killed; the file stays (nothing removes it, so no retries)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if not _lock(fd, None, block=False):
            on_wait()
            _lock(fd, None)
        yield
    finally:
        os.close(fd)  # the last descriptor of the open file: the lock goes with it


def _joined(run_dir: Path) -> Claim | None:
    """The reentrant claim of this thread that holds `run_dir`, if any."""
    lock = Path(run_dir) / LOCK_NAME
    return next((c for c in _joinable.get() if _is_our_lock(c.fd, lock)), None)


def _acquire(
    run_dir: Path,
    doing: str,
    wait: bool,
    timeout: float | None,
    on_wait: Callable[[str], None] | None,
) -> Claim:
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    vanished = 0  # lock files removed between our open and our lock, without our waiting
    while vanished < ATTEMPTS:
        made = _make_dirs(run_dir)
        lock = run_dir / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # another claim removed the directory it had made
            vanished += 1
            continue
        except NotADirectoryError:
            raise DflError(
                f"{run_dir} is a file, not a directory; choose another {option('out')}"
            ) from None
        except OSError as e:
            _remove_dirs(made)
            raise unwritable(run_dir, e) from None
        waited = False
        try:
            if not _lock(fd, None, block=False):
                holder = _holder(fd)
                if not wait:
                    raise _in_use(run_dir, holder, doing)
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
                if not _lock(fd, deadline):
                    raise _in_use(run_dir, _holder(fd), doing, waited=timeout)
                waited = True
        except BaseException:  # refused, timed out, or interrupted while waiting
            os.close(fd)
            raise
        if not _is_our_lock(fd, lock):  # given up and removed between our open and our lock
            os.close(fd)
            vanished += 0 if waited else 1  # after a wait: the holder gave up, try again
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


def _lock(fd: int, deadline: float | None, block: bool = True) -> bool:
    """Take the exclusive flock on `fd`: without `block`, only if it is free now; else by
    waiting in the kernel, or, with a `deadline` (time.monotonic()), by polling until then.
    False: not taken."""
    delay = POLL_S[0]
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block and deadline is None else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            if not block or deadline is None:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(2 * delay, POLL_S[1])


def _in_use(run_dir: Path, holder: str, doing: str, waited: float | None = None) -> RunDirInUse:
    then = f" (then {option('resume')})" if doing == "training it" else ""
    after = "" if waited is None else f" after {waited:g}s of waiting"
    return RunDirInUse(
        f"run directory {run_dir} is in use by {holder}, which is still {doing}{after}; "
        f"wait for it to finish{then}, or choose another {option('out')}"
    )


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
            f"cannot create run directory {run_dir}: a parent is a file; choose another "
            f"{option('out')}"
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
    full = disk_full(e)
    how = (
        f"free some space or choose another {option('out')}"
        if full
        else f"choose a directory you can write to with {option('out')}"
    )
    kind = DiskFull if full else DflError
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
