"""Assemble the report from a reproduction's saved results only (never trains):
report.md, report.html (self-contained) and results.json (every number with provenance)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from dfl.atomic import atomic_write_bytes, atomic_write_json
from dfl.data import load_dataset
from dfl.errors import DflError
from dfl.experiments import EXPERIMENTS, TITLES
from dfl.experiments.base import PROFILES, Canvas, load_result
from dfl.experiments.lab_numbers import LAB
from dfl.report.document import Document, Section, Table
from dfl.report.render import md_table, to_html, to_markdown


def _experiment_module(name: str) -> Any | None:
    try:
        return importlib.import_module(f"dfl.experiments.{name}")
    except ModuleNotFoundError:
        return None


def _why_missing(name: str, result: dict[str, Any] | None, manifest: dict[str, Any]) -> str:
    if result is not None and result.get("status") == "failed":
        return f"the experiment failed: {result.get('reason')}"
    if _experiment_module(name) is None:
        return "not implemented yet in this version of dfl"
    if name not in manifest.get("selected", EXPERIMENTS):
        return "not selected in this reproduction (--only)"
    return "not run yet (rerun the reproduce command to resume)"


def _exact(value: object) -> object:
    """The lab's numbers as the write-up printed them, not rounded to our display digits."""
    return f"{value:.6g}" if isinstance(value, float) else value


# Lab numbers that do not depend on the data (the convolution example, the attention bug).
DATASET_FREE = {"output", "size", "identical_rows"}


VERDICTS = ("reproduced", "differs", "not comparable", "missing")


def _kind(verdict: str) -> str:
    """Which of VERDICTS an experiment's verdict text is ("differs (0.73x)" -> differs)."""
    if verdict.startswith(("reproduced", "bug reproduced")):
        return "reproduced"
    return next((k for k in VERDICTS[1:] if verdict.startswith(k)), "not comparable")


def _left_out(profile: str) -> str:
    every = PROFILES["every"]
    return (
        f"not run in profile {profile}; `dfl reproduce --profile every` runs it "
        f"({every.cost}, on 2 CPU cores)"
    )


def lab_entry(
    name: str, key: str, row: dict | None, missing: str, manifest: dict[str, Any]
) -> dict[str, Any]:
    """One lab number as results.json keeps it: the lab's value and ours, the verdict (one of
    VERDICTS) and the reason."""
    if row is None:
        verdict, detail, reason = "missing", "missing", missing
    else:
        detail, reason = row.get("verdict", ""), row.get("why", "")
        verdict = _kind(detail)
        if manifest.get("dataset", "mnist") != "mnist" and key not in DATASET_FREE:
            verdict = "not comparable"
            detail = f"not comparable: the lab measured MNIST, this is {manifest['dataset']}"
        if verdict == "not comparable":
            reason = detail.partition(": ")[2] or reason
    return {
        "experiment": name,
        "key": key,
        "faithful": None if row is None else row.get("faithful"),
        "corrected": None if row is None else row.get("corrected"),
        "verdict": verdict,
        "detail": detail,
        "reason": reason,
    }


def lab_entries(results: dict[str, dict | None], manifest: dict[str, Any]) -> list[dict]:
    """Every number the lab states (lab_numbers.LAB), each with ours and its verdict."""
    entries = []
    for name, numbers in LAB.items():
        result = results.get(name) or {}
        compare = result.get("compare", {}) if result.get("status") == "completed" else {}
        missing = (
            _left_out(manifest.get("profile", "?"))
            if compare
            else _why_missing(name, results.get(name), manifest)
        )
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


def _section_with_figures(module: Any, result: dict[str, Any], canvas: Canvas) -> Section:
    """Redraw the experiment's figures from its saved result, then write its section. A figure
    that cannot be drawn (its data or weights gone) is reported, not silently dropped."""
    problem = None
    try:
        drawn = module.draw(result, canvas) if hasattr(module, "draw") else []
    except DflError as e:  # the data or a run's weights are gone (a full disk is not caught)
        drawn, problem = [], str(e)
    except KeyError as e:  # a result saved by an older dfl that did not keep this yet
        drawn, problem = [], f"the saved result has no {e}; rerun the experiment"
    section = module.section({**result, "figures": drawn})
    if problem:
        section.paragraphs.append(f"Figures missing: they could not be redrawn ({problem}).")
    return section


