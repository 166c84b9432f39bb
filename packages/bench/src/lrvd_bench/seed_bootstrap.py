"""Seed-aware paired differences: a two-level bootstrap over seeds and evaluation questions.

A method's difference from the reference varies with the training seed as well as with the sample
of evaluation questions; an interval that holds the trained adapters fixed and resamples questions
only (``TwoLevel.questions_only``) answers "would *these* runs differ on other
questions?", not "do the methods differ?". This module's interval answers the second question; it
is the one behind every ``*`` of the leaderboard. Design, reasoning and measurements are in
``docs/statistics.md``; in short, for one metric, ``S`` seeds and ``B`` resamples:

* ``d_s`` = method − reference at seed ``s`` (all questions), ``D[s, b]`` the same on question
  resample ``b`` (one question resample per ``b``, applied to every seed and method: seeds answer the
  same questions, so seeds and questions are *crossed*, and the pigeonhole bootstrap resamples both
  factors independently);
* resample ``b`` draws ``S`` seeds with replacement (``draws[b]``, the same draw for every method of
  the table) and splits ``Δ*_b − Δ`` into a seed part ``mean_k d[draws[b, k]] − Δ`` and a question
  part ``mean_k (D[draws[b, k], b] − d[draws[b, k]])``;
* the seed part is scaled by ``λ(α, S) = √(S/(S−1)) · t_{S−1}(1−α/2) / z(1−α/2)``: a plain percentile
  interval over 3 seeds excludes 0 in a quarter of null experiments (all three seeds on one side),
  while the scaled one reproduces Student's t interval when the seed level dominates (the
  "expanded percentile" idea, applied to the seed level only, where the sample is small);
* ECE's interval is bias-corrected (Efron's BC: the percentile levels shifted by
  ``z0 = Φ⁻¹(share of Δ* below Δ)``), because binned ECE is a biased, non-smooth statistic whose
  bootstrap distribution is not centred on the estimate; the other metrics are means and keep the
  percentile interval.

A row with one trial compared with a reference that has several (the ensemble, built from all the
reference's seeds) is compared with the reference's seed mean: its single prediction is paired with
every reference seed, so the seed level is the reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

ALPHA = 0.05
#: Largest Monte-Carlo standard error allowed at any interval end (:func:`quantile_mc_se`).
MC_SE_TARGET = 0.001


def seed_scale(n_seeds: int, alpha: float = ALPHA) -> float:
    """λ(α, S): the factor on the seed part that turns its percentile interval into Student's t (NaN below 2 seeds)."""
    if n_seeds < 2:
        return math.nan
    return math.sqrt(n_seeds / (n_seeds - 1)) * stats.t.ppf(1 - alpha / 2, n_seeds - 1) / stats.norm.ppf(1 - alpha / 2)


