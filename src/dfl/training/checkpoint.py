"""Checkpoints that survive a kill at any instant and cannot run code when loaded.

A checkpoint is a directory `epoch-0007/` holding `tensors.safetensors` (weights, optimiser
moments, RNG states: no pickle) and `state.json` (epoch, history, the rest of the optimiser
and scheduler state, and the sha256 of the tensors file). It is written in a temporary
directory, fsynced and renamed into place, so a directory under a final name is always
complete; the previous checkpoint is kept until the next one is in place. On load, a
checkpoint whose hash does not match is reported and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from dfl.errors import NO_ROOM_WORDS, DflError, DiskFull, option
from dfl.runtime.atomic import atomic_write_json, fsync_dir
from dfl.runtime.interrupts import say
from dfl.training.best import Best

KEEP = 2  # the newest checkpoint and the one before it

# The keys of tensors.safetensors: the model's state dict under "model.", the best epoch's
# (when it is kept) under "best.", the optimiser's tensors under "optim." (`split_state`),
# and the random generators' states.
MODEL, BEST, OPTIMIZER = "model", "best", "optim"
RNG_TORCH, RNG_SHUFFLE, RNG_CUDA = "rng.torch", "rng.shuffle", "rng.cuda"
REQUIRED_TENSORS = (RNG_TORCH, RNG_SHUFFLE)  # what every resume sets, whatever the model


class _Best(BaseModel):
    model_config = ConfigDict(strict=True)
    value: float | None
    epoch: int | None


class CheckpointState(BaseModel):
    """The shape of `state.json` as `save_training` writes it:
    a file that parses but has another shape (`"epoch": "four"`, a list, no `history`) is
    damaged like one whose hash does not match, and the previous checkpoint is used."""

    model_config = ConfigDict(strict=True, extra="allow")
    epoch: int = Field(ge=1)
    tensors_sha256: str
    history: list[dict[str, Any]]
    best: _Best
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any]


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict's tensors under `prefix.` (MODEL, BEST), for the tensors file."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict stored under `prefix.` in a tensors file ({} when there is none)."""
    head = f"{prefix}."
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


def split_state(prefix: str, tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested state dict into `tensors` under a dotted name and leave
    a {"__tensor__": name} marker, so the rest is plain JSON."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        return {str(k): split_state(f"{prefix}.{k}", v, tensors) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [split_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(tree)]
    return tree


def join_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`split_state` undone: each {"__tensor__": name} marker replaced by its tensor."""
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        return {k: join_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_state(v, tensors) for v in tree]
    return tree


def optimizer_state_from_json(state: dict[str, Any]) -> dict[str, Any]:
    # JSON turned the integer parameter ids into strings; the optimiser wants them back.
    return {
        "state": {int(k): v for k, v in state["state"].items()},
        "param_groups": state["param_groups"],
    }


# ---------------------------------------------------------------------------------------------
# A training run's state: what a resume needs to go on exactly as the run would have


def save_training(
    root: Path,
    epoch: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    shuffle: torch.Generator,
    device: torch.device,
    history: list[dict[str, Any]],
    best: Best,
) -> Path:
    """Checkpoint `epoch` of a run under `root` (`save`): the model's and the best epoch's
    weights, the optimiser, schedule and loss scaler, the global, shuffling and CUDA random
    generators' states, and the history."""
    tensors = prefixed(MODEL, model.state_dict())
    if best.weights is not None:
        tensors.update(prefixed(BEST, best.weights))
    tensors[RNG_TORCH] = torch.get_rng_state()
    tensors[RNG_SHUFFLE] = shuffle.get_state()
    if device.type == "cuda":
        tensors[RNG_CUDA] = torch.cuda.get_rng_state(device)
    state = {
        "history": history,
        "best": {"value": best.value, "epoch": best.epoch},
        "optimizer": split_state(OPTIMIZER, optimizer.state_dict(), tensors),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict(),
    }
    return save(root, epoch, tensors, state)


def restore_training(
    root: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    shuffle: torch.Generator,
    device: torch.device,
    best: Best,
) -> tuple[int, list[dict[str, Any]]] | None:
    """`save_training` undone from the newest intact checkpoint under `root`: every object
    given is set to its saved state (`best` included). Returns (its epoch, its history), or
    None when there is no checkpoint (a fresh start)."""
    found = load_latest(root)
    if found is None:
        return None
    tensors, state = found
    model.load_state_dict(unprefixed(MODEL, tensors))
    best.value, best.epoch = state["best"]["value"], state["best"]["epoch"]
    best.weights = unprefixed(BEST, tensors) or None
    optimizer.load_state_dict(optimizer_state_from_json(join_state(state["optimizer"], tensors)))
    _match_parameter_layouts(optimizer)
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(tensors[RNG_TORCH])
    shuffle.set_state(tensors[RNG_SHUFFLE])
    if RNG_CUDA in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors[RNG_CUDA], device)
    return int(state["epoch"]), state["history"]


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored moment the memory layout of its parameter. Checkpoints store tensors
    contiguous (safetensors has no strides), so a channels-last conv weight's Adam moments or
    SGD momentum come back in the standard layout; the fused optimisers walk parameter, grad
    and state as flat memory and would then pair element i of one with element j of the other
    (a resumed CNN drifted from the uninterrupted run from its first step). `empty_like` keeps
    the parameter's strides; the values are copied element by element by index."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


