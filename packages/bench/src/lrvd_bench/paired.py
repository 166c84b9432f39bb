"""Per-question scores of one trial and their question resamples: the material of every paired interval.

Methods of a sweep answer the same evaluation questions with the same seeds, so a difference
``method − reference`` is estimated on matched data: per seed both methods' ``predictions.npz`` hold
the same questions in the same order (checked through the labels). Each metric comes from
:mod:`lrvd.metrics` (the leaderboard's definitions, ECE included), so a paired Δ equals the
difference of the two leaderboard means over the paired seeds.

Question resamples (numpy): ``B`` resamples of the ``n`` question indices, uniformly with
replacement, from ``numpy.random.default_rng(seed)`` — one ``[B, n]`` index array shared by every
method and seed of the task, so all intervals of a table rest on the same resamples. Accuracy, NLL
and Brier are means over questions, so their resampled values are means of the per-question values
(``per_example_*``); ECE is recomputed on every resample from each question's bin and
``correct − confidence`` (:func:`lrvd.metrics.calibration_gaps`, :func:`lrvd.metrics.ece_from_gaps`).
The seed level and the intervals are in :mod:`lrvd_bench.seed_bootstrap`; the question-only ECE
interval (bias-corrected and accelerated) in :func:`ece_bca_interval`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Metrics with paired differences, in table order; True where higher is better.
PAIRED_METRICS: dict[str, bool] = {"accuracy": True, "ece": False, "nll": False, "brier": False}
#: Question resamples to start with; the leaderboard doubles them until every interval end's Monte-Carlo
#: standard error is below :data:`lrvd_bench.seed_bootstrap.MC_SE_TARGET`, up to :data:`MAX_RESAMPLES`.
N_RESAMPLES = 10_000
MAX_RESAMPLES = 160_000
LEVEL = 0.95
N_BINS = 15
#: Resample rows scored at once (bounds memory: ``CHUNK × n`` indices per metric).
CHUNK = 4096


def resample_questions(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` question indices drawn with replacement (step 1 of the module's scheme)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


@dataclass
class TrialScores:
    """One trial's metrics on all questions (``point``) and on each resample (``resampled``, ``[B]``)."""

    labels: np.ndarray
    point: dict[str, float]
    resampled: dict[str, np.ndarray]
    bins: Any = None  # per-question confidence bin and correct − confidence (torch), for ECE's BCa interval
    gaps: Any = None


def score_trial(probs: Any, labels: Any, resamples: np.ndarray, n_bins: int = N_BINS) -> TrialScores:
    """Every paired metric of one trial on all questions and on each row of ``resamples``."""
    import torch

    from lrvd.metrics import calibration_gaps, ece_from_gaps, per_example_brier, per_example_correct, per_example_nll

    probs_t = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    labels_t = torch.as_tensor(np.asarray(labels).astype(np.int64))
    index = torch.as_tensor(np.asarray(resamples))
    point, parts = {}, {}
    for name, per_example in (
        ("accuracy", per_example_correct),
        ("nll", per_example_nll),
        ("brier", per_example_brier),
    ):
        values = per_example(probs_t, labels_t)  # [n]
        point[name] = float(values.mean())
        parts[name] = [values[chunk].mean(-1).numpy() for chunk in index.split(CHUNK)]  # [B]
    bins, gaps = calibration_gaps(probs_t, labels_t, n_bins)
    point["ece"] = float(ece_from_gaps(bins, gaps, n_bins))
    parts["ece"] = [ece_from_gaps(bins[chunk], gaps[chunk], n_bins).numpy() for chunk in index.split(CHUNK)]
    resampled = {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}
    return TrialScores(np.asarray(labels_t), point, resampled, bins, gaps)


def ece_bca_interval(
    method: list[TrialScores],
    reference: list[TrialScores],
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    n_bins: int = N_BINS,
) -> tuple[float, float]:
    """BCa interval (``scipy.stats.bootstrap``) of ``mean_s [ECE(method_s) − ECE(reference_s)]`` over questions.

    ``method`` and ``reference`` are aligned lists (one entry per paired seed; a single-trial method is
    repeated). Questions are resampled, the trials stay fixed: the question-only interval of ΔECE.
    """
    import torch
    from scipy.stats import bootstrap

    from lrvd.metrics import ece_from_gaps

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = torch.tensor(np.asarray(index), dtype=torch.int64)
        total = sum(
            ece_from_gaps(m.bins[idx], m.gaps[idx], n_bins) - ece_from_gaps(r.bins[idx], r.gaps[idx], n_bins)
            for m, r in zip(method, reference)
        )
        return (total / len(method)).numpy()

    import warnings

    n = len(method[0].labels)
    with warnings.catch_warnings():  # identical predictions: no spread, scipy warns and returns NaN
        warnings.simplefilter("ignore")
        result = bootstrap(
            (np.arange(n),),
            statistic,
            n_resamples=n_resamples,
            batch=CHUNK,
            vectorized=True,
            confidence_level=level,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
