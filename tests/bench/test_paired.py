"""Paired differences from the reference method: hand-computed bootstrap cases and the leaderboard's columns.

The seed-level statistics (two-level bootstrap, Holm, probability of improvement, simulated tables)
are in test_seed_bootstrap.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lrvd.errors import LRVDError
from lrvd.metrics import expected_calibration_error
from lrvd_bench import cli
from lrvd_bench.config import load_config
from lrvd_bench.leaderboard import gather_rows, to_markdown, write_leaderboard
from lrvd_bench.paired import resample_questions, score_trial
from lrvd_bench.paired_table import pair, two_levels
from lrvd_bench.plots import make_figures

LABELS = np.array([0, 0, 1, 1])
#: reference: right, wrong, right, wrong (acc 0.5); confidences kept off the 15-bin edges
REF = np.array([[0.9, 0.1], [0.35, 0.65], [0.25, 0.75], [0.65, 0.35]])
#: method: right, right, right, wrong (acc 0.75)
METHOD = np.array([[0.85, 0.15], [0.75, 0.25], [0.15, 0.85], [0.65, 0.35]])
RESAMPLES = np.array([[0, 1, 2, 3], [1, 1, 1, 1], [0, 0, 2, 3], [0, 2, 3, 3]])


def test_paired_bootstrap_matches_a_hand_computed_case():
    ref, own = score_trial(REF, LABELS, RESAMPLES), score_trial(METHOD, LABELS, RESAMPLES)
    # per-question accuracy differences d = [0, 1, 0, 0]; on the four resamples: 1/4, 1, 0, 0
    np.testing.assert_allclose(own.resampled["accuracy"] - ref.resampled["accuracy"], [0.25, 1.0, 0.0, 0.0])
    # ECE (15 bins): reference (2·0.65 + 0.25 + 0.1)/4 = 0.4125, method (|2 − 1.7| + 0.25 + 0.65)/4 = 0.3;
    # on resample [1, 1, 1, 1] only question 1: reference |0 − 0.65|, method |1 − 0.75|
    assert ref.point["ece"] == pytest.approx(0.4125) and own.point["ece"] == pytest.approx(0.3)
    assert (ref.resampled["ece"][1], own.resampled["ece"][1]) == pytest.approx((0.65, 0.25))
    for probs, scores in ((REF, ref), (METHOD, own)):  # every resample as the leaderboard's ECE would score it
        expected = [
            expected_calibration_error(torch.tensor(probs[row]), torch.tensor(LABELS[row])) for row in RESAMPLES
        ]
        np.testing.assert_allclose(scores.resampled["ece"], expected, rtol=0, atol=1e-12)
    nll_ref = -np.log([0.9, 0.35, 0.75, 0.35])
    nll_own = -np.log([0.85, 0.75, 0.85, 0.35])
    d = nll_own - nll_ref
    # seed 1: the method predicts exactly what the reference does, so every Δ there is 0 and the
    # paired mean halves seed 0's; seed 2 has no reference trial and is left out
    pairing, seeds, m, r = pair({0: own, 1: ref, 2: own}, {0: ref, 1: ref})
    assert (pairing, seeds) == ("per seed", [0, 1])
    levels = two_levels(m, r)
    acc = levels["accuracy"]
    # question-only Δ* = [1/8, 1/2, 0, 0]; sorted [0, 0, 1/8, 1/2]:
    # linear quantiles at 0.25 → 0, at 0.75 → 1/8 + 1/4·3/8
    assert (acc.delta, *acc.question_interval(0.5), acc.n_seeds) == pytest.approx((0.125, 0.0, 0.125 + 0.375 / 4, 2))
    np.testing.assert_allclose(acc.per_seed, [0.25, 0.0])
    nll = levels["nll"]
    boot = np.array([d.mean(), d[1], d[[0, 0, 2, 3]].mean(), d[[0, 2, 3, 3]].mean()]) / 2
    assert nll.delta == pytest.approx(d.mean() / 2)
    assert nll.question_interval(0.5) == pytest.approx(tuple(np.quantile(boot, [0.25, 0.75])))
    assert levels["ece"].delta == pytest.approx((0.3 - 0.4125) / 2)
    brier_ref = [0.02, 2 * 0.65**2, 2 * 0.25**2, 2 * 0.65**2]
    brier_own = [2 * 0.15**2, 2 * 0.25**2, 2 * 0.15**2, 2 * 0.65**2]
    assert levels["brier"].delta == pytest.approx((np.mean(brier_own) - np.mean(brier_ref)) / 2)


def test_paired_deltas_refuse_unpaired_trials():
    own = score_trial(METHOD, LABELS, RESAMPLES)
    with pytest.raises(ValueError, match="no seed in common"):
        pair({0: own}, {1: own})
    other = score_trial(METHOD, LABELS[::-1].copy(), RESAMPLES)
    with pytest.raises(ValueError, match="seed 0: the evaluation questions differ"):
        pair({0: own}, {0: other})
    assert resample_questions(5, 3, seed=1).shape == (3, 5)
    np.testing.assert_array_equal(resample_questions(5, 3, seed=1), resample_questions(5, 3, seed=1))


# -- the leaderboard ---------------------------------------------------------------------------------
N = 200


def write_trial(run, method, seed, correct, confidence):
    """A finished trial whose predictions are right on the questions in ``correct`` (2 classes)."""
    labels = np.arange(N) % 2
    pred = np.where(correct, labels, 1 - labels)
    probs = np.full((N, 2), 1 - confidence)
    probs[np.arange(N), pred] = confidence
    trial_id = f"{method}-arc-e-s{seed}"
    folder = run / "trials" / trial_id
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "predictions.npz", probs=probs, labels=labels)
    from lrvd.metrics import classification_metrics

    metrics = classification_metrics(torch.from_numpy(probs), torch.from_numpy(labels))
    row = {
        "trial_id": trial_id,
        "method": method,
        "task": "arc-e",
        "model": "minilm",
        "seed": seed,
        "status": "ok",
        "learned": True,
        "n_train": 360,
        "n_val": 40,
        "n_eval": N,
        **metrics,
    }
    (folder / "result.json").write_text(json.dumps(row))


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        base = rng.random(N) < 0.5  # the reference: right on about half
        better = base | (rng.random(N) < 0.4)  # right wherever the reference is, and on more
        write_trial(tmp_path, "lora", seed, base, 0.7)
        write_trial(tmp_path, "bayeslora", seed, better, 0.7)
        write_trial(tmp_path, "mc-dropout-lora", seed, base, 0.7)  # the reference's predictions exactly
    return tmp_path


def test_leaderboard_has_paired_columns_markers_and_forest_plot(run):
    board = write_leaderboard(gather_rows(run), run)
    csv = pd.read_csv(run / "leaderboard.csv").set_index("method")
    for metric in ("accuracy", "ece", "nll", "brier"):
        for suffix in ("", "_lo", "_hi", "_questions_lo", "_questions_hi", "_p_holm", "_per_seed"):
            assert f"delta_{metric}{suffix}" in csv.columns
        assert {f"poi_{metric}", f"poi_{metric}_lo", f"poi_{metric}_hi"} <= set(csv.columns)
    assert set(csv["reference"]) == {"lora"}
    assert math.isnan(csv.loc["lora", "delta_accuracy"])
    bayes = csv.loc["bayeslora"]
    # the paired Δ is the difference of the two leaderboard means over the paired seeds
    assert bayes["delta_accuracy"] == pytest.approx(bayes["accuracy_mean"] - csv.loc["lora", "accuracy_mean"])
    assert bayes["delta_ece"] == pytest.approx(bayes["ece_mean"] - csv.loc["lora", "ece_mean"])
    assert 0 < bayes["delta_accuracy_lo"] < bayes["delta_accuracy"] < bayes["delta_accuracy_hi"]
    # the seed-aware interval contains the question-only one's spread and more: it also varies the seeds
    assert bayes["delta_accuracy_hi"] - bayes["delta_accuracy_lo"] > (
        bayes["delta_accuracy_questions_hi"] - bayes["delta_accuracy_questions_lo"]
    )
    assert bayes["delta_n_seeds"] == 3 and bayes["delta_accuracy_better_seeds"] == 3
    assert bayes["poi_accuracy"] == 1.0 and bayes["delta_family"] == 8  # 2 compared rows × 4 metrics
    assert bayes["delta_accuracy_significant"] and bayes["delta_accuracy_mc_se"] < 0.001
    same = csv.loc["mc-dropout-lora"]
    assert (same["delta_accuracy"], same["delta_accuracy_lo"], same["delta_accuracy_hi"]) == (0, 0, 0)
    assert same["poi_accuracy"] == 0.5 and not same["delta_accuracy_significant"]

    md = (run / "leaderboard.md").read_text()
    assert "| acc | acc SE |" in md
    se = math.sqrt(bayes["accuracy_mean"] * (1 - bayes["accuracy_mean"]) / N)
    assert f"| {se:.3f} |" in md.split("\n")[2 + list(board["method"]).index("bayeslora")]
    seed_aware = md.split("Paired differences from lora")[1].split("Family:")[0]
    lines = {line.split(" | ")[1]: line for line in seed_aware.splitlines() if line.startswith("| arc-e | ")}
    assert set(lines) == {"bayeslora", "mc-dropout-lora"}
    delta = (
        f"{bayes['delta_accuracy']:+.3f} [{bayes['delta_accuracy_lo']:+.3f}, {bayes['delta_accuracy_hi']:+.3f}] * (3/3)"
    )
    assert delta in lines["bayeslora"]
    assert "+0.000 [+0.000, +0.000] (0/3) |" in lines["mc-dropout-lora"] and "*" not in lines["mc-dropout-lora"]
    assert "the 8 seed-aware tests of this table" in md and "Holm-corrected" in md
    assert "Question-only intervals (conditional on these seeds" in md
    # how many rows each stage used, from the trials' n_train / n_val / n_eval
    assert tuple(csv.loc["bayeslora", ["n_train", "n_val", "n_eval"]]) == (360, 40, N)
    assert f"Rows per stage, arc-e: 360 training / 40 validation / {N} evaluation." in md

    paths = make_figures(run, gather_rows(run))
    assert run / "figures" / "paired_differences_arc-e.png" in paths


def test_ensemble_is_compared_with_the_reference_seed_mean(tmp_path):
    """One ensemble trial (seed 0) against three LoRA seeds: Δ = ensemble − mean of LoRA, not − LoRA seed 0."""
    rng = np.random.default_rng(3)
    accs = []
    for seed, p in ((0, 0.55), (1, 0.45), (2, 0.5)):
        correct = rng.random(N) < p
        accs.append(correct.mean())
        write_trial(tmp_path, "lora", seed, correct, 0.6)
    ensemble = rng.random(N) < 0.55
    write_trial(tmp_path, "lora-ensemble", 0, ensemble, 0.6)
    csv = write_leaderboard(gather_rows(tmp_path), tmp_path).set_index("method")
    row = csv.loc["lora-ensemble"]
    assert row["delta_pairing"] == "reference seed mean" and row["delta_n_seeds"] == 3
    assert row["delta_accuracy"] == pytest.approx(ensemble.mean() - np.mean(accs))
    assert row["delta_accuracy"] != pytest.approx(ensemble.mean() - accs[0])  # not LoRA seed 0 alone
    per_seed = [float(v) for v in row["delta_accuracy_per_seed"].split(";")]
    np.testing.assert_allclose(per_seed, [ensemble.mean() - a for a in accs], atol=1e-4)
    assert row["delta_accuracy_better_seeds"] == sum(ensemble.mean() > a for a in accs)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "lora-ensemble has one trial: it is compared with lora's seed mean over 3 seeds" in md


def test_reference_is_configurable_and_checked(run, capsys):
    board = write_leaderboard(gather_rows(run), run, reference="bayeslora")
    lora = board.set_index("method").loc["lora"]
    assert lora["reference"] == "bayeslora" and lora["delta_accuracy_hi"] < 0
    (run / "config.yaml").write_text("reference: mc-dropout-lora\n")
    board = write_leaderboard(gather_rows(run), run)
    assert set(board["reference"]) == {"mc-dropout-lora"}
    with pytest.raises(LRVDError, match="unknown reference method 'lorra'; valid choices: .*lora"):
        load_config(None, {"methods": "lora", "reference": "lorra"})
    assert cli.main(["leaderboard", str(run), "--reference", "lorra"]) == 2
    assert "unknown reference method 'lorra'" in capsys.readouterr().err
    assert "Paired differences" not in to_markdown(board.assign(delta_accuracy=math.nan))