# ---------------------------------------------------------------------------------------------
# Files


def _shape_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" and {error.error_count() - 1} more" if error.error_count() > 1 else ""
    return f"state.json has the wrong shape: '{key}': {first['msg']}{more}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(root: Path, epoch: int, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write checkpoint `epoch` under `root` atomically; prune all but the newest KEEP."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    tmp = root / f".epoch-{epoch:04d}.tmp-{os.getpid()}"
    for stale in root.glob(".epoch-*.tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        tensor_file = tmp / "tensors.safetensors"
        _save_tensors(tensors, tensor_file)
        with tensor_file.open("rb") as f:
            os.fsync(f.fileno())
        state = {**state, "epoch": epoch, "tensors_sha256": _sha256(tensor_file)}
        atomic_write_json(tmp / "state.json", state)
        fsync_dir(tmp)
        _fault_pause(epoch)
        shutil.rmtree(final, ignore_errors=True)  # only when re-saving the same epoch
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(root.glob("epoch-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors reports a full disk as its own error type; make it the one-line kind."""
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    except Exception as e:  # SafetensorError: I/O error, File too large, No space left ...
        if isinstance(e, OSError):
            raise
        kind = DiskFull if any(w in str(e) for w in NO_ROOM_WORDS) else DflError
        raise kind(f"cannot write checkpoint {path}: {e}", exit_code=1) from None


def save_weights(path: Path, weights: dict[str, torch.Tensor]) -> str:
    """A finished run's weights: written beside their final name, then renamed into place.
    Returns the file's sha256, which the run records to check the file when it is loaded."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _save_tensors(weights, tmp)
        digest = _sha256(tmp)
        os.chmod(tmp, 0o644)  # safetensors creates 0600; the weights are ordinary data
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def weights_damaged(path: Path, sha256: str | None) -> bool:
    """Whether a finished run's weights file differs from what it wrote (None: a run from
    before runs recorded it, which cannot be checked)."""
    return sha256 is not None and _sha256(path) != sha256


def _fault_pause(epoch: int) -> None:
    """Fault injection for the tests: DFL_FAULT_PAUSE_BEFORE_RENAME="EPOCH:SECONDS" sleeps
    between writing that epoch's checkpoint and renaming it into place, to be killed in."""
    spec = os.environ.get("DFL_FAULT_PAUSE_BEFORE_RENAME")
    if spec:
        at, _, seconds = spec.partition(":")
        if int(at) == epoch:
            time.sleep(float(seconds))


def load_latest(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest intact checkpoint under `root`, or None when there is none. A damaged one
    is reported on stderr and skipped; if every one is damaged, that is an error."""
    candidates = sorted(root.glob("epoch-*"), reverse=True) if root.exists() else []
    problems = []
    for path in candidates:
        try:
            state = json.loads((path / "state.json").read_text())
            try:
                checked = CheckpointState.model_validate(state)
            except ValidationError as e:
                raise ValueError(_shape_problem(e)) from None
            if path.name != f"epoch-{checked.epoch:04d}":
                raise ValueError(f"state.json says epoch {checked.epoch}")
            tensor_file = path / "tensors.safetensors"
            if _sha256(tensor_file) != checked.tensors_sha256:
                raise ValueError("sha256 of tensors.safetensors does not match state.json")
            tensors = load_file(str(tensor_file))
            missing = [k for k in REQUIRED_TENSORS if k not in tensors]
            if missing:
                raise ValueError(f"tensors.safetensors lacks {', '.join(missing)}")
            return tensors, state
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            problems.append(f"{path}: {e}")
            say(f"dfl: warning: checkpoint {path} is damaged ({e}); trying an older one")
    if problems:
        raise DflError(
            f"every checkpoint under {root} is damaged: {'; '.join(problems)}; delete {root} "
            f"and resume to train the run again from epoch 1, or use another {option('out')}"
        )
    return None
