"""Cells every leaderboard table writes the same way: a mean ± std and the significance mark.

The main, uncertainty, paired and distribution-shift tables and the forest figure all read these, so a
number and its ``*`` look the same wherever they appear.
"""

from __future__ import annotations

import math
from typing import Any


def mean_pm_std(mean: Any, std: Any, digits: int) -> str:
    """``0.412 ± 0.013`` (``–`` when the mean is missing; the mean alone when the std is: one seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{digits}f}"
    return text


def significant(row: Any, metric: str) -> bool:
    """Whether the row's seed-aware, Holm-corrected paired test on ``metric`` excludes 0 (the ``*``);
    a row read back from a CSV holds the flag as text."""
    return row.get(f"delta_{metric}_significant") in (True, "True", 1)
