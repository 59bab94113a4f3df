"""The ways of running the whole lab: what each buys, and what it cost when it was measured.

The costs are data, not prose: profile_costs.json beside this file, which `make bench`
(benchmarks/run.py) rewrites for the profile it reproduces, so --help, the report and the
progress lines quote one measurement and never a stale literal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

COSTS = Path(__file__).with_name("profile_costs.json")


@dataclass(frozen=True)
class Profile:
    """One way of running the whole lab: what it buys and how many runs stand behind each
    number."""

    name: str
    brief: str  # one line for --help's list
    buys: str  # the whole story, for the report and the docs
    seeds: int  # corrected counterparts: mean ± std over this many seeds
    faithful_seeds: int | None = None  # runs per lab-protocol number (None: `seeds`)

    @property
    def measured(self) -> dict[str, Any]:
        return measured_costs().get(self.name, {})

    @property
    def cost(self) -> str:
        """What it cost when measured, in words: "25.7 min on 2 AMD EPYC cores (how), ..."."""
        return cost_text(self.measured)

    @property
    def cost_brief(self) -> str:
        """The same in a few words, for --help: "25.7 min on 2 AMD EPYC cores"."""
        return cost_text(self.measured, brief=True)

    @property
    def estimate_s(self) -> dict[str, float]:
        """Measured seconds per experiment: the progress lines' time left."""
        return self.measured.get("experiments_s", {})


@cache
def measured_costs() -> dict[str, Any]:
    return json.loads(COSTS.read_text())


def cost_text(m: dict[str, Any], brief: bool = False) -> str:
    if "wall_s" not in m:
        return m.get("note", "not measured")
    minutes = f"{m['wall_s'] / 60:.1f} min"
    if m.get("after"):
        minutes = (
            f"{m['after']} + {minutes}"
            if brief
            else f"the {m['after']} profile's time and {minutes} more"
        )
    if brief:
        return f"{minutes} on {m['machine']}"
    peak = f"; largest process {m['peak_mb']:,.0f} MB" if m.get("peak_mb") else ""
    return f"{minutes} on {m['machine']} ({m['how']}{peak})"


PROFILES = {
    p.name: p
    for p in (
        Profile(
            "smoke",
            "tiny data, an epoch or two: checks that it all runs, not numbers",
            "tiny data and an epoch or two: for tests, not numbers",
            1,
        ),
        Profile(
            "preview",
            "the lab's experiments, epochs cut short: 7 of the 38 lab numbers",
            "a first look: the lab's experiments with epochs cut short (no CNN search, modern "
            "ViT or ablations); sets 7 of the 38 lab numbers beside ours, the rest not comparable",
            2,
        ),
        Profile(
            "lab",
            "the lab's protocol; CNNs one change at a time; ViT size study: 32/38",
            "every experiment at exactly the lab's protocol (one run per number, as the lab) but "
            "six of the seven ViT configurations, which a short size study ranks instead; the "
            "CNN question one change at a time; corrected counterparts over 2 seeds: sets 32 "
            "of the 38 lab numbers beside ours",
            2,
            faithful_seeds=1,
        ),
        Profile(
            "every",
            "lab, and the six other ViTs at the lab's protocol: all 38 numbers",
            "all 38 lab numbers at the lab's protocol (the lab profile with the other six ViT "
            "configurations, 20 epochs each on all 60,000 images, in place of its size study); "
            "resumes across invocations",
            2,
            faithful_seeds=1,
        ),
        Profile(
            "complete",
            "every, and the corrected and beyond-the-lab stages at full length",
            "every lab number at the lab's protocol, and the corrected and beyond-the-lab "
            "stages at their full recipes over 2 seeds: the default on a CUDA device",
            2,
            faithful_seeds=1,
        ),
        Profile(
            "full",
            "complete, with 3 seeds behind every mean",
            "the lab's settings for every run, 3 seeds behind every mean, and the beyond-the-lab "
            "stages at full length",
            3,
        ),
    )
}
ALIASES = {"quick": "preview"}  # the preview profile's old name

# Said above a smoke run's numbers wherever they are shown (its report, a notebook's table):
# chance-level numbers must not pass for results.
SMOKE_NOTE = (
    "Profile smoke: tiny data and an epoch or two, to check that everything runs. These numbers "
    "are not results (a classifier may sit at chance, about 0.1), and neither are the "
    "conclusions drawn from them; the profile lab gives the lab's protocol and numbers that "
    "mean something."
)


def canonical(profile: str) -> str:
    """A profile's name, given its name or its old name (`quick` is `preview`)."""
    return ALIASES.get(profile, profile)
