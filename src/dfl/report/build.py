"""Assemble the report from a reproduction's saved results only (never trains):
report.md, report.html (self-contained) and results.json (every number with provenance)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dfl.data import load_dataset
from dfl.errors import DflError
from dfl.experiments import EXPERIMENTS
from dfl.experiments.comparison import Comparison, Verdict
from dfl.experiments.context import Canvas
from dfl.experiments.document import Document, Section, Table
from dfl.experiments.experiment import (
    Experiment,
    OlderRecord,
    Record,
    Result,
    load_record,
    read_manifest,
)
from dfl.experiments.lab_numbers import LAB
from dfl.experiments.profiles import PROFILES, SMOKE_NOTE
from dfl.experiments.registry import REGISTRY
from dfl.report.render import md_table, to_html, to_markdown
from dfl.runtime.atomic import atomic_write_bytes, atomic_write_json

RERUN = "rerun the reproduce command to resume (finished runs are kept)"


@dataclass
class Saved:
    """What a reproduction's directory holds for one experiment: its record and typed result
    (None when it has not completed), or why there is nothing to show."""

    experiment: Experiment
    record: Record | None = None
    result: Result | None = None
    problem: str = ""  # a record this dfl cannot read


def _saved(out: Path, name: str) -> Saved:
    experiment = REGISTRY[name]
    try:
        record = load_record(out, name)
        if record is None or record.status != "completed":
            return Saved(experiment, record)
        return Saved(experiment, record, record.typed(experiment))
    except OlderRecord as e:
        return Saved(experiment, problem=str(e))
    except ValidationError:  # a record that reads, but holds another layout's result
        return Saved(experiment, problem="its result was saved by another version of dfl")


def _why_missing(saved: Saved, manifest: dict[str, Any]) -> str:
    if saved.problem:
        return f"{saved.problem}; {RERUN}"
    if saved.record is not None and saved.record.status == "failed":
        return f"the experiment failed: {saved.record.reason}"
    if saved.experiment.name not in manifest.get("selected", EXPERIMENTS):
        return "not selected in this reproduction (--only)"
    return "not run yet (rerun the reproduce command to resume)"


def _exact(value: object) -> object:
    """The lab's numbers as the write-up printed them, not rounded to our display digits."""
    return f"{value:.6g}" if isinstance(value, float) else value


# Lab numbers that do not depend on the data (the convolution example, the attention bug).
DATASET_FREE = {"output", "size", "identical_rows"}


VERDICTS = tuple(v.value for v in Verdict)


# A lab number this profile does not train: said once, under the table (_left_out)
LEFT_OUT = "not run in this profile (see above the table)"


def _left_out(profile: str, n: int) -> str:
    lab, every = PROFILES["lab"], PROFILES["every"]
    return (
        f"{n} of the lab's numbers are not run in profile {profile}. The lab profile "
        f"(`make reproduce`) sets all but six ViT numbers in {lab.cost}; "
        f"`dfl reproduce --profile every` sets all of them in {every.cost}."
    )


def lab_entry(
    name: str, key: str, row: Comparison | None, missing: str, manifest: dict[str, Any]
) -> dict[str, Any]:
    """One lab number as results.json keeps it: the lab's value and ours, the verdict (one of
    VERDICTS) and the reason."""
    if row is None:
        verdict, detail, reason = Verdict.MISSING, "missing", missing
    else:
        verdict, detail, reason = row.verdict, row.detail, row.reason
        if manifest.get("dataset", "mnist") != "mnist" and key not in DATASET_FREE:
            why = f"the lab measured MNIST, this is {manifest['dataset']}"
            verdict, detail, reason = Verdict.NOT_COMPARABLE, f"not comparable: {why}", why
    return {
        "experiment": name,
        "key": key,
        "faithful": None if row is None else row.faithful,
        "corrected": None if row is None else row.corrected,
        "verdict": verdict.value,
        "detail": detail,
        "reason": reason,
    }


def lab_entries(saved: dict[str, Saved], manifest: dict[str, Any]) -> list[dict]:
    """Every number the lab states (lab_numbers.LAB), each with ours and its verdict."""
    entries = []
    for name, numbers in LAB.items():
        result = saved[name].result
        compare = result.compare if result is not None else {}
        missing = LEFT_OUT if result is not None else _why_missing(saved[name], manifest)
        for key, what, lab_value in numbers:
            entry = lab_entry(name, key, compare.get(key), missing, manifest)
            entries.append({"what": what, "lab": lab_value, **entry})
    return entries


