"""Figure plumbing shared by ``plots`` (the leaderboard's figures) and ``analyze`` (its analyses).

Headless matplotlib, file-name-safe labels and one way to write a figure, so every PNG the bench
writes has the same layout pass and resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 120


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (trials and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe(name: str) -> str:
    """A method/task/module name usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write at :data:`DPI` and close ``fig`` (open figures pile up over a sweep); returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path
