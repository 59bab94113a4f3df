"""The scarce-label study's reading: how many epochs a label count trains, and the report's
answer to "what is the benefit of pretraining?", whose words must follow the numbers."""

from __future__ import annotations

from pathlib import Path

from dfl.experiments import sae_scarce_labels as scarce
from dfl.experiments.document import Table

LAB = scarce.Scarce((100, 1000, 10000, None), pretrain=10, finetune=20, min_steps=1000)


def test_a_few_labels_train_more_epochs_to_the_minimum_steps():
    # 100 labels: 80 train after the fifth held out, 2 batches of 64 -> 500 epochs
    assert LAB.epochs(100, 64) == 500
    assert LAB.epochs(1000, 64) == 77  # 800 train, 13 batches
    # every label: 48,000 train, 750 batches an epoch; the fine-tuning's own epochs
    assert LAB.epochs(60000, 64) == 20


def study(pretrained: list[list[float]], random: list[list[float]]) -> dict:
    images = {0: 100, 1: 1000, 2: 10000, 3: 60000}
    accuracy = {}
    for i in images:
        for seed in range(len(pretrained[i])):
            accuracy[(i, "pretrained", seed)] = pretrained[i][seed]
            accuracy[(i, "random", seed)] = random[i][seed]
    return scarce.summarise(LAB, accuracy, images)


def test_the_answer_names_the_label_counts_where_pretraining_helped():
    s = study(
        pretrained=[[0.80, 0.82], [0.93, 0.94], [0.975, 0.976], [0.985, 0.986]],
        random=[[0.70, 0.72], [0.90, 0.91], [0.974, 0.976], [0.986, 0.987]],
    )
    assert [row["labels"] for row in s["rows"]] == [100, 1000, 10000, 60000]
    assert s["rows"][3]["all"] and not s["rows"][0]["all"]
    verdicts = [v for _, _, v in scarce.verdicts(s, 10000)]
    assert verdicts == ["helped", "helped", "noise", "noise"]
    # Seeds that agree to the image: the test set's sampling noise (about 0.0018 here) decides.
    assert scarce.judge([0.9832, 0.9832], [0.9835, 0.9835], 10000)[1] == "noise"
    assert scarce.judge([0.9872, 0.9872], [0.9835, 0.9835], 10000)[1] == "helped"
    text = scarce.answer(s, 10000, 60000)
    assert "helped beyond the seeds' spread with 100, 1,000 labels" in text
    assert "Its benefit is with scarce labels" in text
    assert "100 labels: 0.8100 against 0.7100 (+0.1000)" in text
    table = scarce.table(s, 10000)
    assert isinstance(table, Table) and table.rows[3][0] == "all 60,000"
    assert table.rows[0][3] == "+0.1000" and table.rows[0][4] == "helped"


def test_the_answer_claims_a_benefit_with_scarce_labels_only_where_the_numbers_show_it():
    # helped with many labels only: no claim about scarce labels
    s = study(
        pretrained=[[0.70, 0.72], [0.90, 0.91], [0.985, 0.986], [0.99, 0.991]],
        random=[[0.80, 0.82], [0.90, 0.91], [0.975, 0.976], [0.98, 0.981]],
    )
    text = scarce.answer(s, 10000, 60000)
    assert (
        "helped beyond the seeds' spread with 10,000, all 60,000 labels and hurt with 100" in text
    )
    assert "scarce labels" not in text


def test_the_answer_says_so_when_pretraining_never_helped_or_hurt():
    same = [[0.8, 0.81], [0.9, 0.91], [0.97, 0.971], [0.98, 0.981]]
    assert "helped at no label count beyond" in scarce.answer(study(same, same), 10000, 60000)
    worse = [[v - 0.05 for v in seeds] for seeds in same]
    text = scarce.answer(study(worse, same), 10000, 60000)
    assert "helped at no label count and hurt with 100, 1,000, 10,000, all 60,000 labels" in text
    better = [[v + 0.05 for v in seeds] for seeds in same]
    assert "helped at every label count" in scarce.answer(study(better, same), 10000, 60000)


def test_a_difference_inside_one_test_image_is_noise():
    one = [[0.9], [0.9], [0.9], [0.9]]  # one seed: no spread but the test set's resolution
    nudged = [[0.90005], [0.9], [0.9], [0.9]]
    assert scarce.verdicts(study(nudged, one), 10000)[0][2] == "noise"


def test_the_figure_is_drawn(tmp_path: Path):
    s = study(
        pretrained=[[0.8, 0.82], [0.93, 0.94], [0.975, 0.976], [0.985, 0.986]],
        random=[[0.7, 0.72], [0.9, 0.91], [0.974, 0.976], [0.986, 0.987]],
    )
    fig = scarce.figure(tmp_path / "figures" / "scarce.png", s)
    assert (tmp_path / "figures" / "scarce.png").stat().st_size > 5000
    assert fig.path == str(Path("figures") / "scarce.png")
