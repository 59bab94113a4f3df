"""The beyond-the-lab recipes are config files: `dfl train --config configs/recipes/NAME.toml`
builds the very config a profile's beyond stage trains, and every profile that trains a recipe
changes of it only what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfl.config import build_config, parse_value
from dfl.experiments import ae, cnn, recipes, sae, vit
from dfl.experiments.context import Context, overrides_tree
from dfl.models.registry import with_model_defaults

ROOT = Path(__file__).resolve().parent.parent


def test_the_checkout_folder_is_the_package_folder():
    assert (ROOT / "configs" / "recipes").resolve() == recipes.FOLDER.resolve()
    assert recipes.names() == ["ae_deep", "cnn_final", "cnn_long", "sae_deep", "vit_modern"]


@pytest.mark.parametrize("name", ["ae_deep", "cnn_final", "cnn_long", "sae_deep", "vit_modern"])
def test_each_recipe_is_a_valid_config_file(name: str):
    cfg = build_config(recipes.path(name))
    assert cfg.restore_best and cfg.data.val_fraction > 0  # selected on validation


def context(tmp_path: Path, profile: str) -> Context:
    return Context(tmp_path, profile, data=None, dataset_arg="mnist", seeds=2)  # type: ignore[arg-type]


def test_the_full_profile_trains_the_recipes_as_they_are(tmp_path: Path):
    ctx = context(tmp_path, "full")
    alone = build_config(recipes.path("vit_modern"), overrides={"seed": 1})
    staged = ctx.config(vit._beyond_overrides(1, vit.PROFILES["full"].beyond))
    # what every reproduction run shares (device, precision, dataset, checkpoint interval)
    common = {"device", "precision", "checkpoint_interval_s", "data"}
    assert staged.model_dump(exclude=common) == alone.model_dump(exclude=common)
    assert staged.data.model_dump(exclude={"dataset"}) == alone.data.model_dump(exclude={"dataset"})
    assert ae.PROFILES["full"].deep == {} and ae.PROFILES["complete"].deep == {}


def test_the_full_profiles_deeper_sae_trains_the_recipes_phases(tmp_path: Path):
    """`dfl train --config sae_deep.toml` trains, phase for phase, the runs the full profile's
    stacked autoencoder stage trains for its deeper network (where each phase starts from
    aside: the previous phase's run, in its own folder)."""
    from dfl.training.layerwise import phases

    ctx = context(tmp_path, "full")
    (deeper,) = [v for v in sae.PROFILES["full"].full if v.key == "deeper"]
    staged = sae.phase_overrides(ctx, deeper, "full", 1, "deeper/seed1")
    alone = phases(ctx.config({**recipes.recipe(sae.DEEP), "seed": 1}), tmp_path / "run")
    assert list(staged) == list(alone) == ["pretrain0", "pretrain1", "pretrain2", "classifier",
                                           "finetune"]  # fmt: skip
    for name, phase in alone.items():
        ours = ctx.config(staged[name])
        assert with_model_defaults(phase.model_copy(update={"init_from": ours.init_from})) == (
            with_model_defaults(ours)
        ), name
    chain = [None, *(str(tmp_path / "run" / n) for n in list(alone)[:-1])]
    assert [p.init_from for p in alone.values()] == chain


@pytest.mark.parametrize("profile", sorted(ae.PROFILES))
def test_the_deeper_autoencoder_has_the_grids_smallest_code(profile: str):
    p = ae.PROFILES[profile]
    cfg = build_config(overrides=overrides_tree(recipes.recipe(ae.DEEP), p.deep))
    assert cfg.model_args["enc"] == min(p.encs)


def test_the_cnns_final_stage_trains_its_recipe_with_the_architecture_it_prints(tmp_path: Path):
    """The final stage puts a front architecture in place of the recipe's model arguments; the
    command the report prints for it (alone_command) builds the very config the stage trains."""
    ctx = context(tmp_path, "full")
    arch = {"depth": 3, "growth": "constant", "kernel": 5, "pool": "last_two",
            "batchnorm": False, "activation": "gelu", "width": 32, "dropout": 0.5}  # fmt: skip
    staged = ctx.config(cnn._final_overrides(cnn.PROFILES["full"], arch, 1))
    sets = cnn.alone_command(arch).split("--set ")[1:]
    assert len(sets) == len(arch)
    overrides = {"seed": 1} | {k: parse_value(v) for k, v in (a.strip().split("=") for a in sets)}
    alone = build_config(recipes.path(cnn.FINAL), overrides=overrides_tree(overrides))
    common = {"device", "precision", "checkpoint_interval_s", "data"}
    assert staged.model_dump(exclude=common) == alone.model_dump(exclude=common)
    assert staged.model_args == arch and staged.epochs == recipes.recipe(cnn.FINAL)["epochs"]
    # A profile that trains the stage shorter says so and changes nothing else.
    smoke = ctx.config(cnn._final_overrides(cnn.PROFILES["smoke"], arch, 1))
    assert smoke.epochs == cnn.PROFILES["smoke"].final_epochs != staged.epochs
    assert smoke.model_dump(exclude=common | {"epochs"}) == staged.model_dump(
        exclude=common | {"epochs"}
    )


# The full profile's selection, as configs/recipes/cnn_long.toml's model arguments hold it.
SELECTED = {"depth": 3, "growth": "double", "kernel": 5, "pool": "every_second",
            "batchnorm": True, "activation": "relu", "width": 32, "dropout": 0.5}  # fmt: skip


@pytest.mark.parametrize("arch", [SELECTED, {**SELECTED, "width": 16, "activation": "tanh"}])
def test_the_long_stage_trains_its_recipe_with_the_architecture_it_prints(tmp_path: Path, arch):
    """The long stage is the final recipe at the long recipe's epochs, nothing else changed;
    the command the report prints for it builds the very config the stage trains, whatever
    architecture the stage selected, and the recipe file alone trains the full profile's."""
    ctx, full = context(tmp_path, "full"), cnn.PROFILES["full"]
    staged = ctx.config(cnn._final_overrides(full, arch, 1, cnn.LONG))
    final = ctx.config(cnn._final_overrides(full, arch, 1))
    assert staged.epochs == recipes.recipe(cnn.LONG)["epochs"] > final.epochs
    assert staged.model_dump(exclude={"epochs"}) == final.model_dump(exclude={"epochs"})
    sets = cnn.alone_command(arch, recipe=cnn.LONG).split("--set ")[1:]
    overrides = {"seed": 1} | {k: parse_value(v) for k, v in (a.strip().split("=") for a in sets)}
    alone = build_config(recipes.path(cnn.LONG), overrides=overrides_tree(overrides))
    common = {"device", "precision", "checkpoint_interval_s", "data"}
    assert staged.model_dump(exclude=common) == alone.model_dump(exclude=common)
    if arch == SELECTED:  # the file as it is: the same model, its other arguments the defaults
        plain = build_config(recipes.path(cnn.LONG), overrides={"seed": 1})
        assert with_model_defaults(plain).model_dump(exclude=common) == with_model_defaults(
            staged
        ).model_dump(exclude=common)
