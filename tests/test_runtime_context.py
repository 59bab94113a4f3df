"""The one seam a run enters (dfl.runtime.run_context): each thing it applies is undone on the
way out. And models build plain nn.Linear; the runtime swaps the ViTs' token-wise ones to the
oneDNN detour where it pays, keeping parameters and state dict keys."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dfl import models
from dfl.runtime import RunContext, core_share, cpu_swaps, onednn, run_context
from dfl.runtime import context as runtime_context
from dfl.runtime.allocator import keep_freed_memory
from dfl.runtime.onednn import TOKEN_WISE, TokenLinear

HOLD = (
    "import sys, time; from pathlib import Path; from dfl.runtime.core_share import CoreShare; "
    "share = CoreShare(4, Path(sys.argv[1])); print(share.threads, flush=True); time.sleep(60)"
)


def subnormal_flushes() -> bool:
    """A subnormal float32 through the CPU comes out as zero (torch.set_flush_denormal)."""
    return torch.tensor(1e-40, dtype=torch.float32).mul(1.0).item() == 0.0


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The core share on, its lock files in `places`, 4 cores, recounting at every tick."""
    monkeypatch.setattr(core_share, "RECHECK_S", 0.0)
    monkeypatch.setattr(core_share, "default_directory", lambda: tmp_path)
    monkeypatch.setattr(runtime_context, "available_cores", lambda: 4)
    monkeypatch.delenv("DFL_SHARE_CORES")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield tmp_path
    torch.set_num_threads(before)


def test_the_context_applies_and_undoes_each_thing(places: Path):
    assert not subnormal_flushes()
    with run_context("cpu") as ctx:
        assert subnormal_flushes()
        assert ctx.malloc_tuned == keep_freed_memory()  # once per process, and for good
        assert ctx.share is not None and ctx.share.pinned is None
        assert [p.name.endswith(".shared.lock") for p in places.glob("*.lock")] == [True]
        mine = ctx.share.path
        assert torch.get_num_threads() == 4  # alone on the 4 cores
        other = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(places)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert int(other.stdout.readline()) == 2  # 4 cores // 2 trainings
            ctx.tick()  # the loop's one call a step
            assert torch.get_num_threads() == 2
        finally:
            other.kill()
            other.wait()
    assert not subnormal_flushes()  # IEEE arithmetic again
    assert torch.get_num_threads() == 3  # the caller's count
    assert not mine.exists()  # the place is given up (the killed one's is found stale later)
    assert ctx.share is None
    ctx.tick()  # idle: nothing to do, nothing fails


def test_a_chosen_thread_count_is_pinned_and_given_back(places: Path):
    with run_context("cpu", threads=1) as ctx:
        assert torch.get_num_threads() == 1
        assert ctx.share is not None and ctx.share.pinned == 1
        assert [p.name.endswith(".pinned1.lock") for p in places.glob("*.lock")] == [True]
    assert torch.get_num_threads() == 3
    assert list(places.glob("*.lock")) == []


def test_a_deterministic_run_keeps_the_threads_it_starts_with(places: Path):
    with run_context("cpu", deterministic=True) as ctx:
        assert ctx.share is not None and ctx.share.pinned == 3
        assert torch.get_num_threads() == 3
    assert list(places.glob("*.lock")) == []


def test_everything_is_undone_when_the_run_fails(places: Path):
    with pytest.raises(RuntimeError, match="diverged"), run_context("cpu", threads=2):
        assert subnormal_flushes() and len(list(places.glob("*.lock"))) == 1
        raise RuntimeError("diverged")
    assert not subnormal_flushes()
    assert torch.get_num_threads() == 3
    assert list(places.glob("*.lock")) == []


def test_a_gpu_run_takes_no_place_among_the_cpu_trainings(places: Path):
    with run_context(torch.device("cuda"), threads=2) as ctx:  # no GPU needed to enter it
        assert ctx.share is None and list(places.glob("*.lock")) == []
        assert subnormal_flushes()  # the host's arithmetic still flushes
        assert torch.get_num_threads() == 2
    assert not subnormal_flushes() and torch.get_num_threads() == 3


def test_interrupt_handling_only_where_the_run_asks_for_it():
    # A program's own handlers, as Python starts one (a pytest-xdist worker ignores SIGINT).
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with run_context("cuda"):
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with run_context("cuda", interrupts=True):
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_an_idle_context_ticks_nothing():
    RunContext().tick()


# ---------------------------------------------------------------------------------------------
# The oneDNN detour, swapped in by the runtime


def test_a_vit_builds_plain_linears_and_marks_its_token_wise_ones():
    model = models.create("vit_lab")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)  # no TokenLinear
    marked = [name for name, m in model.named_modules() if getattr(m, TOKEN_WISE, False)]
    assert len(marked) == 1 + 6 * 4  # the embedding; q/k/v, out, and the MLP's two per block
    assert not any(name.startswith("head") for name in marked)  # the class token's rows only


@pytest.mark.parametrize("amd", [True, False])
def test_the_swap_keeps_parameters_and_state_dict_and_only_pays_on_amd_cpus(amd, monkeypatch):
    monkeypatch.setattr(onednn, "_amd_cpu", lambda: amd)
    model = models.create("vit_lab", depth=2)
    plain = copy.deepcopy(model)
    params = {name: id(p) for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    assert cpu_swaps(model, torch.device("cuda")) == 0  # not on a GPU
    swapped = cpu_swaps(model, "cpu")
    expected = 1 + 2 * 4 if amd and torch.backends.mkldnn.is_available() else 0
    assert swapped == expected
    assert sum(type(m) is TokenLinear for m in model.modules()) == expected
    assert {name: id(p) for name, p in model.named_parameters()} == params  # the same ones
    assert list(model.state_dict()) == keys  # checkpoints load either way
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the detour's side of the rule
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-5)


def test_the_trainer_builds_its_model_with_the_swap(monkeypatch):
    from dfl.config import build_config
    from dfl.training.trainer import build_model

    monkeypatch.setattr(onednn, "_amd_cpu", lambda: True)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    cfg = build_config(overrides={"model": "vit_lab", "model_args": {"depth": 1}})
    on_cpu, _ = build_model(cfg, 10, torch.device("cpu"))
    unplaced, _ = build_model(cfg, 10)  # a model loaded for inference: plain
    assert sum(type(m) is TokenLinear for m in on_cpu.modules()) == 5
    assert not any(type(m) is TokenLinear for m in unplaced.modules())