def draw_seeds(n_seeds: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n_seeds]`` seed positions drawn with replacement; the same for every method with ``n_seeds``."""
    return np.random.default_rng([seed, n_seeds]).integers(0, n_seeds, size=(n_resamples, n_seeds))


def quantile_mc_se(values: np.ndarray, q: float, z: float = 1.96) -> float:
    """Monte-Carlo standard error of the ``q`` quantile of ``values`` (order statistics).

    The ``q`` quantile of ``B`` draws lies between the order statistics ``qB ± z·√(Bq(1−q))`` with
    probability ≈ 95 %; half that distance over ``z`` is its standard error.
    """
    b = len(values)
    c = z * math.sqrt(b * q * (1 - q))
    ordered = np.sort(values)
    lo, hi = int(max(math.floor(q * b - c), 0)), int(min(math.ceil(q * b + c), b - 1))
    return float(ordered[hi] - ordered[lo]) / (2 * z)


@dataclass
class TwoLevel:
    """The decomposed two-level resample distribution of one paired Δ (module docstring).

    ``point_*``: the metric per seed ``[S]``; ``boot_*``: per seed on each question resample ``[S, B]``;
    ``draws``: ``[B, S]`` seed positions. A method with a single trial is passed broadcast to ``[S]``.
    """

    point_method: np.ndarray
    point_reference: np.ndarray
    boot_method: np.ndarray
    boot_reference: np.ndarray
    draws: np.ndarray
    bias_correct: bool = False
    per_seed: np.ndarray = field(init=False)
    delta: float = field(init=False)

    def __post_init__(self) -> None:
        d = np.asarray(self.point_method, float) - np.asarray(self.point_reference, float)
        boot = np.asarray(self.boot_method, float) - np.asarray(self.boot_reference, float)
        self.per_seed, self.delta = d, float(d.mean())
        n_resamples = boot.shape[1]
        self.seed_part = d[self.draws].mean(1) - self.delta
        self.question_part = (boot[self.draws, np.arange(n_resamples)[:, None]] - d[self.draws]).mean(1)
        #: the question-only distribution: every seed kept once, questions resampled (conditional on these seeds)
        self.questions_only = self.delta + (boot - d[:, None]).mean(0)

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    def resampled(self, alpha: float = ALPHA) -> np.ndarray:
        """``Δ*`` with the seed part scaled for level ``1 − alpha`` ``[B]``."""
        return self.delta + seed_scale(self.n_seeds, alpha) * self.seed_part + self.question_part

    def quantile_levels(self, values: np.ndarray, alpha: float) -> tuple[float, float]:
        if not self.bias_correct:
            return alpha / 2, 1 - alpha / 2
        share = np.mean(values < self.delta) + 0.5 * np.mean(values == self.delta)
        z0 = stats.norm.ppf(np.clip(share, 1 / len(values), 1 - 1 / len(values)))
        z = stats.norm.ppf(alpha / 2)
        return float(stats.norm.cdf(2 * z0 + z)), float(stats.norm.cdf(2 * z0 - z))

    def interval(self, alpha: float = ALPHA) -> tuple[float, float]:
        """The ``1 − alpha`` interval (NaN with fewer than 2 seeds: no seed-to-seed variation to measure)."""
        if self.n_seeds < 2:
            return math.nan, math.nan
        values = self.resampled(alpha)
        lo, hi = np.quantile(values, self.quantile_levels(values, alpha))
        return float(lo), float(hi)

    def question_interval(self, level: float = 1 - ALPHA) -> tuple[float, float]:
        """Percentile interval of the question-only distribution: about these seeds' runs, not the methods."""
        lo, hi = np.quantile(self.questions_only, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def mc_se(self, alpha: float = ALPHA) -> float:
        """The larger Monte-Carlo standard error of the two interval ends."""
        if self.n_seeds < 2:
            return math.nan
        values = self.resampled(alpha)
        return max(quantile_mc_se(values, q) for q in self.quantile_levels(values, alpha))

    def p_value(self, floor: float = 1e-8) -> float:
        """Two-sided p: the smallest α whose interval excludes 0 (bisection on log α; 1 if none does)."""
        if self.n_seeds < 2:
            return math.nan

        def excludes(alpha: float) -> bool:
            lo, hi = self.interval(alpha)
            return lo > 0 or hi < 0

        if not excludes(1 - 1e-9):
            return 1.0
        if excludes(floor):
            return floor
        lo, hi = math.log(floor), math.log(1 - 1e-9)
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if excludes(math.exp(mid)) else (mid, hi)
        return math.exp(hi)


def probability_of_improvement(
    two_level: TwoLevel, higher_is_better: bool, level: float = 0.95
) -> tuple[float, float, float]:
    """P(method beats reference) over seed pairs, with its percentile interval (rliable's statistic).

    The point value is the Mann–Whitney statistic over every (method seed, reference seed) pair: the
    share of pairs where the method is better, ties counting one half. Its interval comes from the
    same two-level resamples as Δ (unscaled: it describes, it does not test).
    """
    sign = 1.0 if higher_is_better else -1.0

    def poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        diff = sign * (x[..., :, None] - y[..., None, :])
        return ((diff > 0) + 0.5 * (diff == 0)).mean((-1, -2))

    point = float(poi(np.asarray(two_level.point_method, float), np.asarray(two_level.point_reference, float)))
    draws = two_level.draws
    cols = np.arange(draws.shape[0])[:, None]
    boot = poi(
        np.asarray(two_level.boot_method, float)[draws, cols], np.asarray(two_level.boot_reference, float)[draws, cols]
    )
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(p_values, float)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), math.nan)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (len(valid) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
