"""Self-attention: NumPy and PyTorch agree over random shapes, weights rows sum to 1, masks hide
what they should, PyTorch's own attention agrees, gradients are right, the lab's bug is
reproduced, and `dfl attention` runs and rejects bad sizes in one line."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run
from dfl.errors import ConfigError
from dfl.labtools.attention_check import compare_attention, lab_bug_demo, random_problem
from dfl.models.attention import (
    MultiHeadSelfAttention,
    attention_numpy,
    attention_torch,
    lab_bug_attention,
    merge_heads,
    stable_softmax,
)


def as_torch(*arrays):
    return [torch.from_numpy(a) for a in arrays]


@st.composite
def problems(draw):
    """A random (batch?, n, d) input, weights whose widths split over `heads`, mask options."""
    heads = draw(st.integers(1, 3))
    n, d = draw(st.integers(1, 9)), draw(st.integers(1, 12))
    dq, dv = heads * draw(st.integers(1, 4)), heads * draw(st.integers(1, 4))
    lead = draw(st.sampled_from([(), (2,)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((*lead, n, d))
    w = [rng.standard_normal((d, width)) for width in (dq, dq, dv)]
    pad = draw(st.integers(0, n - 1))  # at least one real key
    pad_mask = np.arange(n) >= n - pad if pad else None
    options = {"heads": heads, "causal": draw(st.booleans()), "pad_mask": pad_mask}
    return x, w, options


@settings(max_examples=25, deadline=None)
@given(problems())
def test_numpy_equals_pytorch_and_rows_sum_to_one(problem):
    x, w, options = problem
    ours = attention_numpy(x, *w, **options)
    pad = options["pad_mask"]
    theirs = attention_torch(
        *as_torch(x, *w), **options | {"pad_mask": None if pad is None else torch.from_numpy(pad)}
    )
    for field in ("q", "k", "v", "scores", "weights", "output"):
        np.testing.assert_allclose(
            getattr(theirs, field).numpy(), getattr(ours, field), rtol=1e-10, atol=1e-10
        )
    n, heads = x.shape[-2], options["heads"]
    assert ours.weights.shape == (*x.shape[:-2], heads, n, n)
    assert ours.output.shape == (*x.shape[:-1], w[2].shape[1])
    np.testing.assert_allclose(ours.weights.sum(-1), 1.0, atol=1e-12)
    if options["causal"]:
        assert (np.triu(ours.weights, k=1) == 0).all()  # no query sees a later key
    if pad is not None:
        assert (ours.weights[..., pad] == 0).all()  # no query sees a padding key


def test_softmax_is_stable_for_huge_scores():
    scores = np.array([[1000.0, 1000.0, -1000.0], [1e308, 0.0, 0.0]])
    weights = stable_softmax(scores)
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights, [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    # A row with every key masked gets zero weights, not 0/0.
    masked = stable_softmax(np.zeros((1, 2)), keep=np.array([[False, False]]))
    assert (masked == 0).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [1, 4])
def test_pytorch_path_equals_scaled_dot_product_attention(causal, heads):
    x, w_q, w_k, w_v = as_torch(*random_problem(n=7, d=12, dq=8, dv=8, seed=3))
    ours = attention_torch(x, w_q, w_k, w_v, heads=heads, causal=causal)
    reference = F.scaled_dot_product_attention(ours.q, ours.k, ours.v, is_causal=causal)
    torch.testing.assert_close(ours.output, merge_heads(reference))
    # A padding mask: SDPA's boolean mask is True where a key takes part.
    pad = torch.tensor([False] * 5 + [True] * 2)
    ours = attention_torch(x, w_q, w_k, w_v, heads=heads, pad_mask=pad)
    reference = F.scaled_dot_product_attention(ours.q, ours.k, ours.v, attn_mask=~pad)
    torch.testing.assert_close(ours.output, merge_heads(reference))


def test_module_equals_scaled_dot_product_attention_with_its_scale():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, heads=4, scale=16**-0.5)  # the lab's dim^-0.5 scale
    x = torch.randn(3, 5, 16)
    steps = attn.attend(x)
    assert steps.q.shape == (3, 4, 5, 4) and steps.weights.shape == (3, 4, 5, 5)
    reference = F.scaled_dot_product_attention(steps.q, steps.k, steps.v, scale=16**-0.5)
    torch.testing.assert_close(steps.output, attn.to_out(merge_heads(reference)))
    torch.testing.assert_close(attn(x), steps.output)


def test_module_rejects_heads_that_do_not_divide_dim():
    with pytest.raises(ConfigError, match="dim = 10 is not divisible by heads = 3"):
        MultiHeadSelfAttention(10, heads=3)


@pytest.mark.parametrize("options", [{"heads": 2}, {"heads": 1, "causal": True}])
def test_gradcheck_of_the_pytorch_path(options):
    x, w_q, w_k, w_v = as_torch(*random_problem(n=4, d=3, dq=4, dv=2, seed=1))
    inputs = [t.clone().requires_grad_() for t in (x, w_q, w_k, w_v)]

    def output(*tensors):
        return attention_torch(*tensors, **options).output

    assert torch.autograd.gradcheck(output, inputs)


def test_lab_bug_gives_identical_rows_and_the_fix_does_not():
    problem = random_problem(n=32, d=256, dq=64, dv=32, seed=0)
    x, _, _, w_v = problem
    bug = lab_bug_attention(*problem)
    assert (bug.scores == -100).all()  # the reversed clip
    assert np.ptp(bug.output, axis=0).max() == 0  # every output row the same...
    np.testing.assert_allclose(bug.output[0], (x @ w_v).mean(0))  # ...the mean of V
    correct = attention_numpy(*problem)
    assert np.ptp(correct.output, axis=0).max() > 0.1
    # With the clip fixed, the wrong-axis division shows: rows stop summing to 1.
    wrong_axis = lab_bug_attention(*problem, fix_clip=True)
    assert np.abs(wrong_axis.weights.sum(-1) - 1).max() > 0.1

    demo = lab_bug_demo()
    assert demo["notebook"]["identical_rows"] and demo["notebook"]["output_row_spread"] == 0
    assert not demo["correct"]["identical_rows"]


def test_compare_attention_reports_agreement_and_shapes():
    result = compare_attention(n=6, d=8, dq=4, dv=6, heads=2, causal=True, dtype="float64")
    assert result["agree"] and result["max_abs_diff"] < 1e-12
    assert result["rows_sum_to_one"] and result["causal_future_weight"] == 0
    shapes = {row["name"]: row["shape"] for row in result["tensors"]}
    assert shapes == {
        "X": [6, 8],
        "W_q": [8, 4],
        "W_k": [8, 4],
        "W_v": [8, 6],
        "Q": [2, 6, 2],
        "K": [2, 6, 2],
        "V": [2, 6, 3],
        "scores": [2, 6, 6],
        "weights": [2, 6, 6],
        "output": [6, 6],
    }


def test_cli_prints_the_table_and_the_lab_bug(capsys):
    code, out, _ = run(capsys, "attention", "--n", "8", "--d", "16", "--heads", "2", "--lab-bug")
    assert code == 0
    assert "[h, n, d_k]" in out and "[n, d_k] = [8, 32]" in out
    assert "agree" in out and "weights rows sum to 1: yes" in out
    assert "all output rows identical" in out and "reversed" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--heads", "3"], "--dq 64 is not divisible by --heads 3"),
        (["--heads", "4", "--dv", "6"], "--dv 6 is not divisible by --heads 4"),
        (["--n", "0"], "argument --n: must be at least 1"),
        (["--pad", "32"], "--pad must be in 0..31"),
        (["--seed", "-1"], "argument --seed: must be at least 0"),
        (["--n", "20000"], "(the scores, --heads x --n x --n)"),  # 400M: refused before made
        (["--d", "1000000"], "(the weights, --d x max(--dq, --dv))"),  # the flag that is large
    ],
)
def test_cli_bad_sizes_exit_2_in_one_line(capsys, flags, message):
    code, _, err = run(capsys, "attention", *flags)
    assert code == 2
    assert message in err and err.count("\n") == 1
