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
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


# -- small multiples -------------------------------------------------------------------------------
#: Panels per row of every per-method grid: a README-width image stays readable with 9+ methods.
MAX_PER_ROW = 3


def grid_shape(n_panels: int, per_row: int = MAX_PER_ROW) -> tuple[int, int]:
    """(rows, columns) of a grid holding ``n_panels`` with at most ``per_row`` per row."""
    cols = max(1, min(per_row, n_panels))
    return -(-max(1, n_panels) // cols), cols


def reliability_grid(
    pooled: dict[str, tuple[Any, Any]], titles: dict[str, str], suptitle: str, n_bins: int = 15
) -> Any:
    """One reliability diagram per method (at most 3 per row), each over a strip of its per-bin counts.

    ``pooled``: method → (probs [N, C], labels [N]); bins, accuracies and counts come from
    :func:`lrvd.metrics.calibration_bins`, the same bins as the leaderboard's ECE. Returns the figure.
    """
    import numpy as np
    import torch

    from lrvd.metrics import calibration_bins

    plt = pyplot()
    methods = list(pooled)
    rows, cols = grid_shape(len(methods))
    fig = plt.figure(figsize=(3.3 * cols, 3.9 * rows), layout="constrained")
    outer = fig.add_gridspec(rows, cols)
    edges = np.linspace(0, 1, n_bins + 1)
    for i, method in enumerate(methods):
        inner = outer[i // cols, i % cols].subgridspec(2, 1, height_ratios=[3, 1])
        ax, ax_n = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
        probs, labels = (torch.as_tensor(np.asarray(x)) for x in pooled[method])
        counts, conf, acc = (t.numpy() for t in calibration_bins(probs.double(), labels.long(), n_bins))
        filled = counts > 0
        ax.bar(
            edges[:-1][filled], acc[filled], width=1 / n_bins, align="edge", edgecolor="black", linewidth=0.5, alpha=0.8
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.scatter(conf[filled], acc[filled], s=8, color="black", zorder=3)
        ax.set(xlim=(0, 1), ylim=(0, 1), xticklabels=[])
        ax.set_title(titles.get(method, method), fontsize=8)
        ax_n.bar(edges[:-1], counts, width=1 / n_bins, align="edge", color="grey", edgecolor="black", linewidth=0.5)
        for x, c in zip(edges[:-1][filled], counts[filled]):
            ax_n.text(x + 0.5 / n_bins, c, f"{int(c)}", ha="center", va="bottom", fontsize=5, rotation=90)
        ax_n.set(xlim=(0, 1), ylim=(0, max(1.0, counts.max()) * 1.6))
        ax_n.set_xlabel("confidence", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("accuracy", fontsize=8)
            ax_n.set_ylabel("count", fontsize=8)
        for a in (ax, ax_n):
            a.tick_params(labelsize=7)
    fig.suptitle(suptitle, fontsize=10)
    return fig


def rank_curve_grid(curves: dict[str, Any], suptitle: str) -> Any:
    """Effective rank over training as small multiples: one panel per method (at most 3 per row),
    shared axes, mean over seeds with a ±1 std band, so curves of different methods never overlap.

    ``curves``: method → DataFrame with columns step, mean, std, n_seeds. Returns the figure.
    """
    plt = pyplot()
    methods = list(curves)
    rows, cols = grid_shape(len(methods))
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols, 2.5 * rows + 0.4), sharex=True, sharey=True, squeeze=False
    )
    for i, method in enumerate(methods):
        ax, g = axes[i // cols][i % cols], curves[method].sort_values("step")
        color = f"C{i % 10}"
        ax.plot(g["step"], g["mean"], color=color, marker=".", markersize=3)
        ax.fill_between(g["step"], g["mean"] - g["std"], g["mean"] + g["std"], color=color, alpha=0.2)
        n = int(g["n_seeds"].max()) if len(g) else 0
        ax.set_title(f"{method} ({n} seed{'s' if n != 1 else ''})", fontsize=8)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("effective rank", fontsize=8)
        if i // cols == rows - 1 or i + cols >= len(methods):
            ax.set_xlabel("training step", fontsize=8)
            ax.tick_params(labelbottom=True)
    for j in range(len(methods), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle(suptitle, fontsize=10)
    return fig