def _headline(entries: list[dict], manifest: dict[str, Any], results: dict, out: Path) -> str:
    """The report's first paragraph: how many lab numbers this run set beside ours, and the
    command that sets the rest."""
    n, total = counts(entries), len(entries)
    beside = n["reproduced"] + n["differs"]
    wall = sum(r.get("wall_s", 0.0) for r in results.values() if r)
    profile = manifest["profile"]
    text = (
        f"This run (profile **{profile}**, {wall / 60:.1f} min for its experiments) set "
        f"**{beside} of the lab's {total} numbers** beside ours: {n['reproduced']} reproduced, "
        f"{n['differs']} differ (each with its reason); {n['not comparable']} not comparable "
        f"(fewer epochs or images than the lab, or another dataset), {n['missing']} missing."
    )
    if beside == total:
        return text
    if profile == "lab":
        return text + (
            f" `dfl reproduce --profile every --out {out}` sets the rest, training only what "
            f"this run left out (the whole every profile: {PROFILES['every'].cost})."
        )
    if profile in ("every", "full"):
        return text + " Rerun the same command to resume (finished runs are kept)."
    return text + (
        f" `make reproduce` (profile lab: {PROFILES['lab'].cost}) sets them at the lab's "
        f"protocol except six ViT configurations; `dfl reproduce --profile every` sets all "
        f"{total} ({PROFILES['every'].cost})."
    )


def _environment(manifest: dict[str, Any], results: dict[str, dict | None]) -> Table:
    env = manifest.get("environment", {})
    rows = [[k, v] for k, v in env.items()]
    for name in EXPERIMENTS:
        r = results.get(name) or {}
        wall = f"{r['wall_s']:.1f} s" if "wall_s" in r else None
        # An experiment resumed (or run) elsewhere says where: a GPU's numbers beside a CPU's.
        ran = r.get("environment", env)
        if ran != env and "wall_s" in r:
            keys = ("device", "gpu", "torch", "jobs")
            where = ", ".join(f"{k} {ran[k]}" for k in keys if k in ran)
            wall += f" (last run on {where})"
        rows.append([f"wall time: {name}", wall])
    return Table(["what", "value"], rows)


def build_report(out: Path) -> Path:
    out = Path(out)
    manifest_path = out / "reproduce.json"
    if not manifest_path.exists():
        raise DflError(
            f"{out} holds no reproduction (no reproduce.json); run `dfl reproduce "
            f"--out {out}` first"
        )
    manifest = json.loads(manifest_path.read_text())
    results = {name: load_result(out, name) for name in EXPERIMENTS}

    canvas = Canvas(out, lambda: load_dataset(manifest.get("data", manifest["dataset"])))
    sections, numbers = [], {}
    for name in EXPERIMENTS:
        module, result = _experiment_module(name), results[name]
        if module is not None and result is not None and result.get("status") == "completed":
            sections.append(_section_with_figures(module, result, canvas))
            numbers[name] = result.get("numbers", {})
        else:
            title = getattr(module, "TITLE", TITLES[name])
            sections.append(
                Section(
                    title,
                    getattr(module, "QUESTION", ""),
                    missing=_why_missing(name, result, manifest),
                )
            )

    entries = lab_entries(results, manifest)
    table = lab_table(entries)
    done = sum(1 for r in results.values() if r and r.get("status") == "completed")
    summary = [
        _headline(entries, manifest, results, out),
        f"Profile **{manifest['profile']}** on **{manifest['dataset']}** "
        f"({manifest['environment'].get('device', '?')}); {done} of {len(EXPERIMENTS)} "
        f"experiments have results. Every number below comes from a run saved under {out}; "
        "`dfl report` rebuilds this page from those saved results without training.",
    ]
    failed = [n for n, r in results.items() if r and r.get("status") == "failed"]
    if failed:  # said at the top, not only in the failed experiments' own sections
        summary.append(
            "**Failed:** "
            + "; ".join(f"{n} ({results[n].get('reason')})" for n in failed)
            + (
                ". Its section and lab numbers"
                if len(failed) == 1
                else ". Their sections and lab numbers"
            )
            + " are marked missing; rerun the reproduce command to retry (finished runs are kept)."
        )
    sections.insert(0, Section("The lab's numbers beside ours", tables=[table]))
    doc = Document(
        f"dfl lab reproduction — profile {manifest['profile']}",
        summary,
        sections,
        _environment(manifest, results),
    )

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
    README's table is this)."""
    saved = json.loads((Path(out) / "results.json").read_text())
    return md_table(lab_table(saved["lab"]))
