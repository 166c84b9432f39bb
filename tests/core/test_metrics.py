"""Metrics against hand-computed values and against torchmetrics (the papers' reference)."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from lrvd import metrics

PROBS = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.25, 0.75], [0.15, 0.85]])  # no confidence on a bin edge
LABELS = torch.tensor([0, 1, 1, 0])


def test_accuracy_hand_computed():
    assert metrics.accuracy(PROBS, LABELS) == pytest.approx(0.5)


def test_ece_two_bins_hand_computed():
    # confidences 0.95, 0.65, 0.75, 0.85 ; correct 1, 0, 1, 0
    # 2 bins: [0,0.5) empty; [0.5,1]: all four, acc 0.5, conf 3.2/4 -> ECE 0.3
    assert metrics.expected_calibration_error(PROBS, LABELS, n_bins=2) == pytest.approx(0.3)
    # 10 bins: each example alone: |1-.95|+|0-.65|+|1-.75|+|0-.85| = 1.8 / 4
    assert metrics.expected_calibration_error(PROBS, LABELS, n_bins=10) == pytest.approx(0.45)


def test_nll_and_brier_hand_computed():
    expected_nll = -(math.log(0.95) + math.log(0.35) + math.log(0.75) + math.log(0.15)) / 4
    assert metrics.negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected_nll)
    expected_brier = (2 * 0.05**2 + 2 * 0.65**2 + 2 * 0.25**2 + 2 * 0.85**2) / 4
    assert metrics.brier_score(PROBS, LABELS) == pytest.approx(expected_brier)


def test_mcc_hand_computed():
    # binary: TP=1 (idx2), TN=1 (idx0), FP=1 (idx3: pred1 label0), FN=1 (idx1) -> MCC 0
    assert metrics.matthews_corrcoef(PROBS, LABELS) == pytest.approx(0.0)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 1, 1, 1])
    # TP=3 TN=1 FP=0 FN=1: (3*1-0*1)/sqrt(3*4*1*2)
    assert metrics.matthews_corrcoef(probs, labels) == pytest.approx(3 / math.sqrt(24))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(500, 5, generator=g) * 2, -1)
    labels = torch.randint(0, 5, (500,), generator=g)
    ref = MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")(probs, labels)
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(float(ref), abs=1e-6)


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="expected probs"):
        metrics.accuracy(torch.ones(3, 2), torch.ones(4, dtype=torch.long))


# -- written against surviving mutants (docs/testing.md) -------------------------------------------
P3 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
L3 = torch.tensor([0, 2, 1, 1])  # argmax 0, 2, 0, 1: three of four right; class 2 predicted once


def test_accuracy_and_per_example_correct_on_an_asymmetric_case():
    torch.testing.assert_close(
        metrics.per_example_correct(P3, L3), torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    )
    assert metrics.accuracy(P3, L3) == pytest.approx(0.75)


def test_inputs_are_cast_to_float64_and_int64():
    """float32 probabilities are scored in float64 (exactly as their float64 copy), int32 labels work."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 3, generator=g) * 3, -1).float()
    labels = torch.randint(0, 3, (64,), generator=g)
    for fn in (metrics.expected_calibration_error, metrics.negative_log_likelihood, metrics.brier_score):
        assert fn(probs, labels.int()) == fn(probs.double(), labels)


def test_labels_must_be_one_dimensional():
    with pytest.raises(ValueError, match="expected probs"):
        metrics.accuracy(P3, L3[:, None])


def test_calibration_bins_by_hand_with_a_confidence_of_one():
    probs = torch.tensor([[1.0, 0.0], [0.55, 0.45], [0.6, 0.4], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 0, 1])  # confidences 1.0 (bin 3 of 4), 0.55, 0.6 (bin 2), 0.9 (bin 3)
    counts, conf, acc = metrics.calibration_bins(probs, labels, n_bins=4)
    torch.testing.assert_close(counts, torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(conf, torch.tensor([0.0, 0.0, 0.575, 0.95], dtype=torch.float64))
    torch.testing.assert_close(acc, torch.tensor([0.0, 0.0, 0.5, 1.0], dtype=torch.float64))
    # ECE = (2/4)·|0.5 − 0.575| + (2/4)·|1 − 0.95| = 0.0625
    assert metrics.expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.0625)


def test_ece_with_more_bins_than_the_default():
    probs = torch.tensor([[0.97, 0.03], [0.52, 0.48]])
    labels = torch.tensor([0, 1])  # 20 bins: 0.97 -> bin 19, 0.52 -> bin 10
    assert metrics.expected_calibration_error(probs, labels, n_bins=20) == pytest.approx((0.03 + 0.52) / 2)


