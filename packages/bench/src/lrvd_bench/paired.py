"""Paired differences between two methods of one sweep, with 95 % paired-bootstrap intervals.

Methods of a sweep answer the same evaluation questions with the same seeds, so the difference
``method − reference`` is estimated on matched data: per seed both methods' ``predictions.npz`` hold
the same questions in the same order (checked through the labels), and

    Δ = mean over paired seeds s of [metric(method, s) − metric(reference, s)]

with each metric from :mod:`lrvd.metrics` (the leaderboard's definitions, ECE included), so Δ equals
the difference of the two leaderboard means over the paired seeds.

Bootstrap scheme (numpy, percentile interval):

1. draw ``B`` resamples of the ``n`` question indices, uniformly with replacement, from
   ``numpy.random.default_rng(seed)`` — one ``[B, n]`` index array shared by every method and seed of
   the task, so all intervals of a table rest on the same resamples;
2. on resample ``b``, recompute every metric for every trial on those questions and take
   ``Δ*_b = mean_s [metric(method, s)_b − metric(reference, s)_b]``: questions are resampled, seeds
   stay paired (a seed is never compared with another seed and seeds are not resampled, so the
   interval is about the question sample — the evaluation set — at these seeds);
3. the interval is the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of ``Δ*`` (numpy's default
   linear interpolation).

Accuracy, NLL and Brier are means over questions, so their resampled values are means of the
per-question values of :mod:`lrvd.metrics` (``per_example_*``); ECE is recomputed on every resample
from each question's bin and ``correct − confidence`` (:func:`lrvd.metrics.calibration_gaps`,
:func:`lrvd.metrics.ece_from_gaps`: the functions the leaderboard's ECE is made of). ``B = 1000`` by
default, as ``bench analyze``'s ECE intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Metrics with paired differences, in table order; True where higher is better.
PAIRED_METRICS: dict[str, bool] = {"accuracy": True, "ece": False, "nll": False, "brier": False}
N_RESAMPLES = 1000
LEVEL = 0.95
N_BINS = 15


def resample_questions(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` question indices drawn with replacement (step 1 of the module's scheme)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


@dataclass
class TrialScores:
    """One trial's metrics on all questions (``point``) and on each resample (``resampled``, ``[B]``)."""

    labels: np.ndarray
    point: dict[str, float]
    resampled: dict[str, np.ndarray]


def score_trial(probs: Any, labels: Any, resamples: np.ndarray, n_bins: int = N_BINS) -> TrialScores:
    """Every paired metric of one trial on all questions and on each row of ``resamples``."""
    import torch

    from lrvd.metrics import calibration_gaps, ece_from_gaps, per_example_brier, per_example_correct, per_example_nll

    probs_t = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    labels_t = torch.as_tensor(np.asarray(labels).astype(np.int64))
    index = torch.as_tensor(resamples)
    point, resampled = {}, {}
    for name, per_example in (
        ("accuracy", per_example_correct),
        ("nll", per_example_nll),
        ("brier", per_example_brier),
    ):
        values = per_example(probs_t, labels_t)  # [n]
        point[name] = float(values.mean())
        resampled[name] = values[index].mean(-1).numpy()  # [B]
    bins, gaps = calibration_gaps(probs_t, labels_t, n_bins)
    point["ece"] = float(ece_from_gaps(bins, gaps, n_bins))
    resampled["ece"] = ece_from_gaps(bins[index], gaps[index], n_bins).numpy()
    return TrialScores(np.asarray(labels_t), point, resampled)


@dataclass
class PairedDelta:
    """``method − reference`` for one metric: the estimate, its interval and the seeds it pairs."""

    delta: float
    lo: float
    hi: float
    n_seeds: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.lo > 0 or self.hi < 0)


def paired_deltas(
    method: dict[int, TrialScores], reference: dict[int, TrialScores], level: float = LEVEL
) -> dict[str, PairedDelta]:
    """Δ and its percentile interval per metric over the seeds both dicts (seed → scores) hold.

    Raises ``ValueError`` when no seed is shared or a shared seed's labels differ (the trials did not
    answer the same questions, so a paired difference has no meaning).
    """
    seeds = sorted(set(method) & set(reference))
    if not seeds:
        raise ValueError("no seed in common with the reference")
    for s in seeds:
        if not np.array_equal(method[s].labels, reference[s].labels):
            raise ValueError(f"seed {s}: the evaluation questions differ from the reference's")
    out = {}
    for name in PAIRED_METRICS:
        delta = float(np.mean([method[s].point[name] - reference[s].point[name] for s in seeds]))
        boot = np.mean([method[s].resampled[name] - reference[s].resampled[name] for s in seeds], axis=0)
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        out[name] = PairedDelta(delta, float(lo), float(hi), len(seeds))
    return out
