"""The docs stay true to the code: the README's measured times are the ones --help quotes, its
links resolve, and nothing refers to files outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from dfl.experiments.profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_the_readme_quotes_each_profiles_measured_time_from_profile_costs():
    rows = {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^\| `(\w+)`[^|]*\|.*\| ([^|]+) \|$", README.read_text(), re.M)
    }
    assert set(rows) == set(PROFILES)
    for name, shown in rows.items():
        assert shown == PROFILES[name].cost_brief, name


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / p for p in listed if p.endswith((".md", ".py", ".toml", ".ipynb", "Makefile"))]


def test_nothing_refers_to_files_outside_the_repository():
    needle = "../" + "shared"  # split, so this file does not find itself
    offenders = [str(p) for p in _tracked_text_files() if needle in p.read_text()]
    assert offenders == []


def test_relative_links_in_the_docs_resolve():
    docs = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.name}: {target}")
    assert broken == []
