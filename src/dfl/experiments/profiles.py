"""The ways of running the whole lab: what each buys and what it cost when measured."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    """One way of running the whole lab: what it buys, what it cost when measured (2 CPU
    cores unless it says otherwise), and how many runs stand behind each number."""

    name: str
    buys: str  # what a user gets, for --help, the README and the report
    cost: str  # measured wall time and peak memory, or "not measured yet"
    seeds: int  # corrected counterparts: mean ± std over this many seeds
    faithful_seeds: int | None = None  # runs per lab-protocol number (None: `seeds`)
    # Measured seconds per experiment on 2 CPU cores: the progress lines' time left.
    estimate_s: dict[str, float] = field(default_factory=dict)


PROFILES = {
    p.name: p
    for p in (
        Profile("smoke", "tiny data and one epoch: for tests, not numbers", "seconds", 1),
        Profile(
            "preview",
            "a first look: every table and figure, epochs cut short; sets 8 of the 38 lab "
            "numbers beside ours, the rest not comparable",
            "not measured",
            2,
            # Measured two at once (the default), so each is longer than it would be alone
            estimate_s={"ae": 128, "sae": 214, "conv": 1, "cnn": 196, "attention": 1, "vit": 253},
        ),
        Profile(
            "lab",
            "every experiment at exactly the lab's protocol (one run per number, as the lab) but "
            "six of the seven ViT configurations, which a short size study ranks instead; the "
            "CNN question one change at a time; corrected counterparts over 2 seeds: sets 32 "
            "of the 38 lab numbers beside ours",
            "25.7 min measured on a fresh clone, 2 AMD EPYC cores (two experiments at once); "
            "largest process 1.4 GB",
            2,
            faithful_seeds=1,
            # Measured two at once (the default), so each is longer than it would be alone
            estimate_s={"ae": 783, "sae": 263, "conv": 1, "cnn": 746, "attention": 1, "vit": 1227},
        ),
        Profile(
            "every",
            "all 38 lab numbers at the lab's protocol (the lab profile plus the other six ViT "
            "configurations, 20 epochs each on all 60,000 images); resumes across invocations",
            "the lab profile's time and 58.2 min more for the six other ViTs (measured with "
            "--jobs 2 continuing a lab reproduction)",
            2,
            faithful_seeds=1,
            estimate_s={"ae": 783, "sae": 263, "conv": 1, "cnn": 746, "attention": 1, "vit": 4340},
        ),
        Profile(
            "complete",
            "every lab number at the lab's protocol, and the corrected and beyond-the-lab "
            "stages at their full recipes over 2 seeds: the default on a CUDA device",
            "not measured to its end: past 3.75 min on one NVIDIA H200 (benchmarks/GPU.md)",
            2,
            faithful_seeds=1,
        ),
        Profile(
            "full",
            "the lab's settings for every run, 3 seeds throughout, and the beyond-the-lab stages "
            "at full length",
            "about 9 hours on 2 CPU cores (the ViT part 11 min on one H200)",
            3,
        ),
    )
}
ALIASES = {"quick": "preview"}  # the preview profile's old name


def canonical(profile: str) -> str:
    """A profile's name, given its name or its old name (`quick` is `preview`)."""
    return ALIASES.get(profile, profile)