def _shown(entry: dict[str, Any]) -> str:
    """The verdict column: the verdict in words and, for a number set beside the lab's, why."""
    if entry["verdict"] == "missing":
        return f"missing: {entry['reason']}"
    if entry["reason"] and entry["verdict"] in ("reproduced", "differs"):
        return f"{entry['detail']} — {entry['reason']}"
    return entry["detail"]


def lab_table(entries: list[dict[str, Any]]) -> Table:
    """The comparison table, from results.json's entries (report and README alike)."""
    rows = [
        [
            e["what"],
            _exact(e["lab"]),
            e["faithful"],
            # No corrected counterpart (a grid point, a fixed fact) reads n/a, not missing.
            "n/a" if e["corrected"] is None and e["verdict"] != "missing" else e["corrected"],
            _shown(e),
        ]
        for e in entries
    ]
    return Table(
        ["lab number", "lab", "ours, faithful", "ours, corrected", "verdict"],
        rows,
        "Every number the write-up states, beside ours",
    )


def counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(e["verdict"] == k for e in entries) for k in VERDICTS}


def _section_with_figures(saved: Saved, canvas: Canvas) -> Section:
    """Redraw the experiment's figures from its saved result, then write its section. A figure
    that cannot be drawn (its data or weights gone) is reported, not silently dropped."""
    experiment, result = saved.experiment, saved.result
    problem = None
    try:
        drawn = experiment.figures(result, canvas)
    except DflError as e:  # the data or a run's weights are gone (a full disk is not caught)
        drawn, problem = [], str(e)
    section = experiment.section(result, drawn)
    if problem:
        section.paragraphs.append(f"Figures missing: they could not be redrawn ({problem}).")
    return section


def _headline(
    entries: list[dict], manifest: dict[str, Any], saved: dict[str, Saved], out: Path
) -> str:
    """The report's first paragraph: how many lab numbers this run set beside ours, and the
    command that sets the rest."""
    n, total = counts(entries), len(entries)
    beside = n["reproduced"] + n["differs"]
    # On the clock; a reproduction from before experiments ran side by side: theirs, summed
    wall = manifest.get("wall_s") or sum(s.record.wall_s for s in saved.values() if s.record)
    profile = manifest["profile"]
    env = manifest.get("environment", {})
    where = env.get("gpu") or env.get("cpu") or env.get("device", "an unrecorded device")
    text = (
        f"This run (profile **{profile}** on {where}, {wall / 60:.1f} min on the clock for its "
        f"experiments) set "
        f"**{beside} of the lab's {total} numbers** beside ours: {n['reproduced']} reproduced, "
        f"{n['differs']} differ{'s' * (n['differs'] == 1)} (each with its reason); "
        f"{n['not comparable']} not comparable "
        f"(fewer epochs or images than the lab, or another dataset), {n['missing']} missing."
    )
    if profile in ("complete", "full"):
        text += " Its corrected and beyond-the-lab stages ran at their full recipes."
    if beside == total:
        return text
    if profile == "lab":
        return text + (
            f" `dfl reproduce --profile every --out {shlex.quote(str(out))}` sets the rest, "
            "training only what this run left out (the whole every profile took "
            f"{PROFILES['every'].cost})."
        )
    if profile in ("every", "complete", "full"):
        return text + " Rerun the same command to resume (finished runs are kept)."
    return text + (
        f" `make reproduce` (profile lab) sets them at the lab's protocol except six ViT "
        f"configurations in {PROFILES['lab'].cost}; `dfl reproduce --profile every` sets all "
        f"{total} in {PROFILES['every'].cost}."
    )


def _environment(manifest: dict[str, Any], saved: dict[str, Saved]) -> Table:
    env = manifest.get("environment", {})
    rows = [[k, v] for k, v in env.items()]
    for name in EXPERIMENTS:
        record = saved[name].record
        wall = None if record is None else f"{record.wall_s:.1f} s"
        # An experiment resumed (or run) elsewhere says where: a GPU's numbers beside a CPU's.
        if record is not None and record.environment != env:
            keys = ("device", "gpu", "torch", "jobs")
            ran = record.environment
            wall += f" (last run on {', '.join(f'{k} {ran[k]}' for k in keys if k in ran)})"
        rows.append([f"wall time: {name}", wall])
    return Table(["what", "value"], rows)


