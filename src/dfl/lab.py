"""The lab's questions from Python: `dfl.lab.run("ae", profile="lab")` runs one experiment as
`dfl lab ae` does (into the same reproduction directory, resumable, the report rebuilt) and
returns what the experiment layer produced: its typed result, its numbers beside the lab's,
and its figures as matplotlib figures that a notebook shows inline.

    result = dfl.lab.run("cnn", profile="smoke")
    result                     # in Jupyter: the lab's numbers beside ours, as a table
    result.figures[0]          # a figure, inline
    result.result.points       # the experiment's own typed fields (here: the CNN search)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfl.arguments import checked
from dfl.data import load_dataset
from dfl.errors import ConfigError
from dfl.experiments import EXPERIMENTS
from dfl.experiments.context import Canvas
from dfl.experiments.document import Figure, Section
from dfl.experiments.experiment import Result, load_record
from dfl.experiments.profiles import PROFILES, SMOKE_NOTE, canonical
from dfl.experiments.registry import REGISTRY
from dfl.report.build import lab_table
from dfl.report.render import md_table
from dfl.reproduce import default_profile, reproduce

__all__ = ["EXPERIMENTS", "PROFILES", "LabRun", "run"]


@dataclass
class LabRun:
    """One lab question as it ran: `result` is the experiment's typed result, `comparisons`
    every lab number of this question with ours, the verdict and the reason (results.json's
    entries), `figures` the section's figures, `section` the report's text for it."""

    name: str
    profile: str
    out: Path  # the reproduction directory; report.html there covers every question run in it
    result: Result
    comparisons: list[dict[str, Any]]
    figures: list[Figure]
    section: Section

    def __repr__(self) -> str:  # one line; the table is _repr_markdown_'s, the rest attributes
        return (
            f"LabRun({self.name!r}, profile={self.profile!r}, out={str(self.out)!r}, "
            f"lab_numbers={len(self.comparisons)}, figures={len(self.figures)})"
        )

    def _repr_markdown_(self) -> str:  # Jupyter: the comparison table
        title = f"**{self.section.title}** (profile {self.profile}, {self.out})\n\n"
        if self.profile == "smoke":  # chance-level numbers must not pass for results
            title += f"*{SMOKE_NOTE}*\n\n"
        return title + md_table(lab_table(self.comparisons))


@checked("dfl.lab.run")
def run(
    name: str,
    *,
    profile: str | None = None,
    out: str | Path | None = None,
    dataset: str = "mnist",
    data_dir: str | Path | None = None,
    device: str = "auto",
    seeds: int | None = None,
    precision: str = "auto",
    jobs: int = 1,
) -> LabRun:
    """Run (or resume, or reuse) the lab question `name` (one of EXPERIMENTS) in `profile`
    (one of PROFILES: smoke, preview, lab, every, complete, full; by default, as `dfl lab`,
    complete on a CUDA device and lab elsewhere) into `out` (default `runs/PROFILE`, as
    `dfl lab`), and return it. Raises `ConfigError` for an unknown name or profile and
    `ExperimentsFailed` when the experiment failed (its reason in the message)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown lab question '{name}' (choose from {', '.join(EXPERIMENTS)})")
    profile = profile if profile is not None else default_profile(device)
    out = Path(out) if out is not None else Path("runs") / canonical(profile)
    reproduce(
        out, profile, dataset, data_dir, device, seeds, [name], precision, jobs, said_as="dfl.lab"
    )
    experiment = REGISTRY[name]
    record = load_record(out, name)
    assert record is not None and record.status == "completed"  # reproduce raised otherwise
    result = record.typed(experiment)
    canvas = Canvas(out, lambda: load_dataset(dataset, data_dir))
    figures = experiment.figures(result, canvas)
    saved = json.loads((out / "results.json").read_text())
    comparisons = [e for e in saved["lab"] if e["experiment"] == name]
    return LabRun(
        name,
        canonical(profile),
        out,
        result,
        comparisons,
        figures,
        experiment.section(result, figures),
    )
