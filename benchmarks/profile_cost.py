"""`make profile-cost PROFILE=lab`: one profile's reproduction in a fresh directory, timed, and
its cost recorded in src/dfl/experiments/profile_costs.json, which `dfl reproduce --help`, the
report, the README and the progress lines quote. `make bench` does the same for the preview
profile after its throughput tables.

Usage: python benchmarks/profile_cost.py PROFILE [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from dfl.experiments import EXPERIMENTS
from dfl.runtime.atomic import atomic_file


def reproduction(profile: str, out: Path) -> tuple[float, float]:
    """Wall seconds and peak resident MB of `dfl reproduce --profile PROFILE`, run as a child
    process in a fresh directory. The directory is kept: its report is the one the timing
    belongs to."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out.with_name(out.name + ".log")
    print(f"running the {profile} reproduction in {out} (log: {log}) ...", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        command = [sys.executable, "-m", "dfl", "reproduce", "--profile", profile, "--out", out]
        code, peak_mb = run_with_peak(command, f)
    if code:
        raise SystemExit(f"the {profile} reproduction failed; see {log}")
    return time.perf_counter() - t0, peak_mb


def run_with_peak(command: list, output: IO[str]) -> tuple[int, float]:
    """Run `command` (its output to `output`): its exit code and the peak resident MB of its
    largest process, itself or one of its workers."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        launcher = [sys.executable, "-c", PEAK_OF_TREE, peak, *command]
        code = subprocess.call(launcher, stdout=output, stderr=subprocess.STDOUT)
        return code, int(peak.read_text()) / 1024 if peak.exists() else 0.0


# Runs a command and writes the peak resident KB of its largest process (it, its workers).
# Through this small launcher because Linux starts a child's ru_maxrss at its parent's size at
# the fork: timed straight from the benchmark, grown to GBs by then, a reproduction reported
# the benchmark's own size.
PEAK_OF_TREE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)"
)


def record_cost(profile: str, out: Path, wall_s: float, peak_mb: float, how: str) -> None:
    """The measured cost into profile_costs.json, which --help, the report and the progress
    lines quote: each experiment's own time from its result.json."""
    from dfl.experiments.experiment import load_record
    from dfl.experiments.profiles import COSTS

    costs = json.loads(COSTS.read_text())
    records = {name: load_record(out, name) for name in EXPERIMENTS}
    costs[profile] = {
        "wall_s": round(wall_s),
        "peak_mb": round(peak_mb),
        "machine": f"{os.cpu_count()} {cpu_name()} cores",
        "how": how,  # the command that measured it
        "experiments_s": {n: round(r.wall_s) for n, r in records.items() if r is not None},
    }
    with atomic_file(COSTS) as f:
        f.write((json.dumps(costs, indent=2) + "\n").encode())
    print(f"recorded the {profile} profile's cost in {COSTS}")


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", help="the profile to reproduce (smoke, preview, lab, ...)")
    parser.add_argument("--out", help="where it runs (default runs/cost-PROFILE, emptied first)")
    args = parser.parse_args()
    out = Path(args.out or f"runs/cost-{args.profile}")
    wall, rss = reproduction(args.profile, out)
    record_cost(args.profile, out, wall, rss, f"`make profile-cost PROFILE={args.profile}`")
    print(f"{args.profile}: {wall / 60:.1f} min, largest process {rss:.0f} MB")


if __name__ == "__main__":
    main()
