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
