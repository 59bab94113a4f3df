"""The shape checker and cost table (`dfl shapes`): totals that add up for every registered
model, multiply-adds derived by hand, the lab's CNNs exactly, and the write-up's candidate
caught before it trains."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dfl import models
from dfl.cli import main
from dfl.errors import ShapeError
from dfl.labtools.shapes import model_from_spec, model_summary

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
CANDIDATE = str(CONFIGS / "cnn_writeup_candidate.toml")
FIXED = str(CONFIGS / "cnn_writeup_fixed.toml")


@pytest.mark.parametrize("name", models.names())
def test_every_model_summary_adds_up(name):
    model = models.create(name)
    summary = model_summary(model)
    assert summary.params == sum(p.numel() for p in model.parameters())
    assert sum(row.params for row in summary.rows) == summary.params
    assert sum(row.macs for row in summary.rows) == summary.macs > 0
    assert summary.output_shape == list(model.eval()(torch.zeros(2, 1, 28, 28)).shape[1:])
    json.dumps(summary.as_dict())


def test_multiply_adds_of_a_small_conv_and_linear_by_hand():
    model = nn.Sequential(
        nn.Conv2d(2, 4, kernel_size=3, padding=1, groups=2),  # 4 x 5 x 5 out
        nn.Flatten(),
        nn.Linear(100, 7),
    )
    rows = model_summary(model, (2, 5, 5)).rows
    conv, _, linear = rows
    # conv: out elements x (C_in / groups x k x k) = (4 * 5 * 5) x (2 / 2 * 3 * 3)
    assert conv.output_shape == [4, 5, 5] and conv.macs == 100 * 9
    assert conv.params == 4 * (1 * 3 * 3) + 4
    # linear: out elements x in_features
    assert linear.output_shape == [7] and linear.macs == 7 * 100 and linear.params == 707


class _Scores(nn.Module):
    """Attention-like work done in a module's own forward, not in a Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ x.transpose(-1, -2)  # (n, d) @ (d, n)


def test_matrix_products_outside_layers_are_counted_on_their_module():
    summary = model_summary(nn.Sequential(nn.Linear(8, 8), _Scores()), (5, 8))
    linear, scores = summary.rows
    assert linear.macs == 5 * 8 * 8
    assert scores.kind == "_Scores" and scores.output_shape == [5, 5] and scores.macs == 5 * 5 * 8


def test_summary_leaves_the_model_as_it_was():
    model = models.create("cnn_lab").train()
    model_summary(model)
    assert model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_lab_baseline_exactly():
    # The lab notebook's baseline (3.2 Q2): conv(1->16,k3,s2,p1) conv(16->32,k3,s2,p1)
    # conv(32->32,k3,s2,p1) conv(32->64,k2,s2,p0), each + BN(2C params) + ReLU;
    # Linear(256,100) -> Linear(100,10).
    convs = [(1, 16, 3), (16, 32, 3), (32, 32, 3), (32, 64, 2)]
    by_hand = sum(cin * cout * k * k + cout + 2 * cout for cin, cout, k in convs)
    by_hand += 256 * 100 + 100 + 100 * 10 + 10
    assert by_hand == 49_302
    summary = model_summary(models.create("cnn_lab"))
    assert summary.params == by_hand
    conv_rows = [r for r in summary.rows if r.kind == "Conv2d"]
    assert [r.output_shape for r in conv_rows] == [[16, 14, 14], [32, 7, 7], [32, 4, 4], [64, 2, 2]]
    # Multiply-adds: out elements x C_in x k x k per conv, out x in per linear.
    macs = 16 * 14 * 14 * 9 + 32 * 7 * 7 * 16 * 9 + 32 * 4 * 4 * 32 * 9 + 64 * 2 * 2 * 32 * 4
    assert summary.macs == macs + 256 * 100 + 100 * 10 == 460_840


def test_exploration_model_defaults_exactly():
    # The lab notebook's 3.2 Q2 "CNNnet" defaults: filters 16/32/64/128, kernels 3 (padding 1),
    # BN, ReLU, MaxPool(2) after layers 2 and 4 (28 -> 14 -> 7); head Linear(128*7*7, 128) ->
    # ReLU -> (128, 10).
    filters = [1, 16, 32, 64, 128]
    by_hand = sum(cin * cout * 9 + cout + 2 * cout for cin, cout in itertools.pairwise(filters))
    by_hand += 128 * 7 * 7 * 128 + 128 + 128 * 10 + 10
    assert by_hand == 901_866
    summary = model_summary(models.create("cnn_explore"))
    assert summary.params == by_hand
    kinds = [r.kind for r in summary.rows]
    assert kinds.count("BatchNorm2d") == 4 and kinds.count("ReLU") == 5
    pools = [i for i, k in enumerate(kinds) if k == "MaxPool2d"]
    convs_before = [kinds[:i].count("Conv2d") for i in pools]
    assert convs_before == [2, 4]
    head = next(r for r in summary.rows if r.kind == "Linear")
    assert head.params == 128 * 7 * 7 * 128 + 128