def test_ece_from_gaps_scores_each_row_of_a_batch():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(30, 4, generator=g) * 2, -1)
    labels = torch.randint(0, 4, (30,), generator=g)
    idx, gap = metrics.calibration_gaps(probs, labels, n_bins=15)
    rows = torch.stack([torch.randint(0, 30, (30,), generator=g) for _ in range(6)]).reshape(2, 3, 30)
    batched = metrics.ece_from_gaps(idx[rows], gap[rows], 15)
    assert batched.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            r = rows[i, j]
            assert float(batched[i, j]) == pytest.approx(metrics.expected_calibration_error(probs[r], labels[r]))


def test_brier_when_the_labels_miss_the_last_class():
    # labels only 0 and 1 of three classes: the one-hot still has three columns
    assert metrics.brier_score(P3[:1], L3[:1]) == pytest.approx(0.3**2 + 0.2**2 + 0.1**2)
    torch.testing.assert_close(
        metrics.per_example_brier(P3[2:], torch.tensor([0, 0])),
        torch.tensor([0.25 + 0.16 + 0.01, 0.64 + 0.25 + 0.09], dtype=torch.float64),
    )


def test_classification_metrics_is_each_metric_with_its_bins():
    got = metrics.classification_metrics(PROBS, LABELS, n_bins=2)
    assert got == {
        "accuracy": pytest.approx(0.5),
        "ece": pytest.approx(0.3),
        "nll": pytest.approx(metrics.negative_log_likelihood(PROBS, LABELS)),
        "brier": pytest.approx(metrics.brier_score(PROBS, LABELS)),
        "mcc": pytest.approx(0.0),
    }
    assert metrics.classification_metrics(PROBS, LABELS)["ece"] == pytest.approx(
        metrics.expected_calibration_error(PROBS, LABELS, 15)
    )


def test_calibration_bins_with_an_empty_last_bin_and_a_single_example_bin():
    probs = torch.tensor([[0.3, 0.3, 0.4], [0.6, 0.2, 0.2], [0.65, 0.25, 0.1]])
    labels = torch.tensor([2, 1, 0])  # confidences 0.4 (bin 1 of 4, alone), 0.6, 0.65 (bin 2); bin 3 empty
    counts, conf, acc = metrics.calibration_bins(probs, labels, n_bins=4)
    torch.testing.assert_close(counts, torch.tensor([0.0, 1.0, 2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(conf, torch.tensor([0.0, 0.4, 0.625, 0.0], dtype=torch.float64))
    torch.testing.assert_close(acc, torch.tensor([0.0, 1.0, 0.5, 0.0], dtype=torch.float64))


def test_mcc_three_classes_and_the_undefined_case():
    # predictions 0, 1, 0, 1 for labels 0, 1, 1, 0 of three classes (class 2 never occurs)
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1]])
    labels = torch.tensor([0, 1, 1, 0])
    # Gorodkin: c = 2, s = 4, t = p = (2, 2, 0): (2·4 − 8) / (√(16 − 8)·√(16 − 8)) = 0
    assert metrics.matthews_corrcoef(probs, labels) == pytest.approx(0.0)
    labels = torch.tensor([0, 1, 1, 1])  # c = 3, t = (1, 3, 0), p = (2, 2, 0): (12 − 8) / (√8·√6)
    assert metrics.matthews_corrcoef(probs, labels) == pytest.approx(4 / math.sqrt(48))
    constant = torch.tensor([[0.9, 0.05, 0.05]] * 4)  # one predicted class: MCC undefined -> 0
    assert metrics.matthews_corrcoef(constant, labels) == 0.0


def test_every_bin_count_defaults_to_15():
    probs = torch.tensor([[0.97, 0.03], [0.52, 0.48], [0.7, 0.3]])
    labels = torch.tensor([0, 1, 1])  # 15 bins: 0.97 -> 14, 0.52 -> 7, 0.7 -> 10 (16 bins: 15, 8, 11)
    assert len(metrics.calibration_bins(probs, labels)[0]) == 15
    idx, gap = metrics.calibration_gaps(probs, labels)
    assert idx.tolist() == [14, 7, 10]
    # three singleton bins: ECE = (0.03 + 0.52 + 0.7) / 3 (ece_from_gaps' own default only sizes the
    # per-row slots: any n_bins above the largest index gives the same sums, an equivalent mutant)
    rows = torch.stack([idx, torch.tensor([0, 0, 0])])
    gaps = torch.stack([gap, torch.tensor([0.5, -0.5, 0.25])])
    torch.testing.assert_close(
        metrics.ece_from_gaps(rows, gaps), torch.tensor([1.25 / 3, 0.25 / 3], dtype=torch.float64)
    )
    # 0.55 and 0.58 share bin 8 of 15 (ECE |1 − 1.13| / 2) but not of 16 (ECE (0.45 + 0.58) / 2)
    pair, pair_labels = torch.tensor([[0.55, 0.45], [0.58, 0.42]]), torch.tensor([0, 1])
    assert metrics.classification_metrics(pair, pair_labels)["ece"] == pytest.approx(0.065)
