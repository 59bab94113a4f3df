"""A run directory's bookkeeping: the files a run leaves besides its checkpoints, how they are
written and read back, and the check that a resume is the same run (trainer.py's loop writes
them; sweeps, reports and `load_trained` read them).

    config.toml        the resolved config: `dfl train --config RUN/config.toml` repeats the run
    metrics.jsonl      one line per epoch, rewritten with each checkpoint
    status.json        running | paused | completed | failed | pruned, with reason and final metrics
    checkpoints/       the last two checkpoints (checkpoint.py)
    model.safetensors  the final weights (the best validation epoch's with restore_best)
"""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dfl.config import TrainConfig, build_config, dict_to_toml, read_toml
from dfl.errors import ConfigError, DflError, UnloadableRun, one_line, option, resume_command
from dfl.models.registry import spelled_out
from dfl.runtime.atomic import atomic_write_bytes, atomic_write_json, is_interrupted_write
from dfl.training import checkpoint

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
STATUS = "status.json"
CHECKPOINTS = "checkpoints"
WEIGHTS = "model.safetensors"  # a finished run's final weights (the selected epoch's)

# Keys that may differ when a run is resumed: how a run is executed (speed), not what it
# computes.
RESUMABLE_DIFFERENCES = {
    "device", "threads", "compile", "cuda_graph", "checkpoint", "checkpoint_interval_s",
}  # fmt: skip


class RunStatus(enum.StrEnum):
    """How a run stands, as status.json spells it. A str: it equals, prints and serialises as
    its value ("completed"), so code comparing with plain strings keeps working."""

    RUNNING = "running"  # training now, or killed (SIGKILL) while it trained
    # stopped: by Ctrl-C, SIGTERM or its reader gone, or after `until_epoch`; resumes like a
    # killed run
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    PRUNED = "pruned"  # ended early by a callback (a sweep's pruner)


# ---------------------------------------------------------------------------------------------
# status.json


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """status.json as a dict (its "status" a RunStatus), or None when the run has none. A
    file that is not JSON or not a run status is a DflError naming it."""
    path = Path(run_dir) / STATUS
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DflError(_damaged(path, f"is not valid JSON ({e})")) from None
    if not isinstance(status, dict) or not isinstance(status.get("status"), str):
        raise DflError(_damaged(path, 'is not a run status (no "status" field)'))
    if status["status"] not in _STATUS_VALUES:  # dfl writes no other; an edited file
        raise DflError(
            _damaged(
                path,
                f"is not a run status ('{status['status']}' is none of "
                f"{', '.join(_STATUS_VALUES)})",
            )
        )
    problem = _final_problem(status)
    if problem:
        raise DflError(_damaged(path, f"is not a run status ({problem})"))
    return {**status, "status": RunStatus(status["status"])}


_STATUS_VALUES = tuple(s.value for s in RunStatus)


def _damaged(path: Path, problem: str) -> str:
    """A damaged status.json: the checkpoints beside it are intact, and a resume without the
    file goes on from the last of them (it reads as a run still running)."""
    return (
        f"{path} {problem}; delete that file and resume ({option('resume')}) to go on from the "
        "run's checkpoints, or delete the run directory to start over"
    )


