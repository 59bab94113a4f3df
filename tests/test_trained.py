"""load_trained: a run's model and inputs rebuilt from its run directory alone give the
outputs the trainer's evaluation measured and those of a model rebuilt by hand (how the
experiments did it), and a run that cannot be loaded says why on one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import make_dataset
from dfl import models
from dfl.config import build_config, parse_overrides
from dfl.data.batches import to_input
from dfl.errors import ConfigError, DflError, UnloadableRun
from dfl.training import checkpoint
from dfl.training.run import fit
from dfl.training.run_dir import WEIGHTS, RunStatus
from dfl.training.trained import Trained, load_trained
from dfl.training.trainer import StopRun, Trainer

CNN = {"depth": 2, "width": 4}
VIT = {"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 32}  # dropout 0.1: eval


@pytest.fixture(scope="module")
def data():
    return make_dataset(n_train=256, n_test=1100)  # more than one predict chunk of 1000


def config(*pairs: str):
    base = ['device="cpu"', "epochs=1", "batch_size=32"]
    return build_config(overrides=parse_overrides(base + list(pairs)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> dict[str, tuple[Path, dict]]:
    """One short run per model family, trained once for the module."""
    root = tmp_path_factory.mktemp("trained")
    cnn = ['model="cnn_search"', f"model_args={_toml(CNN)}"]
    configs = {
        "ae": config('model="autoencoder"', "model_args={enc=8}"),
        "cnn": config(*cnn),  # precision auto: bf16 on a CPU that has it, as the experiments
        "cnn_fp32_normalized": config(*cnn, 'precision="fp32"', "data.normalize=true"),
        "vit": config('model="vit"', f"model_args={_toml(VIT)}"),
    }
    out = {}
    for name, cfg in configs.items():
        result = fit(cfg, root / name, dataset=data, epoch_bar=False)
        assert result.status == "completed"
        out[name] = (result.run_dir, result.final)
    return out


def _toml(args: dict) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in args.items()) + "}"


@torch.no_grad()
def built_by_hand(run_dir: Path, name: str, args: dict, images: torch.Tensor) -> torch.Tensor:
    """The experiments' way (cnn.py `_test_probabilities`): the model restated by name."""
    model = models.create(name, **args)
    model.load_state_dict(load_file(str(run_dir / WEIGHTS)))
    model.eval()
    x = to_input(images)
    return torch.cat([model(x[i : i + 1000]) for i in range(0, len(x), 1000)])


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (lambda x: x.float() / 255, r"takes uint8 images \(pixels 0-255.*not float32; for "),
        (lambda x: x.numpy().astype("float64"), r"not float64"),
        (lambda x: x.tolist(), r"as a tensor or a NumPy array, not list"),
        (lambda x: None, r"not NoneType"),
        (lambda x: x.long(), r"not int64$"),
        (lambda x: x[0], r"not shape \(28, 28\): one image is images\[None\]"),
        (lambda x: x[:, None], r"images \(N, 28, 28\), as every .* not shape \(4, 1, 28, 28\)$"),
        (lambda x: x[:, :14, :14], r"not shape \(4, 14, 14\)$"),
    ],
    ids=["floats in [0, 1]", "numpy float", "list", "None", "int64", "one image", "4-d", "14x14"],
)
def test_predict_refuses_images_it_would_misread(runs, data, given, said):
    """Float pixels in [0, 1] were taken as 0-255 and divided by 255 again: a classifier's
    outputs for near-black digits, at chance, with no error. Each wrong input is one line."""
    trained = load_trained(runs["ae"][0])
    with pytest.raises(ConfigError, match=said):
        trained.predict(given(data.test_images[:4]))
    assert torch.equal(  # a NumPy uint8 array is taken as the tensor it holds
        trained.predict(data.test_images[:4].numpy()), trained.predict(data.test_images[:4])
    )
    flipped = data.test_images[:4].numpy()[:, ::-1]  # a view torch cannot share
    assert torch.equal(trained.predict(flipped), trained.predict(data.test_images[:4].flip(1)))


@pytest.mark.parametrize(
    "run, name, args",
    [("ae", "autoencoder", {"enc": 8}), ("cnn", "cnn_search", CNN), ("vit", "vit", VIT)],
)
def test_predict_equals_the_model_built_by_hand(runs, data, run, name, args):
    run_dir, _ = runs[run]
    before = torch.get_rng_state()
    trained = load_trained(run_dir)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is untouched
    assert isinstance(trained, Trained) and trained.run_dir == run_dir
    assert trained.config.model == name and not trained.model.training
    predicted = trained.predict(data.test_images)
    assert predicted.dtype == torch.float32
    assert torch.equal(predicted, built_by_hand(run_dir, name, args, data.test_images))


def test_autoencoder_reconstructions_give_the_run_s_test_mse(runs, data):
    run_dir, final = runs["ae"]
    trained = load_trained(run_dir)
    x = trained.inputs(data.test_images)
    mse = float(F.mse_loss(trained.predict(data.test_images), x))
    assert mse == pytest.approx(final["test_loss"], rel=1e-6)


@pytest.mark.parametrize("run", ["cnn_fp32_normalized", "vit"])
def test_classifier_outputs_give_the_run_s_test_metrics(runs, data, run):
    """The trainer evaluated in fp32 here (the CNN with channels-last activations, which
    changes the rounding only), so its test loss and accuracy come back from predict."""
    run_dir, final = runs[run]
    logits = load_trained(run_dir).predict(data.test_images)
    accuracy = int((logits.argmax(1) == data.test_labels).sum()) / len(data.test_labels)
    assert accuracy == final["test_accuracy"]
    assert float(F.cross_entropy(logits, data.test_labels)) == pytest.approx(
        final["test_loss"], rel=1e-5
    )


