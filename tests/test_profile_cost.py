"""benchmarks/profile_cost.py: the peak memory it records is the reproduction's own."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from profile_cost import run_with_peak

FILL = "x = bytearray({mb} * 2**20); x[::4096] = b'1' * len(x[::4096])"


def test_the_peak_is_the_commands_largest_process_not_the_callers(tmp_path: Path):
    """Linux starts a child's ru_maxrss at its parent's size at the fork, so a small command
    timed straight from a large caller reads as large. Through run_with_peak, a command from
    a caller of 400 MB reads as its own size, and a worker's 150 MB counts."""
    caller = bytearray(400 * 2**20)
    caller[::4096] = b"1" * len(caller[::4096])
    with open(tmp_path / "log", "w") as log:
        code, small = run_with_peak([sys.executable, "-c", "pass"], log)
        assert code == 0 and small < 100, small
        fill = FILL.format(mb=150)
        worker = f"import subprocess, sys; subprocess.call([sys.executable, '-c', {fill!r}])"
        code, with_worker = run_with_peak([sys.executable, "-c", worker], log)
        assert code == 0 and 150 < with_worker < 300, with_worker
        code, _ = run_with_peak([sys.executable, "-c", "raise SystemExit(3)"], log)
        assert code == 3
