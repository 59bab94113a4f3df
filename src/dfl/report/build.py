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
from dfl.experiments.base import Canvas, load_result
from dfl.experiments.lab_numbers import LAB
from dfl.report.document import Document, Section, Table
from dfl.report.render import to_html, to_markdown


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


def lab_table(results: dict[str, dict | None], manifest: dict[str, Any]) -> Table:
    rows = []
    for name, entries in LAB.items():
        result = results.get(name)
        compare = (
            (result or {}).get("compare", {}) if (result or {}).get("status") == "completed" else {}
        )
        for key, what, lab_value in entries:
            row = compare.get(key)
            if row is None:
                reason = _why_missing(name, result, manifest) if not compare else "not measured"
                rows.append([what, _exact(lab_value), None, None, f"missing: {reason}"])
            else:
                verdict = row.get("verdict", "")
                if manifest.get("dataset", "mnist") != "mnist" and key not in DATASET_FREE:
                    verdict = (
                        f"not comparable: the lab measured MNIST, this is {manifest['dataset']}"
                    )
                if row.get("why") and not verdict.startswith("not comparable"):
                    verdict += f" — {row['why']}"
                # No corrected counterpart (a grid point, a fixed fact) reads n/a, not missing.
                corrected = row.get("corrected")
                rows.append(
                    [
                        what,
                        _exact(lab_value),
                        row.get("faithful"),
                        "n/a" if corrected is None else corrected,
                        verdict,
                    ]
                )
    return Table(
        ["lab number", "lab", "ours, faithful", "ours, corrected", "verdict"],
        rows,
        "Every number the write-up states, beside ours",
    )


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


def _verdict_summary(table: Table) -> str:
    """One line a reader can take away: how many of the lab's numbers we reproduced."""
    kinds = {"reproduced": 0, "differs": 0, "not comparable": 0, "missing": 0}
    for row in table.rows:
        verdict = str(row[-1])
        for kind in kinds:
            if verdict.startswith(kind) or (kind == "reproduced" and verdict.startswith("bug")):
                kinds[kind] += 1
                break
    other = len(table.rows) - sum(kinds.values())
    return (
        f"Of the {len(table.rows)} numbers the lab states: {kinds['reproduced']} reproduced, "
        f"{kinds['differs']} differ (each with the reason), {kinds['not comparable']} not "
        f"comparable here (fewer epochs or images than the lab, or another dataset), "
        f"{kinds['missing']} missing"
        + (f", {other} other (numbers the notebook never printed)." if other else ".")
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

    table = lab_table(results, manifest)
    done = sum(1 for r in results.values() if r and r.get("status") == "completed")
    summary = [
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
    summary.append(_verdict_summary(table))
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
        {"profile": manifest["profile"], "dataset": manifest["dataset"], "numbers": numbers},
    )
    return out / "report.html"