def _final_problem(status: dict[str, Any]) -> str:
    """What is wrong with a status's final metrics, which reports and the CLI format as
    numbers; "" when nothing. A completed run has them; a metric may be null (NaN)."""
    final = status.get("final")
    if final is None:
        return "a completed run without final metrics" if status["status"] == "completed" else ""
    if not isinstance(final, dict):
        return f'"final" is a {type(final).__name__}, not a table of metrics'
    for key, value in final.items():
        counts = key in ("epochs_run", "params")
        numeric = counts or key.startswith(("train_", "val_", "test_")) or key == "best_value"
        if counts and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f'final "{key}" is {value!r}, not a count'
        if numeric and value is not None and not _is_number(value):
            return f'final "{key}" is {value!r}, not a number'
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def write_status(run_dir: Path, status: RunStatus, **fields: Any) -> None:
    atomic_write_json(run_dir / STATUS, {"status": status, **fields})


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write_bytes(run_dir / METRICS, lines.encode())


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl ([] before the first epoch). A damaged file (a
    line cut short by a full disk, say) is a DflError naming it."""
    path = Path(run_dir) / METRICS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise DflError(f"cannot read {path}: {e}") from None
    history = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record = e
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise DamagedHistory(path, number)
        history.append(record)
    return history


class DamagedHistory(DflError):
    """A metrics.jsonl line that is not an epoch's record (cut short by a full disk, say)."""

    def __init__(self, path: Path, line: int) -> None:
        super().__init__(
            f"{path} is damaged at line {line} (not one epoch's JSON record); "
            f"{resume_command(path.parent)} rewrites it from the run's checkpoint"
        )
        self.path, self.line = path, line


def finished_history(run_dir: Path) -> list[dict[str, Any]]:
    """A finished run's metrics.jsonl, or, when that file is damaged, the history its last
    checkpoint holds (written back to the file); an error naming the file if there is none."""
    try:
        return read_history(run_dir)
    except DamagedHistory as damaged:
        try:
            found = checkpoint.load_latest(run_dir / CHECKPOINTS)
        except DflError:
            found = None
        if found is None:
            raise DflError(
                f"{damaged.path} is damaged at line {damaged.line} and the run has no intact "
                f"checkpoint to restore it from; train the run again with another {option('out')}"
            ) from None
        history = found[1]["history"]
        write_metrics(run_dir, history)
        return history


# ---------------------------------------------------------------------------------------------
# config.toml


def load_saved_config(run_dir: Path) -> TrainConfig | None:
    """The run's own config (None when it has none); the keys a resume may change are left
    at their defaults, so a saved value this machine refuses (more threads than its cores)
    does not block a resume."""
    path = run_dir / CONFIG
    if not path.exists():
        return None
    tree = {k: v for k, v in read_toml(path).items() if k not in RESUMABLE_DIFFERENCES}
    if "model" not in tree:  # TrainConfig's default model is not what this run trained
        raise ConfigError(f"{path} names no model (every run's config.toml does: an edit?)")
    try:
        return build_config(overrides=tree)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# Config keys whose value is a path: `runs/lab/x` and `/home/me/runs/lab/x` run the same
# (a reproduction started before `reproduce` made --out absolute resumes under the new code).
PATH_KEYS = (("", "init_from"), ("data", "data_dir"), ("data", "dataset"))


def rebase_config(run_dir: Path, was: str, now: str) -> bool:
    """Rename the paths in the run's config.toml that lie under the directory `was` to lie
    under `now` (a reproduction directory that moved: a fine-tune's init_from names its
    pretraining run, which moved with it). Returns whether the file changed."""
    path = run_dir / CONFIG
    tree = read_toml(path)
    changed = False
    for section, key in PATH_KEYS:
        holder = tree.get(section, {}) if section else tree
        value = holder.get(key)
        if isinstance(value, str) and (value == was or value.startswith(was + "/")):
            holder[key] = now + value[len(was) :]
            changed = True
    if changed:
        atomic_write_bytes(path, dict_to_toml(tree).encode())
    return changed


