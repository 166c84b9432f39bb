"""The arithmetic of ``bench cost`` (pure Python, unit-tested against hand-computed numbers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: The method every ``*_ratio`` column divides by.
REFERENCE = "lora"


def median_iqr(values: Sequence[float]) -> tuple[float, float]:
    """Median and inter-quartile range (Q3 − Q1, linear interpolation as ``numpy.percentile``)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return math.nan, math.nan

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.5), q(0.75) - q(0.25)


def ratio(value: float, reference: float) -> float:
    """``value / reference``; NaN when either is missing or the reference is 0."""
    try:
        value, reference = float(value), float(reference)
    except (TypeError, ValueError):
        return math.nan
    if not math.isfinite(value) or not math.isfinite(reference) or reference == 0:
        return math.nan
    return value / reference


def add_ratios(rows: list[dict[str, Any]], columns: Sequence[str], reference: str = REFERENCE) -> list[dict[str, Any]]:
    """Add ``<column>_ratio`` = row value / the ``reference`` method's value for each column (in place)."""
    ref = next((r for r in rows if r.get("method") == reference), None)
    for row in rows:
        for col in columns:
            row[f"{col}_ratio"] = ratio(row.get(col, math.nan), ref.get(col, math.nan) if ref else math.nan)
    return rows


def steps_per_epoch(n_train: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps per pass over ``n_train`` examples (last partial batch counts, as a DataLoader)."""
    return max(1, math.ceil(n_train / batch_size) // max(1, grad_accum))


def epoch_units(seconds: float, step_seconds: float, n_steps_per_epoch: int) -> float:
    """``seconds`` expressed in training epochs of ``n_steps_per_epoch`` steps of ``step_seconds``."""
    return ratio(seconds, step_seconds * n_steps_per_epoch)


def quarter_medians(step_seconds: Sequence[float]) -> tuple[float, float]:
    """Median step time of the first and of the last quarter of a run (at least one step each)."""
    n = len(step_seconds)
    if n == 0:
        return math.nan, math.nan
    q = max(1, n // 4)
    return median_iqr(step_seconds[:q])[0], median_iqr(step_seconds[-q:])[0]


def paired_ratio_iqr(values: Sequence[float], reference: Sequence[float]) -> float:
    """IQR of value / reference over pairs measured in the same round (the spread of the ratio,
    which interleaving keeps much smaller than the spread of either series under drift)."""
    return median_iqr([ratio(a, b) for a, b in zip(values, reference)])[1]
