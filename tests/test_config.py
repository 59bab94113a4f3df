import tomllib
from pathlib import Path

import pytest

from dfl.config import build_config, config_to_toml, dict_to_toml, parse_overrides, parse_value
from dfl.errors import ConfigError


def test_defaults_validate():
    cfg = build_config()
    assert cfg.optim.lr == 1e-3 and cfg.data.val_fraction == 0.2


def test_overrides_are_typed_by_toml_rules():
    assert parse_value("3e-4") == 3e-4
    assert parse_value("[16, 32]") == [16, 32]
    assert parse_value("true") is True
    assert parse_value("relu") == "relu"
    tree = parse_overrides(["optim.lr=0.01", "model_args.enc=64", "epochs=3"])
    cfg = build_config(overrides=tree)
    assert cfg.optim.lr == 0.01 and cfg.model_args == {"enc": 64} and cfg.epochs == 3


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["optim.lrr=0.1"], "optim.lrr"),
        (["epochs=abc"], "epochs"),
        (["epochs=0"], "epochs"),
        (["data.val_fraction=1.5"], "data.val_fraction"),
        (["optim.lr=inf"], "optim.lr"),  # finite only: it would be NaN after one step
        (["optim.name=rmsprop"], "optim.name"),
        (["bogus=1"], "bogus"),
    ],
)
def test_bad_keys_are_named(overrides, named):
    with pytest.raises(ConfigError, match=f"'{named}'"):
        build_config(overrides=parse_overrides(overrides))


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["epochs"])


def test_toml_roundtrip(tmp_path: Path):
    cfg = build_config(
        overrides=parse_overrides(
            ['model="cnn"', 'model_args.layers=[{type="flatten"}, {type="linear", out=10}]']
        )
    )
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert build_config(path) == cfg


def test_toml_roundtrip_keeps_every_string(tmp_path: Path):
    """`dfl train --config RUN/config.toml` repeats the run whatever its paths hold: quotes,
    backslashes, newlines, control characters, non-ASCII. None values are left out."""
    odd = "runs/q\"uo\\te 'x'\n\t\x01 größe"
    cfg = build_config(
        overrides={"init_from": odd, "freeze": [odd, ""], "data": {"dataset": odd}, "seed": 3}
    )
    text = config_to_toml(cfg)
    assert "None" not in text and "grad_clip" not in text  # None: left out, reads as None
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert build_config(path) == cfg


def test_toml_keys_are_quoted_where_they_must_be():
    """A sweep spec's dotted keys stay one key, in tables and inline; other odd keys too."""
    tree = {
        "search": {"space": {"model_args.depth": {"choices": [2, 3]}}},
        "grid": {"optim.lr": [0.1, 1e-3]},
        "base": {"model_args": {"a b": {"größe": 1, "none": None}, "": [{"k": None}]}},
    }
    assert tomllib.loads(dict_to_toml(tree)) == {
        "search": {"space": {"model_args.depth": {"choices": [2, 3]}}},
        "grid": {"optim.lr": [0.1, 1e-3]},
        "base": {"model_args": {"a b": {"größe": 1}, "": [{}]}},
    }


def test_bad_toml_file_is_named(tmp_path: Path):
    path = tmp_path / "broken.toml"
    path.write_text("epochs = = 3")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        build_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "missing.toml")


def test_a_config_saved_with_a_byte_order_mark_reads(tmp_path):
    """Some Windows editors open UTF-8 with a byte-order mark, which TOML does not allow."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b'\xef\xbb\xbfmodel = "mlp"\nepochs = 3\n')
    assert build_config(path).epochs == 3


def test_early_stop_mode_follows_a_metric_changed_later(tmp_path):
    """The mode is saved unset when it is the metric's own way, so a saved config whose metric
    is changed (`--config RUN/config.toml --set early_stop.metric=...`) watches the new metric
    the way it improves; a run saved with the old default `mode = "min"` reads the same."""
    saved = tmp_path / "config.toml"
    saved.write_text(config_to_toml(build_config(overrides={"model": "mlp"})))
    assert 'mode = "' not in saved.read_text() and "[early_stop]\n" in saved.read_text()
    changed = {"early_stop": {"metric": "val_accuracy", "patience": 2}}
    assert build_config(saved, changed).early_stop.direction == "max"
    old = saved.read_text().replace("[early_stop]\n", '[early_stop]\nmode = "min"\n')
    saved.write_text(old)
    assert build_config(saved).early_stop == build_config(overrides={"model": "mlp"}).early_stop
