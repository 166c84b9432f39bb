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


def per_example_correct(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where the argmax is the label, else 0.0 ``[N]``; accuracy is its mean."""
    probs, labels = _check(probs, labels)
    return (probs.argmax(-1) == labels).double()


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(per_example_correct(probs, labels).mean())


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


def calibration_gaps(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: its confidence bin (as :func:`calibration_bins`) and ``correct − confidence`` ``[N]``.

    ECE is a function of these two vectors alone (:func:`ece_from_gaps`), so a bootstrap can index
    them with many resamples at once instead of re-binning every resample.
    """
    probs, labels = _check(probs, labels)
    conf, pred = probs.max(-1)
    idx = torch.clamp((conf * n_bins).floor().long(), max=n_bins - 1)
    return idx, (pred == labels).double() - conf


def ece_from_gaps(bin_index: torch.Tensor, gap: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """ECE of each row of ``[..., N]`` bin indices and gaps: Σ_b |Σ_{i∈b} gap_i| / N (shape ``[...]``)."""
    rows = bin_index.reshape(-1, bin_index.shape[-1])
    offset = n_bins * torch.arange(rows.shape[0], device=rows.device)[:, None]
    sums = torch.zeros(rows.shape[0] * n_bins, dtype=gap.dtype, device=gap.device)
    sums.index_add_(0, (rows + offset).flatten(), gap.reshape(-1))
    return (sums.reshape(-1, n_bins).abs().sum(-1) / rows.shape[-1]).reshape(bin_index.shape[:-1])


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE = Σ_b (|S_b|/N)·|acc(S_b) − conf(S_b)| over equal-width top-label confidence bins
    (= Σ_b |Σ_{i∈b} (correct_i − conf_i)| / N, computed that way by :func:`ece_from_gaps`)."""
    return float(ece_from_gaps(*calibration_gaps(probs, labels, n_bins), n_bins))


def per_example_nll(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−log p_y per example ``[N]`` (p_y clamped at 1e-12); NLL is its mean."""
    probs, labels = _check(probs, labels)
    return -torch.log(probs.gather(1, labels[:, None]).clamp(min=EPS)).squeeze(1)


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(per_example_nll(probs, labels).mean())


def per_example_brier(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_c (p_c − 1[y = c])² per example ``[N]``; the Brier score is its mean."""
    probs, labels = _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return ((probs - onehot) ** 2).sum(-1)


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(per_example_brier(probs, labels).mean())


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
