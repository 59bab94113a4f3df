"""Train one beyond-the-lab ladder on its own and print what each ingredient bought.

The full and complete profiles train the CNN's and the ViT's ladders (dfl.experiments.ablation)
after their searches and final stages: a day on 2 CPU cores. This trains just a ladder, every
rung over seeds, at the full profile's recipes and for the architecture the full profile
selected (the CNN: configs/recipes/cnn_long.toml's model arguments), with the same code and
configs the profile's experiment uses (its rungs below the top under the same run names; the
top rungs, which the profile takes from its beyond stages, under the ladder's). It resumes: run
it again to go on.

    python benchmarks/ladder.py cnn --seeds 3 --jobs 2 --out runs/ladder

--seed and --rungs train a part of it, one line a run: `--seed 1 --rungs 1,2,3,4` is seed 1 of
the second to fifth rungs (rung 0 is the bottom), for spreading a ladder's seeds over machines
or sessions. The runs are the whole ladder's, under the same names: `--seeds N` after them
reuses them.

The CNN's top rung is `dfl train --config configs/recipes/cnn_long.toml`: runs of that command
copied into the top rung's run directories (printed by --dirs) are reused as they are.
--committee then chooses a committee among all the ladder's runs on validation
(dfl.training.committee) and reads its test accuracy once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfl import models
from dfl.cli import whole_number
from dfl.data import load_dataset
from dfl.errors import DflError
from dfl.experiments import ablation, cnn, recipes, vit
from dfl.experiments.context import Context, slug
from dfl.experiments.document import Table
from dfl.report.render import md_table
from dfl.training import committee


def plan(experiment: str) -> tuple[ablation.Ladder, str]:
    """The experiment's ladder as the full profile builds it, and what its table calls it."""
    if experiment == "vit":
        return ablation.ladder(vit.LADDER_START_LABEL, vit.LADDER_START, vit.LADDER, {}), "the ViT"
    # the searched arguments the long recipe leaves at their defaults, for the rung's label
    defaults = models.get("cnn_search").defaults()
    arch = {k.removeprefix("model_args."): None for k in cnn.SPACE}
    arch = {k: defaults[k] for k in arch} | recipes.recipe(cnn.LONG)["model_args"]
    return ablation.ladder(
        cnn.LADDER_START_LABEL, cnn.LADDER_START, cnn.ladder_to(arch), {}
    ), "the CNN"


def _indices(text: str) -> list[int]:
    try:
        return sorted({int(i) for i in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of rungs like 1,2") from None


def part_table(ladder: ablation.Ladder, runs: dict, rungs: list[int], seeds: list[int]) -> str:
    """A line a run of a part of the ladder (a part has no ladder table: its gains need every
    seed of every rung)."""
    rows = []
    for i in rungs:
        for s in seeds:
            run = runs[ladder.name(i, s)]
            rows.append([str(i), ladder.labels[i], str(s), f"{run.final['val_accuracy']:.4f}",
                         f"{run.final['test_accuracy']:.4f}",
                         f"{sum(h['seconds'] for h in run.history):,.0f}"])  # fmt: skip
    columns = ["rung", "ingredient", "seed", "val accuracy", "test accuracy", "seconds"]
    return md_table(Table(columns, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=["cnn", "vit"])
    parser.add_argument("--seeds", type=whole_number(1), default=3, help="seeds a rung (default 3)")
    parser.add_argument(
        "--jobs", type=whole_number(1), default=1, help="runs side by side (default 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/ladder"))
    parser.add_argument("--dirs", action="store_true", help="print the run directories, train none")
    parser.add_argument("--seed", type=whole_number(0), help="train only this seed, one line a run")
    parser.add_argument("--rungs", type=_indices, help="train only these rungs (0 = the bottom)")
    parser.add_argument(
        "--committee", action="store_true", help="also a committee of all its runs, on validation"
    )
    args = parser.parse_args()

    ladder, what = plan(args.experiment)
    whole = args.seed is None and args.rungs is None
    if args.committee and not whole:
        parser.error("--committee chooses among every run of the ladder: not with a part")
    rungs = args.rungs if args.rungs is not None else list(range(len(ladder.trees)))
    if not all(0 <= i < len(ladder.trees) for i in rungs):
        parser.error(f"--rungs: this ladder has rungs 0 to {len(ladder.trees) - 1}")
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    names = ladder.runs(rungs, seeds)  # whole: every rung, the top one too
    if args.dirs:
        for name in names:
            print(args.out / args.experiment / "runs" / slug(name))
        return
    data = load_dataset("mnist")
    ctx = Context(args.out, "full", data, "mnist", seeds=len(seeds), jobs=args.jobs)
    runs = ctx.train_many(args.experiment, names)
    if not whole:
        print(part_table(ladder, runs, rungs, seeds))
        return
    top = [runs[ladder.name(len(ladder.trees) - 1, s)] for s in range(args.seeds)]
    result = ablation.collect(ctx, ladder, runs, [top])
    print(ablation.summary(result, what), "", md_table(ablation.table(result, what)), sep="\n")
    if args.committee:
        try:
            chosen = committee.choose([runs[name].run_dir for name in names])
        except DflError as e:
            raise SystemExit(f"ladder.py: no committee: {e}") from None
        print(f"\nA committee of the ladder's {len(names)} runs, chosen on validation log-loss: "
              f"{chosen.describe()}")  # fmt: skip
        for member in dict.fromkeys(chosen.members):
            print(f"  {chosen.members.count(member)} x {member.name}")


if __name__ == "__main__":
    main()
