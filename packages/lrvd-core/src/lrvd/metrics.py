"""Accuracy and calibration metrics on predictive probabilities ``[N, n_classes]``.

Definitions follow the BLoB / Laplace-LoRA / BayesLoRA evaluation code (see README):
- ECE: top-label confidence, ``n_bins`` equal-width bins, L1 (= torchmetrics' multiclass
  ``CalibrationError(norm="l1")``: bins are [lo, hi) with confidence exactly 1.0 in the last bin).
- NLL: mean of −log p_y, natural log, on the (MC-averaged) probabilities.
- Brier: mean over examples of Σ_c (p_c − 1[y = c])² (multi-class, summed over classes).
All functions return Python floats so rows serialise straight to JSON/CSV.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-12


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.as_tensor(probs, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"expected probs [N, C] and labels [N], got {tuple(probs.shape)} and {tuple(labels.shape)}")
    return probs, labels


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    probs, labels = _check(probs, labels)
    return float((probs.argmax(-1) == labels).double().mean())


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15):
    """Per-bin (count, mean confidence, accuracy) on top-label confidence; also used by the plots."""
    probs, labels = _check(probs, labels)
    conf, pred = probs.max(-1)
    correct = (pred == labels).double()
    # bin b holds conf in [b/B, (b+1)/B); conf == 1.0 goes to the last bin
    idx = torch.clamp((conf * n_bins).floor().long(), max=n_bins - 1)
    counts = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    safe = counts.clamp(min=1)
    return counts, conf_sum / safe, acc_sum / safe


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE = Σ_b (|S_b|/N)·|acc(S_b) − conf(S_b)| over equal-width top-label confidence bins."""
    counts, conf, acc = calibration_bins(probs, labels, n_bins)
    return float(((counts / counts.sum()) * (acc - conf).abs()).sum())


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    probs, labels = _check(probs, labels)
    return float(-torch.log(probs.gather(1, labels[:, None]).clamp(min=EPS)).mean())


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    probs, labels = _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return float(((probs - onehot) ** 2).sum(-1).mean())


def matthews_corrcoef(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Matthews correlation (Gorodkin 2004) of the argmax predictions; 0 when undefined."""
    probs, labels = _check(probs, labels)
    n_classes = probs.shape[1]
    pred = probs.argmax(-1)
    cm = torch.bincount(labels * n_classes + pred, minlength=n_classes**2).reshape(n_classes, n_classes).double()
    t, p = cm.sum(1), cm.sum(0)
    c, s = cm.trace(), cm.sum()
    denom = math.sqrt(float(s**2 - (p * p).sum())) * math.sqrt(float(s**2 - (t * t).sum()))
    return 0.0 if denom == 0 else float((c * s - (t * p).sum()) / denom)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """All leaderboard metrics at once."""
    return {
        "accuracy": accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        "mcc": matthews_corrcoef(probs, labels),
    }