def read_final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """A finished run's weights file, checked: a cut or garbled file, or one whose sha256 is
    not the one the run recorded when it wrote it (a flipped byte parses and fits), is an
    UnloadableRun naming it. Runs from before the sha256 was recorded are not checked."""
    path = run_dir / WEIGHTS
    if not path.exists():
        raise UnloadableRun(
            f"cannot load run {run_dir}: it has no {WEIGHTS}; delete {run_dir} and train it again"
        )
    try:
        weights = load_file(str(path))
    except Exception as e:  # SafetensorError (a cut or garbled file), OSError
        raise UnloadableRun(
            f"cannot load run {run_dir}: its {WEIGHTS} is damaged ({one_line(e)}); delete "
            f"{run_dir} and train it again"
        ) from None
    recorded = None
    with contextlib.suppress(DflError):  # a damaged status.json: nothing to check against
        recorded = ((read_status(run_dir) or {}).get("final") or {}).get("weights_sha256")
    if checkpoint.weights_damaged(path, recorded):
        raise UnloadableRun(
            f"cannot load run {run_dir}: its {WEIGHTS} is not the file the run wrote (its "
            f"sha256 differs from the one in status.json); delete {run_dir} and train it again"
        )
    return weights


def _same_place(a: object, b: object) -> bool:
    if not isinstance(a, str) or not isinstance(b, str) or a == b:
        return False  # nothing to align
    return Path(a).resolve() == Path(b).resolve()


# What a run directory holds, and what its run may leave there before status.json exists.
RUN_FILES = {CONFIG, METRICS, STATUS, CHECKPOINTS, WEIGHTS, ".lock"}


def foreign_files(directory: Path, own: Iterable[str]) -> list[str]:
    """The sorted names in `directory` other than `own` and what a kill left half-written of
    them (the temporary file of an atomic write that never got renamed)."""
    own = set(own)
    names = (p.name for p in directory.iterdir())
    return sorted(n for n in names if n not in own and not is_interrupted_write(n, own))


def refuse_foreign_files(run_dir: Path) -> None:
    """A directory that holds no run must be empty: a run written into `.`, `/` or a folder of
    someone's files would mix its files with theirs (and a failed start would have to tell
    them apart to clean up). What a killed start left half-written is removed once the
    directory is taken: the caller holds its lock, so no other process is writing it."""
    foreign = foreign_files(run_dir, RUN_FILES)
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    seeds = seed_runs(run_dir)
    if foreign and len(seeds) == len(foreign):
        raise DflError(
            f"{run_dir} holds the runs of --seeds ({shown}), not one run: give --seeds "
            f"{','.join(map(str, seeds))} to train or resume them"
        )
    if foreign:
        raise DflError(
            f"{run_dir} is not empty ({shown}) and holds no dfl run; give {option('out')} a "
            "new or empty directory"
        )
    for path in run_dir.iterdir():
        if is_interrupted_write(path.name, RUN_FILES):
            path.unlink(missing_ok=True)


def seed_runs(directory: Path) -> list[int]:
    """The seeds whose runs `dfl train --seeds` made in `directory` (its seedN folders)."""
    found = (p.name[4:] for p in directory.glob("seed*/") if p.is_dir())
    return sorted(int(n) for n in found if n.isdigit())


def check_same_config(
    run_dir: Path, cfg: TrainConfig, same_precision: Callable[[str, str], bool]
) -> None:
    """A ConfigError naming the first key where `cfg` differs from the run's saved config,
    other than RESUMABLE_DIFFERENCES. `same_precision(saved, new)` says whether two precision
    settings compute the same ('auto' and what it resolves to: the trainer knows)."""
    saved = load_saved_config(run_dir)
    if saved is None:
        return
    # a model argument spelled at its default is the same run as one left out
    old = spelled_out(saved).model_dump(mode="json")
    new = spelled_out(cfg).model_dump(mode="json")
    if same_precision(saved.precision, cfg.precision):
        old["precision"] = new["precision"]
    for section, key in PATH_KEYS:  # a path spelled another way names the same file
        was, now = (old[section], new[section]) if section else (old, new)
        if _same_place(was.get(key), now.get(key)):
            was[key] = now[key]
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE_DIFFERENCES and old.get(key) != new.get(key):
            raise ConfigError(
                f"run directory {run_dir} was made with a different config: '{key}' was "
                f"{old.get(key)!r}, now {new.get(key)!r} (use another {option('out')}, or the "
                "same config)"
            )