def test_inputs_are_the_trainer_s_evaluation_inputs(runs, data):
    """Standardised exactly when the run had data.normalize, as Trainer._inputs(train=False)."""
    images = data.test_images[:50]
    for run in ("cnn", "cnn_fp32_normalized"):
        trained = load_trained(runs[run][0])
        trainer = Trainer(trained.config, runs[run][0], data)
        assert torch.equal(trained.inputs(images), trainer._inputs(images, train=False))
    assert torch.equal(load_trained(runs["cnn"][0]).inputs(images), to_input(images))


def test_the_class_count_comes_from_the_weights_not_the_dataset(tmp_path):
    data = make_dataset(n_train=128, n_test=64, num_classes=4)  # num_classes left to the data
    result = fit(config("model_args.hidden=[16]"), tmp_path / "r", dataset=data, epoch_bar=False)
    logits = load_trained(tmp_path / "r").predict(data.test_images)
    assert logits.shape == (64, 4)
    accuracy = int((logits.argmax(1) == data.test_labels).sum()) / len(data.test_labels)
    assert accuracy == result.final["test_accuracy"]


def test_a_paused_run_gives_its_newest_checkpoint_s_weights(tmp_path, data):
    cfg = config("model_args.hidden=[16]", "epochs=3")
    result = fit(cfg, tmp_path / "p", dataset=data, until_epoch=2, epoch_bar=False)
    assert result.status == "paused" and not (tmp_path / "p" / WEIGHTS).exists()
    trained = load_trained(tmp_path / "p")
    tensors, state = checkpoint.load_latest(tmp_path / "p" / "checkpoints")
    assert state["epoch"] == 2
    saved = checkpoint.unprefixed(checkpoint.MODEL, tensors)
    assert all(torch.equal(v, saved[k]) for k, v in trained.model.state_dict().items())


def test_a_pruned_run_gives_the_weights_of_the_epoch_it_stopped_at(tmp_path, data):
    def prune(record):
        raise StopRun(RunStatus.PRUNED, "pruned at epoch 1")

    cfg = config("model_args.hidden=[16]", "epochs=3")
    fit(cfg, tmp_path / "p", dataset=data, callbacks=[prune], epoch_bar=False)
    tensors, _ = checkpoint.load_latest(tmp_path / "p" / "checkpoints")
    saved = checkpoint.unprefixed(checkpoint.MODEL, tensors)
    trained = load_trained(tmp_path / "p")
    assert all(torch.equal(v, saved[k]) for k, v in trained.model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Runs that cannot be loaded


@pytest.fixture
def copy(runs, tmp_path) -> Path:
    """A finished run to damage: a copy of the autoencoder run."""
    shutil.copytree(runs["ae"][0], tmp_path / "run")
    return tmp_path / "run"


def unloadable(run_dir: Path, *fragments: str) -> str:
    with pytest.raises(UnloadableRun) as caught:
        load_trained(run_dir)
    message = str(caught.value)
    assert isinstance(caught.value, DflError) and "\n" not in message
    assert str(run_dir) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_a_missing_directory_or_config(tmp_path, copy):
    unloadable(tmp_path / "nowhere", "no such directory")
    (copy / "config.toml").unlink()
    unloadable(copy, "has no config.toml")


@pytest.mark.parametrize(
    "text, says",
    [
        (b"\xff\xfe not text", "not UTF-8"),
        (b"model = = 'x'\n", "not valid TOML"),
        (b'model = "no_such_model"\n', "unknown model"),
        (b"epochs = -1\n", "epochs"),
    ],
)
def test_a_damaged_config(copy, text, says):
    (copy / "config.toml").write_bytes(text)
    unloadable(copy, says)


def test_missing_weights(copy):
    (copy / WEIGHTS).unlink()
    unloadable(copy, "has no model.safetensors", "it is completed")
    (copy / "status.json").unlink()
    unloadable(copy, "has no model.safetensors", "it has not started")


def test_damaged_weights(copy):
    whole = (copy / WEIGHTS).read_bytes()
    (copy / WEIGHTS).write_bytes(whole[: len(whole) // 2])
    unloadable(copy, "model.safetensors is damaged")
    (copy / WEIGHTS).write_bytes(b"\x00" * 64)
    unloadable(copy, "model.safetensors is damaged")


def test_weights_of_another_model(copy):
    """Weights rewritten as another model's: the sha256 the run recorded tells first; a run
    that recorded none (an older dfl's) is told by the shapes."""
    weights = load_file(str(copy / WEIGHTS))
    save_file({"extra": torch.zeros(1), **weights}, str(copy / WEIGHTS))
    unloadable(copy, "is not the file the run wrote")
    status = json.loads((copy / "status.json").read_text())
    del status["final"]["weights_sha256"]
    (copy / "status.json").write_text(json.dumps(status))
    first = next(iter(weights))
    save_file({k: v for k, v in weights.items() if k != first}, str(copy / WEIGHTS))
    unloadable(copy, "do not fit the 'autoencoder' model", f"lack '{first}'")
    save_file({"extra": torch.zeros(1), **weights}, str(copy / WEIGHTS))
    unloadable(copy, "'extra' is none of the model's")
    save_file({k: v[..., :1].contiguous() for k, v in weights.items()}, str(copy / WEIGHTS))
    unloadable(copy, "has shape")
