"""glibc malloc keeps freed tensor memory once dfl tunes it: counted in page faults, in a child
process each, because the setting is process-wide and cannot be undone."""

import json
import os
import platform
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt"
)

# Three activations of the notebook CNN's first block (1.25 MB each) live at once, then freed,
# as in a training step: page faults of each step after a warm-up.
STEPS = """
import json, resource, torch
from dfl.runtime.allocator import keep_freed_memory
applied = keep_freed_memory()
x = torch.rand(100, 16, 14, 14)
faults = []
for i in range(25):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = x * 2; b = a + 1; c = b + 1
    del a, b, c
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults[5:]}))
"""


# The same steps in a run: a training's tuning comes from its run_context, on CPU.
IN_A_RUN = STEPS.replace(
    "applied = keep_freed_memory()",
    "from dfl.runtime import run_context\n"
    "with run_context('cpu') as ctx:\n"
    "    applied = ctx.malloc_tuned",
)


def _run(code: str = STEPS, **env: str) -> tuple[bool, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, check=True
    )
    result = json.loads(out.stdout)
    return result["applied"], statistics.median(result["faults"])


@pytest.mark.parametrize("code", [STEPS, IN_A_RUN], ids=["direct", "run_context"])
def test_tuned_malloc_reuses_freed_activations_without_page_faults(code):
    applied, faults = _run(code)
    assert applied
    assert faults == 0


def test_a_users_own_malloc_settings_are_left_alone():
    # glibc's starting threshold, fixed: every activation is fresh pages from the kernel
    applied, faults = _run(MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    assert not applied
    assert faults > 3 * 250  # about 306 pages per activation


def test_the_tuning_can_be_turned_off():
    applied, _ = _run(DFL_MALLOC_TUNING="0")
    assert not applied
