"""What a lab experiment is: one typed thing the reproduction, the report and the Python API
all go through.

An `Experiment` has its name, title and the lab's question, its settings per profile (a frozen
dataclass each), a `run` made of named stages that returns the experiment's typed `Result`, and
figures and a report section drawn from that result alone. The result is saved as
`<out>/<name>/result.json` inside a `Record` (how and where it ran), so `dfl report RUN_DIR`
redraws everything without training.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from dfl.errors import DflError
from dfl.experiments.comparison import Comparison
from dfl.experiments.context import Canvas, Context
from dfl.experiments.document import Figure, Section
from dfl.runtime.atomic import atomic_write_json
from dfl.training.run import Run


class Number(BaseModel):
    """A reported number with where it came from and how to get it again."""

    model_config = ConfigDict(extra="forbid")

    value: Any  # a float, or one per seed
    label: str
    experiment: str | None = None
    run_dir: str | None = None  # the run it was measured on (the first seed's)
    command: str | None = None  # the command that trains that run again
    seeds: int | None = None

    @classmethod
    def of(cls, value: Any, label: str, source: Run, experiment: str, **extra: Any) -> Number:
        cfg_path = source.run_dir / "config.toml"
        again = ["dfl", "train", "--config", str(cfg_path), "--out", f"{source.run_dir}-again"]
        return cls(
            value=value,
            label=label,
            experiment=experiment,
            run_dir=str(source.run_dir),
            command=shlex.join(again),  # quoted for a shell: --out may hold any character
            **extra,
        )


class Result(BaseModel):
    """What every experiment's result holds besides its own fields: its reported numbers and
    its comparisons with the lab, keyed as `lab_numbers.LAB` keys them."""

    model_config = ConfigDict(extra="forbid")

    numbers: dict[str, Number] = {}
    compare: dict[str, Comparison] = {}


S = TypeVar("S")  # an experiment's settings for one profile
R = TypeVar("R", bound=Result)


@dataclass(frozen=True)
class Experiment(Generic[S, R]):
    name: str
    title: str
    question: str  # the lab's question, quoted in the report
    result_type: type[R]
    run: Callable[[Context, S], R]
    section: Callable[[R, list[Figure]], Section]
    draw: Callable[[R, Canvas], list[Figure]] | None = None  # figures from the result alone
    profiles: Mapping[str, S] | None = None  # None: one way to run it, whatever the profile

    def settings(self, profile: str) -> S:
        return None if self.profiles is None else self.profiles[profile]  # type: ignore[return-value]

    def execute(self, ctx: Context) -> R:
        return self.run(ctx, self.settings(ctx.profile))

    def figures(self, result: R, canvas: Canvas) -> list[Figure]:
        return [] if self.draw is None else self.draw(result, canvas)


class Record(BaseModel):
    """`<out>/<name>/result.json`: how an experiment's run ended, and its result."""

    model_config = ConfigDict(extra="forbid")

    experiment: str
    profile: str
    status: Literal["completed", "failed"]
    reason: str = ""  # why it failed
    wall_s: float = 0.0  # every invocation's part, when it took several to finish
    environment: dict[str, Any] = {}
    result: dict[str, Any] | None = None  # the experiment's Result, as saved
    at: str = ""  # the reproduction's directory when saved: its paths are read relative to it

    def typed(self, experiment: Experiment) -> Result:
        return experiment.result_type.model_validate(self.result)


def record_path(out: Path, name: str) -> Path:
    return out / name / "result.json"


def save_record(out: Path, record: Record) -> None:
    path = record_path(out, record.experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = record.model_copy(update={"at": str(Path(out).absolute())})
    atomic_write_json(path, record.model_dump(mode="json"))


class OlderRecord(Exception):
    """A result.json written by an older dfl (another layout), or damaged: rerun the
    experiment. Its message says which, as the report's missing section does."""


def load_record(out: Path, name: str) -> Record | None:
    """The saved record, None when there is none; OlderRecord when it has another layout."""
    path = record_path(out, name)
    if not path.exists():
        return None
    try:
        record = Record.model_validate_json(path.read_bytes())
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):  # cut short, or edited
            raise OlderRecord(f"its {path.name} is damaged (not valid JSON)") from e
        raise OlderRecord("its result was saved by another version of dfl") from e
    here = str(Path(out).absolute())
    if record.at and record.at != here and record.result is not None:
        record.result = moved(record.result, record.at, here)
    return record


def moved(value: Any, was: str, now: str) -> Any:
    """`value` (JSON data) with every path under the directory `was` renamed to lie under
    `now`: a reproduction directory that was moved or copied still names its own runs (in
    figures, commands and init_from), not the old place's."""
    if isinstance(value, str):
        if value == was:
            return now
        return value.replace(was + "/", now + "/")  # also inside a command line
    if isinstance(value, list):
        return [moved(v, was, now) for v in value]
    if isinstance(value, dict):
        return {k: moved(v, was, now) for k, v in value.items()}
    return value


class Manifest(BaseModel):
    """reproduce.json: what a reproduction is (profile, data, environment) and its time on the
    clock. Read as a dict; this model only checks its shape."""

    model_config = ConfigDict(extra="allow")

    profile: str
    dataset: str
    selected: list[str] = []
    environment: dict[str, Any] = {}
    started: float = 0.0
    wall_s: float = 0.0
    data: str | None = None
    seeds: int | None = None  # behind each mean ± std


def read_manifest(out: Path) -> dict[str, Any] | None:
    """reproduce.json as a dict, None when there is none; a damaged or hand-edited one (not
    JSON, a list, a wall time that is text) is a DflError naming it, not a traceback later."""
    path = out / "reproduce.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        what = f"{'.'.join(map(str, first['loc'])) or 'the whole file'}: {first['msg']}"
    except (ValueError, UnicodeDecodeError) as e:  # not JSON, not UTF-8
        what = str(e).strip().splitlines()[0]
    else:
        return raw
    raise DflError(
        f"{path} is damaged ({what}); delete it and rerun the same dfl reproduce command "
        "(finished runs and results are kept; only its time on the clock is lost)"
    )
