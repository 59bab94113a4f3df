"""Every registered model builds from its defaults, runs a batch and gives finite outputs of
the right shape; the declarative layers find shape mistakes before training."""

import pytest
import torch

from dfl import models
from dfl.errors import ConfigError, ShapeError
from dfl.models.cnn import explore_layers, lab_baseline_layers
from dfl.models.layers import build_layers, conv_output_size


@pytest.mark.parametrize("name", models.names())
def test_every_model_builds_and_runs(name):
    entry = models.get(name)
    model = models.create(name)
    x = torch.rand(4, 1, 28, 28)
    out = model(x)
    if entry.objective == "classification":
        assert out.shape == (4, 10)
    else:
        assert out.shape == x.shape
    assert torch.isfinite(out).all()
    out.float().sum().backward()  # every model trains: gradients reach the parameters
    assert any(p.grad is not None for p in model.parameters())


def test_the_deeper_autoencoders_linear_code_keeps_negative_units():
    """With a ReLU code a unit negative for an image carries nothing; the linear code keeps it.
    The two models differ in that alone, and both fuse (their layers stack)."""
    torch.manual_seed(0)
    relu, linear = (models.create("autoencoder_deep", linear_code=c) for c in (False, True))
    linear.load_state_dict(relu.state_dict())  # the same parameters: the layers line up
    x = torch.rand(64, 1, 28, 28)
    code_relu, code_linear = relu.encode(x), linear.encode(x)
    assert (code_relu >= 0).all() and (code_linear < 0).any()
    torch.testing.assert_close(code_relu, code_linear.clamp(min=0))
    assert relu.stackable and linear.stackable


def test_unknown_model_and_bad_argument_are_named():
    with pytest.raises(ConfigError, match=r"unknown model 'cnn_lb' \(did you mean 'cnn_lab'\? "):
        models.create("cnn_lb")
    with pytest.raises(ConfigError, match=r"unknown model 'zzz' \(known: autoencoder, "):
        models.create("zzz")
    with pytest.raises(ConfigError, match=r"model_args\.encc"):
        models.create("autoencoder", encc=3)
    with pytest.raises(ConfigError, match=r"model_args\.enc"):
        models.create("autoencoder", enc="big")


def test_conv_output_size_matches_the_lab():
    assert conv_output_size(4, 2, stride=2) == 2
    assert conv_output_size(28, 3, 2, 1) == 14
    assert conv_output_size(28, 3, 1, 2, dilation=2) == 28


def test_lab_baseline_shapes():
    _, shapes = build_layers(lab_baseline_layers())
    convs = [s for s in shapes if len(s) == 3]
    assert [s[1] for s in convs[::3]] == [14, 7, 4, 2]
    assert shapes[-1] == (10,)


def test_linear_in_features_mismatch_names_the_layer():
    # The write-up's 5-layer candidate: 3 poolings give 3x3, but its head expects C*7*7.
    layers = explore_layers(
        [16, 32, 64, 128, 256],
        [3, 5, 3, 3, 3],
        False,
        "leaky_relu",
        [1, 3, 5],
        10,
        head_in=256 * 7 * 7,
    )
    with pytest.raises(ShapeError, match=r"layer \d+ \(linear\) gets input \[2304\]"):
        build_layers(layers)
    # Inferring the in-features fixes it.
    layers[-3]["in_features"] = None
    _, shapes = build_layers(layers)
    assert shapes[-1] == (10,)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            [{"type": "conv", "out": 4, "kernel": 30}],
            r"layer 0 \(conv\).*30x30 kernel.*does not fit",
        ),
        ([{"type": "maxpool", "kernel": 2}] * 5, r"layer 4 \(maxpool\).*empties the map"),
        ([{"type": "linear", "out": 3}], r"layer 0 \(linear\).*flatten"),
        ([{"type": "flatten"}, {"type": "conv", "out": 3}], r"layer 1 \(conv\).*\[C, H, W\]"),
    ],
)
def test_shape_errors(layers, message):
    with pytest.raises(ShapeError, match=message):
        build_layers(layers)


