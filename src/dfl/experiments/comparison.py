"""Our number beside the lab's: one `Comparison` per lab number, with a `Verdict` and why.

The lab's value is never restated here or in an experiment: `compare` looks it up in
`lab_numbers.LAB` by the number's key, so the table there is the only copy. The report and
results.json read these objects as they are; nothing parses a verdict back out of its text.
"""

from __future__ import annotations

import contextlib
import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from dfl.experiments.lab_numbers import lab_value


class Verdict(StrEnum):
    REPRODUCED = "reproduced"
    DIFFERS = "differs"
    NOT_COMPARABLE = "not comparable"  # fewer epochs or images than the lab, another dataset
    MISSING = "missing"  # not measured in this run (the report says what would measure it)


# The corrected column where a profile leaves the corrected run out: it is trained only at its
# own recipe (the full profile's), never shown from a shortened one.
FULL_ONLY = "full profile"


class Comparison(BaseModel):
    """One lab number as we measured it: `faithful` on the lab's protocol, `corrected` on ours
    (None where there is no counterpart), the verdict, its wording and the reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verdict: Verdict
    detail: str  # the verdict in words: "differs (0.73x)", "not comparable: 3 epochs ..."
    reason: str = ""  # why ours can differ from the lab's, or why it is not comparable
    faithful: Any = None  # as shown: a formatted number, "0.98 ± 0.01 (n=2)", "yes (bug)"
    corrected: Any = None

    @classmethod
    def not_comparable(cls, why: str, **shown: Any) -> Comparison:
        return cls(
            verdict=Verdict.NOT_COMPARABLE, detail=f"not comparable: {why}", reason=why, **shown
        )

    @classmethod
    def differs(cls, detail: str, why: str, **shown: Any) -> Comparison:
        """A difference the lab's own measurement explains (its bug), not one within noise."""
        return cls(verdict=Verdict.DIFFERS, detail=f"differs {detail}", reason=why, **shown)

    @classmethod
    def reproduced(cls, why: str = "", detail: str = "reproduced", **shown: Any) -> Comparison:
        return cls(verdict=Verdict.REPRODUCED, detail=detail, reason=why, **shown)


def compare(
    experiment: str,
    key: str,
    ours: float,
    *,
    tolerance: float,
    relative: bool = False,
    why: str = "",
    explain_match: bool = True,
    slip: tuple[float, str] | None = None,
    **shown: Any,
) -> Comparison:
    """`ours` against the lab's value for `experiment`/`key`: reproduced when within
    `tolerance` (absolute, or a fraction of the lab's value when `relative`), else differs by
    the difference (or the ratio, when relative). `why` says what can move the number (a random
    draw, one run per point); `explain_match=False` gives it only when the numbers differ.
    `slip` = (factor, why): a known bug in the lab's measurement that scales its number; a
    ratio within `tolerance` of that factor is explained by it, any other is said not to be."""
    lab = float(lab_value(experiment, key))
    within = abs(ours - lab) <= (tolerance * lab if relative else tolerance)
    if within:
        detail = f"reproduced (within {tolerance:.0%})" if relative else "reproduced"
        return Comparison.reproduced(why if explain_match else "", detail, **shown)
    detail = f"({ours / lab:.2f}x)" if relative else f"by {ours - lab:+.4f}"
    if slip is not None and relative and abs(ours / lab / slip[0] - 1) <= tolerance:
        why = slip[1]  # the lab's measurement bug accounts for the ratio
    elif slip is not None:
        why = f"{why}; not the lab's known slip, which would make it about {slip[0]:g}x".lstrip(
            "; "
        )
    return Comparison.differs(detail, why, **shown)


def compare_exact(
    experiment: str, key: str, ours: Any, *, why: str = "", **shown: Any
) -> Comparison:
    """`ours` against a lab value that is not a measurement (a matrix, a size, yes or no):
    reproduced when equal element by element, else differs naming the first place they part
    (the lab's value as its table spells it: a string holding a JSON list, or a number)."""
    lab: Any = lab_value(experiment, key)
    if isinstance(lab, str):
        with contextlib.suppress(ValueError):  # a word ("yes (bug)") stays as it is
            lab = json.loads(lab)
    where = _first_difference(ours, lab)
    if where is None:
        return Comparison.reproduced(why, **shown)
    return Comparison.differs(f"at {where}", why or "", **shown)


def _first_difference(ours: Any, lab: Any, at: str = "") -> str | None:
    """Where `ours` and `lab` first differ ("[1][1]: 11 vs 12"), None when they are equal."""
    if isinstance(ours, (list, tuple)) and isinstance(lab, (list, tuple)):
        if len(ours) != len(lab):
            return f"{at or 'the whole'}: {len(ours)} entries vs the lab's {len(lab)}"
        for i, (a, b) in enumerate(zip(ours, lab, strict=True)):
            found = _first_difference(a, b, f"{at}[{i}]")
            if found is not None:
                return found
        return None
    return None if ours == lab else f"{at or 'the value'}: ours {ours}, the lab's {lab}"