def _summary(entries: list[dict], manifest: dict, saved: dict[str, Saved], out: Path) -> list[str]:
    done = sum(1 for s in saved.values() if s.result is not None)
    summary = [f"**{SMOKE_NOTE}**"] if manifest["profile"] == "smoke" else []
    summary += [
        _headline(entries, manifest, saved, out),
        f"Profile **{manifest['profile']}** on **{manifest['dataset']}** "
        f"({manifest['environment'].get('device', '?')}); {done} of {len(EXPERIMENTS)} "
        f"experiments have results. Every number below comes from a run saved under "
        f"`{shlex.quote(str(out))}`; "
        "`dfl report` rebuilds this page from those saved results without training.",
    ]
    failed = {
        n: s.record.reason for n, s in saved.items() if s.record and s.record.status == "failed"
    }
    if failed:  # said at the top, not only in the failed experiments' own sections
        summary.append(
            "**Failed:** "
            + "; ".join(f"{n} ({why})" for n, why in failed.items())
            + (
                ". Its section and lab numbers"
                if len(failed) == 1
                else ". Their sections and lab numbers"
            )
            + " are marked missing; rerun the reproduce command to retry (finished runs are kept)."
        )
    return summary


def _reproductions_near(out: Path) -> str:
    """ " (reproductions there: runs/smoke, runs/lab)": those beside `out` or beside its
    folder (`runs/train/mlp-...` is two levels below `runs/lab`), or "" when there are none."""
    found = sorted(
        {p.parent for up in (out.parent, out.parent.parent) for p in up.glob("*/reproduce.json")}
    )[:5]
    return f" (reproductions there: {', '.join(map(str, found))})" if found else ""


def build_report(out: Path) -> Path:
    out = Path(out)
    manifest_path = out / "reproduce.json"
    if not out.is_dir():
        raise DflError(f"{out} is not a directory: name the --out of a `dfl reproduce`"
                       + _reproductions_near(out))  # fmt: skip
    if not manifest_path.exists():
        if (out / "config.toml").is_file():
            raise DflError(
                f"{out} is a training run (dfl train), which has no report: `dfl report` "
                "rebuilds the report of a `dfl reproduce` directory" + _reproductions_near(out)
            )
        raise DflError(
            f"{out} holds no reproduction (no reproduce.json); run `dfl reproduce "
            f"--out {out}` first" + _reproductions_near(out)
        )
    manifest = read_manifest(out)
    saved = {name: _saved(out, name) for name in EXPERIMENTS}

    canvas = Canvas(out, lambda: load_dataset(manifest.get("data", manifest["dataset"])))
    sections = [
        _section_with_figures(s, canvas)
        if s.result is not None
        else Section(s.experiment.title, s.experiment.question, missing=_why_missing(s, manifest))
        for s in saved.values()
    ]
    entries = lab_entries(saved, manifest)
    # The answers first; the audit of every lab number after them
    left_out = [e for e in entries if e["verdict"] == "missing" and e["reason"] == LEFT_OUT]
    note = [_left_out(manifest.get("profile", "?"), len(left_out))] if left_out else []
    sections.append(
        Section("The lab's numbers beside ours", paragraphs=note, tables=[lab_table(entries)])
    )
    doc = Document(
        f"dfl lab reproduction — profile {manifest['profile']}",
        _summary(entries, manifest, saved, out),
        sections,
        _environment(manifest, saved),
    )
    numbers = {
        name: {k: n.model_dump(mode="json", exclude_none=True) for k, n in s.result.numbers.items()}
        for name, s in saved.items()
        if s.result is not None
    }
    atomic_write_bytes(out / "report.md", to_markdown(doc).encode())
    atomic_write_bytes(out / "report.html", to_html(doc, out).encode())
    atomic_write_json(
        out / "results.json",
        {
            "profile": manifest["profile"],
            "dataset": manifest["dataset"],
            "lab": entries,  # every number the lab states: its value, ours, verdict, reason
            "counts": counts(entries),
            "numbers": numbers,
        },
    )
    return out / "report.html"


def lab_table_markdown(out: Path) -> str:
    """The comparison table as Markdown, from a reproduction's results.json alone (the
    table in docs/RESULTS.md is this)."""
    path = Path(out) / "results.json"
    if not path.exists() and not (Path(out) / "reproduce.json").exists():  # nor its source
        raise DflError(
            f"{out} holds no reproduction (no reproduce.json): name a `dfl reproduce` --out"
        )
    try:  # hand-edited or cut short: any shape at all
        return md_table(lab_table(json.loads(path.read_text())["lab"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise DflError(
            f"{path} is missing or damaged; `dfl report {out}` writes it again from the "
            "experiments' results"
        ) from None