def test_bad_layer_spec_is_a_config_error():
    with pytest.raises(ConfigError, match=r"layers\.0"):
        build_layers([{"type": "conv"}])  # no `out`
    # a string for the list: one error, not one per letter
    with pytest.raises(
        ConfigError, match=r"layers must be a list of tables.*\(got the str 'conv'\)"
    ):
        build_layers("conv")


def test_cnn_search_defaults_are_the_lab_exploration_model():
    search, explore = models.create("cnn_search"), models.create("cnn_explore")
    assert [tuple(p.shape) for p in search.parameters()] == [
        tuple(p.shape) for p in explore.parameters()
    ]


@pytest.mark.parametrize("pool", ["every_second", "first_two", "last_two"])
@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_cnn_search_every_depth_and_pooling_fits_28x28(depth, pool):
    model = models.create("cnn_search", depth=depth, pool=pool, growth="double", kernel=5)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [min(16 * 2**i, 256) for i in range(depth)]


def test_cnn_search_dropout_regularises_the_head_only_in_training():
    plain = models.create("cnn_search")
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    model = models.create("cnn_search", dropout=0.5)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert [d.p for d in drops] == [0.5, 0.5]  # before each of the head's two linears
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))  # no dropout at evaluation
    model.train()
    assert not torch.equal(model(x), model(x))
    with pytest.raises(ConfigError, match="dropout"):
        models.create("cnn_search", dropout=1.0)


def test_cnn_final_stage_takes_the_accuracy_cost_front_near_the_best():
    from dfl.experiments.cnn import _front

    def point(key, val, macs):
        return {"key": key, "val_accuracy": val, "macs": macs}

    points = [
        point("best", 0.9908, 6_000_000),
        point("cheaper, nearly as good", 0.9906, 5_700_000),
        point("dearer and worse", 0.9907, 135_000_000),  # dominated by "best"
        point("cheapest, too far below", 0.9890, 1_600_000),  # on the front, not near the best
        point("same cost, worse", 0.9901, 6_000_000),  # dominated
    ]
    assert [q["key"] for q in _front(points)] == ["best", "cheaper, nearly as good"]
    assert [q["key"] for q in _front(points[:1])] == ["best"]


@pytest.mark.parametrize("shape", [(5, 7, 12), (9, 12), (2, 3, 4, 12), (12,), (0, 7, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_token_linear_is_nn_linear_through_onednn(shape, bias, monkeypatch):
    """Same outputs and gradients as nn.Linear (to rounding), for any leading dimensions and
    for an input that is not contiguous; the same state dict and multiply-add count. The
    detour is taken here whatever this machine's CPU (`dfl.runtime.cpu_swaps` puts it in a
    model only on AMD CPUs)."""
    from dfl.labtools.shapes import model_summary
    from dfl.runtime.onednn import TokenLinear

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # oneDNN's side of PyTorch's rule
    torch.manual_seed(0)
    ours, theirs = TokenLinear(12, 6, bias=bias), torch.nn.Linear(12, 6, bias=bias)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*shape[:-1], 2 * shape[-1])[..., ::2]  # every other feature: strided
    assert not x.is_contiguous() or x.numel() == 0
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert ya.shape == yb.shape == (*shape[:-1], 6)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ya)
    (ya * weights).sum().backward()
    (yb * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    assert model_summary(ours, (7, 12)).macs == model_summary(theirs, (7, 12)).macs == 7 * 12 * 6


def test_token_linear_follows_bf16_autocast_like_nn_linear(monkeypatch):
    from dfl.runtime.onednn import TokenLinear

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the detour, not nn.Linear's path
    x = torch.randn(4, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert TokenLinear(8, 3)(x).dtype == torch.nn.Linear(8, 3)(x).dtype == torch.bfloat16


def test_a_vit_with_its_token_wise_layers_swapped_compiles_in_one_graph(monkeypatch):
    """`compile = true` on an AMD CPU: the swapped layers trace as nn.Linear, with no graph
    break (there was one at every layer, each recompiling TokenLinear.forward until dynamo
    gave up on it and ran it eagerly)."""
    from dfl.runtime import onednn

    monkeypatch.setattr(onednn, "_amd_cpu", lambda: True)
    model = models.create("vit_lab", depth=2)
    assert onednn.cpu_swaps(model, "cpu") > 0
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(2, 1, 28, 28))
    assert explained.graph_break_count == 0, explained.break_reasons
