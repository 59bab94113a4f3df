"""The report's verdicts are computed from what was measured: each sentence below is checked
both ways, with numbers that make it come out one way and then the other."""

from __future__ import annotations

from typing import Any

from dfl.experiments import ae, cnn, sae, vit


def vit_row(cfg, acc, train_acc, test_loss, train_loss, *, epochs=20, subset=None) -> dict:
    return {
        "config": list(cfg), "epochs": epochs, "subset": subset, "test_accuracy": acc,
        "test_loss": test_loss[-1], "train_accuracy": train_acc, "train_loss_curve": train_loss,
        "test_loss_curve": test_loss, "params": 1000 * cfg[0], "macs": 10000 * cfg[0],
        "seconds_per_epoch": 1.0, "lab": 0.98, "run_dir": "x",
    }  # fmt: skip


def test_vit_overfitting_and_dynamics_follow_the_curves():
    small, large = (32, 6, 8, 64), (128, 8, 8, 256)
    falling, rising = [1.0, 0.5, 0.3, 0.2], [0.5, 0.3, 0.4, 0.6]
    over = vit._discussion(
        [vit_row(small, 0.96, 0.97, rising, falling), vit_row(large, 0.97, 0.99, rising, falling)]
    )
    text = " ".join(over)
    assert "in 2 of 2 the test loss ends above its minimum" in text
    assert "the train loss fell in 2 of them" in text
    assert "The train loss fell at every epoch in 2 of 2" in text
    assert "lowest at epoch 2-2 of 20" in text

    bumpy = [1.0, 0.5, 0.6, 0.4]
    under = " ".join(
        vit._discussion(
            [vit_row(small, 0.97, 0.97, falling, bumpy), vit_row(large, 0.96, 0.96, falling, bumpy)]
        )
    )
    assert "no configuration's test loss ends more than 5% above its minimum" in under
    assert "every epoch in 0 of 2" in under and "lowest at epoch 4-4 of 20" in under
    assert "the smaller model is the better one here" in under


def test_vit_lab_profile_sentence_says_above_or_below_and_short_runs():
    row: dict[str, Any] = vit_row((64, 6, 8, 128), 0.96, 0.95, [0.2], [0.3], epochs=2)
    (text,) = vit._discussion([row])
    assert "0.0100 above its train accuracy" in text
    assert "after 2 epochs, not the lab's protocol of 20 epochs" in text
    row.update(train_accuracy=0.99, epochs=20)
    (text,) = vit._discussion([row])
    assert "0.0300 below its train accuracy" in text and "not the lab's protocol" not in text


def sae_entry(after: list[float], random: list[float]) -> dict:
    return {"label": "784-256-64, batch 64, 3/3/6, lab recipe", "before": [0.5] * len(after),
            "after": after, "random": random}  # fmt: skip


def test_sae_pretraining_verdict_is_judged_against_the_seeds_spread():
    helped = sae._gains(sae_entry([0.980, 0.982], [0.970, 0.971]), "With the lab's recipe", 10000)
    assert "pretraining helped, beyond the seeds' spread" in helped
    assert "0.9810 ± 0.0014 (n=2)" in helped and "(784-256-64, batch 64, 3/3/6" in helped
    noise = sae._gains(sae_entry([0.980, 0.990], [0.982, 0.984]), "With", 10000)
    assert "within the seeds' spread, pretraining made no measurable difference" in noise
    hurt = sae._gains(sae_entry([0.960, 0.961], [0.980, 0.981]), "With", 10000)
    assert "pretraining hurt" in hurt
    one = sae._gains(sae_entry([0.990], [0.980]), "With", 10000)
    assert "pretraining helped in this one run" in one and "(n=1)" in one
    # Seeds that agree leave the test set's sampling noise: 3 images of 10,000 are within it.
    agree = sae._gains(sae_entry([0.9832, 0.9832], [0.9835, 0.9835]), "With", 10000)
    assert "within the seeds' spread, pretraining made no measurable difference" in agree


def test_cnn_lab_draw_names_our_own_seeds_spread():
    def runs(final: list[float]) -> dict:
        return {"final": final, "peak": final, "epochs": 20}

    many = cnn._comparisons({"baseline": runs([0.97, 0.98]), "explore": runs([0.99])}, [])
    assert "our 2 seeds spread by ± 0.0071" in many["acc.baseline"].reason
    assert "seeds spread" not in many["acc.explore"].reason  # one run has no spread


