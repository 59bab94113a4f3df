"""Share this machine's cores among the dfl trainings running on it at the same time.

A training that nobody gave a thread count starts one intra-op thread per core, and OpenMP's
threads spin for a while between parallel regions instead of sleeping. Two such trainings
side by side oversubscribe the cores and spin against each other: two notebook CNNs on 2 cores
took 4.5-5.3 s an epoch each instead of 0.9 s alone (`make bench` has the concurrency study).
Fewer threads per run fix it where a passive OpenMP wait policy does not: sleeping threads
cost a lone run its speed on every small operation.

So each such training announces itself with a lock file in a per-user directory and trains
with cores // (trainings alive) threads, counted again every second: a run started beside
another makes both drop to their share, and the one left gets its cores back when the other
ends. The lock is an flock, which the kernel drops with the process, so the file of a killed
training is recognised as stale (its lock can be taken) and removed by the next one to look.

A thread count someone chose wins: `threads` in the config, `dfl sweep --threads`, a worker
pool's (`pin_threads`), OMP_NUM_THREADS or MKL_NUM_THREADS in the environment. Such a pinned
training still announces itself, with its thread count in its file's name, so that the others
split only the cores it leaves: a ViT beside a sweep's two 1-thread workers on 2 cores takes 1
thread, not 2 (max(1, (cores - pinned threads) // sharing trainings)). DFL_SHARE_CORES=0 turns
the sharing off.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

OPT_OUT = "DFL_SHARE_CORES"
RECHECK_S = 1.0  # how often a training counts the others (a listing and an flock per file)
_pinned = False


def pin_threads(n: int) -> None:
    """Set this process's intra-op threads to a count someone chose; trainings keep it."""
    global _pinned
    torch.set_num_threads(n)
    _pinned = True


def threads_fixed() -> bool:
    """Whether a thread count was chosen for this process (then it trains pinned to it)."""
    chosen = any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    return _pinned or chosen


def default_directory() -> Path:
    return Path(tempfile.gettempdir()) / f"dfl-trainings-{os.getuid()}"


class CoreShare:
    """This process's place among the trainings alive on the machine; `rebalance` sets its
    threads to its share, at most once a second (a `pinned` place keeps its count and is only
    counted by the others). Use as a context manager: leaving gives the place up and restores
    the thread count the process had."""

    def __init__(
        self, cores: int, directory: Path | None = None, *, pinned: int | None = None
    ) -> None:
        self.cores, self.dir, self.pinned = cores, directory or default_directory(), pinned
        self.dir.mkdir(mode=0o700, exist_ok=True)
        if self.dir.stat().st_uid != os.getuid():  # someone else's directory: share nothing
            raise PermissionError(f"{self.dir} belongs to another user")
        # Locked under a hidden name, then renamed: a file under its final name is always
        # locked while its training lives, so nobody takes a newborn one for stale.
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".new-")
        fcntl.flock(fd, fcntl.LOCK_EX)
        kind = f"pinned{pinned}" if pinned else "shared"
        self.fd, self.path = fd, self.dir / f"{os.getpid()}{Path(tmp).name[4:]}.{kind}.lock"
        os.rename(tmp, self.path)
        self.threads_before = torch.get_num_threads()
        self.threads, self._next_check = pinned or 0, 0.0
        self.rebalance()

    @classmethod
    def join(cls, cores: int, threads: int | None = None) -> CoreShare | None:
        """A place for a training: a sharing one, or a pinned one when `threads` or anything
        else chose its thread count; None when DFL_SHARE_CORES=0, or when the directory cannot
        be used (the training then keeps the threads it has)."""
        if os.environ.get(OPT_OUT) == "0":
            return None
        if threads is None and threads_fixed():
            threads = torch.get_num_threads()
        try:
            return cls(cores, pinned=threads)
        except OSError:
            return None

    def alive(self) -> int:
        """Trainings holding their lock now, this one included; stale files are removed."""
        return 1 + sum(1 for _ in self._others())

    def _others(self) -> Iterator[int]:
        """The pinned thread count (0: sharing) of each other training alive; the files of
        killed ones are removed on the way."""
        for path in self.dir.glob("*.lock"):
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:  # removed meanwhile: that training has ended
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield _pinned_threads(path)
            else:
                path.unlink(missing_ok=True)  # nobody holds it: its training was killed
            finally:
                os.close(fd)

    def rebalance(self) -> int:
        """Set this process's threads to its share of the cores; returns the thread count."""
        if self.pinned is not None:  # kept as chosen: not even a clock read a step
            return self.threads
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RECHECK_S
            others = list(self._others())
            sharing, left = 1 + others.count(0), self.cores - sum(others)
            threads = max(1, left // sharing)
            if threads != self.threads:
                torch.set_num_threads(threads)
                self.threads = threads
        return self.threads

    def close(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1
        if self.pinned is None:
            torch.set_num_threads(self.threads_before)

    def __enter__(self) -> CoreShare:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pinned_threads(path: Path) -> int:
    """The thread count a pinned training's file names (`123-x.pinned2.lock`); 0: sharing."""
    kind = path.name.rsplit(".", 2)[-2]
    return int(kind.removeprefix("pinned")) if kind.startswith("pinned") else 0
