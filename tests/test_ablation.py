"""The ablation ladders climb from the lab's recipe to the beyond stage's, one ingredient a rung:
the top rung is the very config the beyond stage trained (so its runs are reused), every rung
changes something, and the summary is computed from the rows."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dfl.experiments import ablation, cnn, vit
from dfl.experiments.context import Context, overrides_tree

ARCHS = [
    {"depth": 3, "growth": "double", "kernel": 5, "pool": "last_two", "batchnorm": True,
     "activation": "relu", "width": 32, "dropout": 0.5},
    {"depth": 4, "growth": "constant", "kernel": 3, "pool": "every_second", "batchnorm": False,
     "activation": "tanh", "width": 16},
]  # fmt: skip


def context(tmp_path: Path, profile: str) -> Context:
    return Context(tmp_path, profile, data=None, dataset_arg="mnist", seeds=2)  # type: ignore[arg-type]


def dump(ctx: Context, tree: dict) -> dict:
    return ctx.config(tree).model_dump()


@pytest.mark.parametrize("profile", ["smoke", "full"])
@pytest.mark.parametrize("arch", ARCHS, ids=["w32-dropout", "w16"])
def test_the_cnn_ladder_ends_at_the_final_stage_config(tmp_path: Path, profile: str, arch: dict):
    ctx, p = context(tmp_path, profile), cnn.PROFILES[profile]
    rungs = cnn.ladder_to(arch)
    plan = ablation.ladder(cnn.LADDER_START_LABEL, cnn.LADDER_START, rungs, cnn._final_changes(p))
    trees = plan.trees
    # a run directory per rung and seed below the two stages' rungs
    assert len(set(plan.below_top(2, tops=2))) == 2 * (len(rungs) - 1)
    assert dump(ctx, {**trees[-2], "seed": 1}) == dump(ctx, cnn._final_overrides(p, arch, 1))
    assert dump(ctx, {**trees[-1], "seed": 1}) == dump(
        ctx, cnn._final_overrides(p, arch, 1, cnn.LONG)
    )
    # 16 filters and no dropout are the start's: no rung for them
    assert len(rungs) == 5 + (arch["width"] != 16) + ("dropout" in arch)
    if profile == "full":  # every rung changes something (the smoke profile's epochs hide one)
        configs = [dump(ctx, t) for t in trees]
        assert all(a != b for a, b in itertools.pairwise(configs))


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_the_vit_ladder_ends_at_the_modern_vits_recipe(tmp_path: Path, profile: str):
    ctx, p = context(tmp_path, profile), vit.PROFILES[profile]
    assert p.beyond is not None
    trees = ablation.ladder("start", vit.LADDER_START, vit.LADDER, p.beyond).trees
    assert dump(ctx, {**trees[-1], "seed": 1}) == dump(ctx, vit._beyond_overrides(1, p.beyond))
    start = ctx.config(trees[0])
    assert start.model == "vit_lab" and start.schedule.name == "exponential"
    if profile == "full":
        configs = [dump(ctx, t) for t in trees]
        assert all(a != b for a, b in itertools.pairwise(configs))


def test_a_ladder_trained_alone_tops_out_at_its_recipe_file(tmp_path: Path):
    """benchmarks/ladder.py's ladders end at the recipes `dfl train --config` runs alone (the
    CNN's: cnn_long.toml, whose runs it reuses), spelled-out defaults aside."""
    import sys

    from dfl.config import build_config
    from dfl.experiments import recipes
    from dfl.models.registry import with_model_defaults

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from ladder import plan

    ctx = context(tmp_path, "full")
    for experiment, recipe in (("cnn", cnn.LONG), ("vit", "vit_modern")):
        top = ctx.config({**plan(experiment)[0].trees[-1], "seed": 0})
        alone = build_config(recipes.path(recipe), overrides_tree(ctx.common(), {"seed": 0}))
        assert with_model_defaults(top) == with_model_defaults(alone), experiment


def test_part_of_a_ladder_trains_the_whole_ladders_runs(capsys, monkeypatch):
    """benchmarks/ladder.py --seed/--rungs names the very run directories of the whole
    ladder's, so seeds trained apart add up to it; a rung it lacks is refused in one line."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import ladder

    def dirs(*argv: str) -> list[str]:
        monkeypatch.setattr(sys, "argv", ["ladder.py", "vit", "--dirs", *argv])
        ladder.main()
        return capsys.readouterr().out.split()

    whole = dirs("--seeds", "2")
    part = dirs("--seed", "1", "--rungs", "1,4")
    assert len(whole) == 2 * (len(vit.LADDER) + 1) and len(part) == 2
    assert set(part) < set(whole) and all(d.endswith("_seed1") for d in part)
    with pytest.raises(SystemExit):
        dirs("--rungs", "6")
    assert "this ladder has rungs 0 to 5" in capsys.readouterr().err


def rows(*tests: list[float]) -> list[dict]:
    return [
        {"ingredient": f"+ step {i}", "val": t, "test": t, "seconds": [10.0, 12.0],
         "device": "cpu", "epochs": 3}
        for i, t in enumerate(tests)
    ]  # fmt: skip


def test_the_summary_sorts_the_steps_by_the_seeds_spread():
    ladder = {
        "rows": rows([0.990, 0.992], [0.9912, 0.9928], [0.9950, 0.9952], [0.9900, 0.9902]),
        "ensemble": 0.9906,
        "changes": {},
    }
    text = ablation.summary(ladder, "the CNN")
    assert "from 0.9910 to 0.9901 mean test accuracy over 2 seeds, 0.9906 as an ensemble" in text
    # step 1 gains 0.0010 against a spread of 0.0014; step 3 loses 0.0050 against 0.0001
    assert "Gained beyond the seeds' spread: 'step 2' (+0.0031); 'ensemble of the seeds' " in text
    assert "Lost beyond it: 'step 3' (-0.0050)." in text
    assert "Within it: 'step 1' (+0.0010)." in text
    table = ablation.table(ladder, "the CNN")
    assert [r[4] for r in table.rows] == ["", "+0.0010", "+0.0031", "-0.0050", "+0.0005"]
    assert table.rows[-1][5] == "22 in all" and table.rows[0][5] == "11 (cpu)"


def test_a_gain_that_rounds_to_nothing_has_no_minus_sign():
    # the 30-epoch CNN rung's 0.99633 after the one-cycle rung's 0.99633...: -0.0000 before
    ladder = {"rows": rows([0.99633, 0.99634], [0.99633, 0.99633]), "ensemble": 0.9965,
              "changes": {}}  # fmt: skip
    assert ablation.table(ladder, "the CNN").rows[1][4] == "+0.0000"
    assert "'step 1' (+0.0000)" in ablation.summary(ladder, "the CNN")


def test_one_seed_claims_no_spread_and_no_ensemble():
    one = [{**r, "test": r["test"][:1], "val": r["val"][:1]} for r in rows([0.98], [0.99])]
    ladder = {"rows": one, "ensemble": 0.99, "changes": {"epochs": 1}}
    text = ablation.summary(ladder, "the ViT")
    assert "from one seed, so no step can be told from noise; by size: 'step 1' +0.0100." in text
    assert "ensemble" not in text
    table = ablation.table(ladder, "the ViT")
    assert len(table.rows) == 2 and "epochs = 1" in table.caption