def test_ae_deeper_autoencoder_says_its_epochs_and_which_way_the_ratio_goes():
    deep = {"enc": 32, "layers": "784-512-256-32", "test": [0.010, 0.012], "epochs": 5,
            "shallow_val": 0.0100, "shallow_epochs": 60}  # fmt: skip
    text = ae._deep_paragraph(deep)
    assert "at the same code size, trained for 5 epochs, reaches test MSE" in text
    assert "no lower than the validation MSE of our grid's best enc-32 model after 60" in text
    assert "(0.0100; 1.10x)" in text and "lower than the lab's best enc-32 one" in text
    deep.update(enc=16, test=[0.005])
    text = ae._deep_paragraph(deep)
    assert "lower than the validation MSE" in text and "no lower" not in text
    assert "the lab's best enc-32" not in text  # the lab has no enc-16 number


def test_sae_lab_recipe_claims_a_poor_code_only_where_the_classifier_on_it_was_poor():
    entry = {"first_layer_mse": [0.07], "train_after": [0.97], "after": [0.96]}
    poor = sae._why_lab_recipe({**entry, "before": [0.28]}, mean_image_mse=0.067)
    assert "its code carries little class information" in poor
    good = sae._why_lab_recipe({**entry, "before": [0.90]}, mean_image_mse=0.067)
    assert "class information" not in good
    fine = sae._why_lab_recipe({**entry, "before": [0.28], "first_layer_mse": [0.01]}, 0.067)
    assert "class information" not in fine


def test_vit_one_epoch_runs_claim_no_dynamics_and_an_equal_gap_is_said_so():
    rows = [vit_row((32, 6, 8, 64), 0.5, 0.6, [0.9], [1.0], epochs=1, subset=2000),
            vit_row((128, 8, 8, 256), 0.6, 0.7, [0.8], [0.9], epochs=1, subset=1000)]  # fmt: skip
    text = " ".join(vit._discussion(rows))
    assert "fell at every epoch" not in text  # one epoch has no direction
    assert "32-6-8-64, 128-8-8-256 after fewer epochs or images than its 20 epochs" in text
    (alone,) = vit._discussion([vit_row((64, 6, 8, 128), 0.97, 0.97, [0.2], [0.3])])
    assert "equal to its train accuracy" in alone and "0.0000" not in alone


def study_row(cfg, seed: int, val: float, train: float, curve: list[float]) -> dict:
    return {"config": list(cfg), "seed": seed, "epochs": len(curve), "val_accuracy": val,
            "train_accuracy": train, "val_accuracy_curve": curve, "train_loss_curve": [1.0],
            "val_loss_curve": [1.0], "params": 1000 * cfg[0], "macs": 10000 * cfg[0],
            "seconds_per_epoch": 1.0}  # fmt: skip


def size_study(large_gap: float, still_improving: bool) -> str:
    base, small, large = vit.BASE, (32, 6, 8, 64), (128, 8, 8, 256)
    late = [0.80, 0.90] if still_improving else [0.90, 0.85]
    study = [
        study_row(base, 0, 0.90, 0.90, late), study_row(base, 1, 0.91, 0.91, late),
        study_row(small, 0, 0.85, 0.85, late), study_row(large, 0, 0.92, 0.92 + large_gap, late),
    ]  # fmt: skip
    result = vit.ViTResult(rows=[], study=study, study_images=[1000, 500])
    return " ".join(vit._study_discussion(result))


def test_vit_size_study_claims_more_overfitting_only_beyond_the_seed_band():
    # The base configuration's two seeds spread by 0.01: a gap 0.05 larger is beyond it.
    assert "(128-8-8-256) fit their training images more than the smaller ones" in size_study(
        0.05, still_improving=True
    )
    within = size_study(0.005, still_improving=False)
    assert "do not fit their training images more than the smaller ones" in within
    assert "beyond the noise" in within
    assert "0 of 3 were still improving at the last epoch." in within
    assert "reorder" not in within  # nothing was improving: no claim a longer budget reorders
    assert "so a longer budget can reorder" in size_study(0.05, still_improving=True)