def test_the_writeup_candidate_is_caught_naming_the_linear_layer():
    with pytest.raises(ShapeError) as caught:
        model_from_spec(CANDIDATE, [], (1, 28, 28))
    message = str(caught.value)
    assert "cnn_writeup_candidate.toml" in message
    assert "layer 14 (linear) gets input [2304]" in message and "12544" in message


def test_the_fixed_candidate_builds_and_trains_a_step():
    _, model = model_from_spec(FIXED, [], (1, 28, 28))
    head = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert head.in_features == 256 * 3 * 3  # three 2x2 poolings: 28 -> 14 -> 7 -> 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.LeakyReLU) for m in model.modules()) == 5
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_cli_table_and_json(capsys):
    assert main(["shapes", "cnn_lab"]) == 0
    out = capsys.readouterr().out
    assert "Conv2d" in out and "49,302" in out and "460,840" in out
    assert main(["shapes", "cnn_explore", "--set", "model_args.filters=[8,8,8,8]", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"][0]["output_shape"] == [8, 28, 28]


def test_cli_candidate_exits_2_with_one_line(capsys):
    assert main(["shapes", CANDIDATE]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert "layer 14 (linear) gets input [2304]" in err and "12544" in err
    # Above it, the layers that fit, down to the flatten that makes the 2,304.
    table = out.splitlines()
    assert table[0].startswith("the layers that fit: input [1, 28, 28]")
    assert table[-3].split()[:3] == ["13", "Flatten", "[2304]"]
    assert table[-1].split()[:2] == ["total", "[2304]"]
    assert main(["shapes", CANDIDATE, "--json"]) == 2  # JSON, or nothing, on stdout
    assert capsys.readouterr().out == ""
    assert main(["shapes", FIXED]) == 0


def test_cli_layer_list_file(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(
        'layers = [{type = "conv", out = 4, kernel = 3}, {type = "flatten"},'
        ' {type = "linear", out = 10}]\n'
    )
    assert main(["shapes", str(good)]) == 0
    assert "[4, 26, 26]" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'layers = [{type = "maxpool", kernel = 2}, {type = "conv", out = 4, kernel = 15}]\n'
    )
    assert main(["shapes", str(bad)]) == 2
    assert "layer 1 (conv) gets input [1, 14, 14]" in capsys.readouterr().err
    huge = tmp_path / "huge.toml"  # torch's OverflowError, had it reached torch
    huge.write_text('layers = [{type = "conv", out = 4, kernel = 3, stride = 1e20}]\n')
    assert main(["shapes", str(huge)]) == 2
    assert capsys.readouterr().err == (
        "dfl: error: layers[0].stride is 1e+20: no size, stride or padding is above 2,147,483,647\n"
    )


def test_cli_a_layer_list_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    """The allocator's refusal (injected: a real one needs a machine that refuses it) is one
    line and exit 1, as for a registered model."""
    import dfl.labtools.shapes as shapes

    def refused(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 5e12")

    monkeypatch.setattr(shapes, "build_layers", refused)
    spec = tmp_path / "wide.toml"
    spec.write_text('layers = [{type = "conv", out = 400000, kernel = 3}]\n')
    assert main(["shapes", str(spec)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dfl: error: {spec} does not fit in memory")
    assert err.rstrip().endswith("make its layers smaller")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["shapes", "no_such_model"], "unknown model 'no_such_model'"),
        (["shapes", "missing.toml"], "missing.toml does not exist"),
        (["shapes", "cnn_explore", "--set", "model_args.filterz=[8]"], "model_args.filterz"),
        (
            ["shapes", "mlp", "--input", "1,32,32"],
            r"layer 1 (Linear) cannot take input [1, 32, 32]",
        ),
        (["shapes", "cnn_lab", "--input", "1,100000,100000"], "give a smaller --input"),
        (
            ["shapes", "cnn_lab", "--set", "model_args.num_classes=0"],
            "model 'cnn_lab' (num_classes=0)",
        ),
    ],
)
def test_cli_user_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
