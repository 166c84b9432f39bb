"""Figures of a run under distribution shift: the adapters trained on one task, scored without retraining on the
other evaluation tasks of ``eval_tasks`` (BLoB's protocol: train on OpenBookQA, evaluate on ARC-C, ARC-E,
MMLU-chem, MMLU-phy). Saved under ``runs/NAME/figures`` beside :mod:`lrvd_bench.plots`' figures.

- ``risk_coverage_<task>.png`` (the training task's own evaluation split) and
  ``risk_coverage_<task>_<eval task>.png`` (each other evaluation task): selective risk against coverage, one line
  per method, the per-seed curves of :func:`lrvd.uncertainty.risk_coverage` (confidence = max ``p̄``) averaged
  over seeds (:func:`mean_risk_curve`); the legend gives the mean over seeds of the AURC, the leaderboard's
  ``aurc_mean``;
- ``ood_histograms_<task>_<eval task>.png``: one panel per method (at most 3 per row), density histograms of the
  predictive entropy ``H[p̄]`` on the in-distribution set (the training task's evaluation split) and on the OOD
  set, seeds pooled; the panel title gives the OOD AUROC of the pooled scores. Only the entropy score is drawn:
  max-probability and mutual-information AUROCs are leaderboard columns (``ood_auroc_*``);
- ``shift_<task>.png``: accuracy and ECE (leaderboard mean ± std over seeds) on each evaluation set, the
  in-distribution set first and left of a dashed line, then the OOD sets; one series per method.

Runs without other evaluation tasks (older runs, or ``eval_tasks`` empty) get the in-distribution risk–coverage
figure only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrvd_bench.figures import grid_shape, pyplot, safe, save_figure
from lrvd_bench.predictions import read_predictions

HIST_BINS = 30
#: Horizontal distance between the series of neighbouring methods in the shift plot (x units: one per set).
SERIES_OFFSET = 0.08


def _ok_by_task(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok":
            out.setdefault(row["task"], []).append(row)
    return out


def eval_sets(task: str, task_rows: list[dict[str, Any]]) -> list[str]:
    """The training task first, then every other evaluation task of its trials in order of first appearance;
    rows without ``eval_tasks`` (older runs) contribute none."""
    out = [task]
    for row in task_rows:
        for eval_task in row.get("eval_tasks") or []:
            if eval_task not in out:
                out.append(eval_task)
    return out


def _trial_dir(run_dir: Path, row: dict[str, Any]) -> Path:
    return run_dir / "trials" / row["trial_id"]


# -- risk–coverage ----------------------------------------------------------------------------------
def mean_risk_curve(seeds: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """The seed-mean risk–coverage curve: each seed's :func:`lrvd.uncertainty.risk_coverage` from its
    ``(confidence [N], correct [N])``, averaged pointwise over seeds.

    Seeds normally score the same ``N`` examples, so their curves share the coverages ``k/N`` and the mean is exact
    (and its mean over ``k`` is the mean of the seeds' AURCs). Should the sizes differ, each curve is linearly
    interpolated onto the coverages of the largest set (held at its first risk below its smallest coverage).
    """
    import numpy as np

    from lrvd.uncertainty import risk_coverage

    if not seeds:
        raise ValueError("mean_risk_curve needs at least one seed's (confidence, correct)")
    curves = [risk_coverage(conf, correct) for conf, correct in seeds]
    coverage = max((c for c, _ in curves), key=len)
    risks = [r if len(c) == len(coverage) else np.interp(coverage, c, r) for c, r in curves]
    return coverage, np.mean(risks, axis=0)


def risk_coverage_label(method: str, seed_aurcs: list[float]) -> str:
    """Legend entry: the method and the mean over seeds of its AURC (the leaderboard's ``aurc_mean``)."""
    n = len(seed_aurcs)
    return f"{method} (AURC {sum(seed_aurcs) / n:.3f}, {n} seed{'s' if n != 1 else ''})"


def risk_coverage_curves(run_dir: Path, rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One risk–coverage figure per (training task, evaluation task) with saved predictions."""
    from lrvd.uncertainty import aurc

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    plt = pyplot()
    paths = []
    for task, task_rows in _ok_by_task(rows).items():
        for eval_task in eval_sets(task, task_rows):
            seeds: dict[str, list[tuple[Any, Any]]] = {}
            for row in task_rows:
                pred = read_predictions(_trial_dir(run_dir, row), task, eval_task)
                if pred is not None:
                    correct = pred.probs.argmax(-1) == pred.labels
                    seeds.setdefault(row["method"], []).append((pred.probs.max(-1), correct))
            if not seeds:
                continue
            fig, ax = plt.subplots(figsize=(5.5, 4))
            for i, method in enumerate(sorted(seeds)):
                coverage, risk = mean_risk_curve(seeds[method])
                label = risk_coverage_label(method, [aurc(c, k) for c, k in seeds[method]])
                ax.plot(coverage, risk, color=f"C{i % 10}", linewidth=1.2, label=label)
            ax.set(xlim=(0, 1), ylim=(0, None))
            ax.set_xlabel("coverage (fraction accepted, most confident first)")
            ax.set_ylabel("selective risk (error rate of the accepted)")
            where = task if eval_task == task else f"{eval_task} (OOD)"
            ax.set_title(
                f"Risk–coverage, trained on {task}, evaluated on {where}\n"
                "confidence = max p̄; mean over seeds (lower is better)",
                fontsize=9,
            )
            ax.legend(fontsize=7)
            name = safe(task) if eval_task == task else f"{safe(task)}_{safe(eval_task)}"
            paths.append(save_figure(fig, out_dir / f"risk_coverage_{name}.png"))
    return paths


# -- OOD score histograms ---------------------------------------------------------------------------
def pooled_entropies(
    run_dir: Path, method_rows: list[dict[str, Any]], task: str, eval_task: str
) -> tuple[Any, Any] | None:
    """Predictive entropies ``H[p̄]`` of the in-distribution and of the ``eval_task`` set, pooled over the seeds
    (trials) that saved both; ``None`` when none did."""
    import numpy as np

    from lrvd.uncertainty import predictive_entropy

    id_parts, ood_parts = [], []
    for row in method_rows:
        folder = _trial_dir(Path(run_dir), row)
        pred_id, pred_ood = read_predictions(folder, task, task), read_predictions(folder, task, eval_task)
        if pred_id is None or pred_ood is None:
            continue
        id_parts.append(predictive_entropy(pred_id.probs))
        ood_parts.append(predictive_entropy(pred_ood.probs))
    if not id_parts:
        return None
    return np.concatenate(id_parts), np.concatenate(ood_parts)


def ood_histogram_title(method: str, auroc: float, n_id: int, n_ood: int) -> str:
    """Panel title: the OOD AUROC of the pooled entropies the histograms show (OOD the positive class)."""
    return f"{method}\nentropy OOD AUROC {auroc:.3f} (n={n_id} ID, {n_ood} OOD)"


def ood_score_histograms(run_dir: Path, rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One figure per training task and OOD evaluation task: per method, the predictive-entropy histograms of the
    in-distribution and the OOD set (seeds pooled), titled with the pooled scores' OOD AUROC. The entropy is the
    OOD score that needs no posterior samples; the mutual-information and max-probability AUROCs are in the
    leaderboard table."""
    import numpy as np

    from lrvd.uncertainty import ood_auroc

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    plt = pyplot()
    paths = []
    for task, task_rows in _ok_by_task(rows).items():
        for eval_task in eval_sets(task, task_rows)[1:]:
            pooled = {}
            for method in sorted({r["method"] for r in task_rows}):
                scores = pooled_entropies(run_dir, [r for r in task_rows if r["method"] == method], task, eval_task)
                if scores is not None:
                    pooled[method] = scores
            if not pooled:
                continue
            n_rows, cols = grid_shape(len(pooled))
            fig, axes = plt.subplots(n_rows, cols, figsize=(3.3 * cols, 2.8 * n_rows + 0.4), squeeze=False)
            for i, (method, (score_id, score_ood)) in enumerate(pooled.items()):
                ax = axes[i // cols][i % cols]
                edges = np.histogram_bin_edges(np.r_[score_id, score_ood], bins=HIST_BINS)
                ax.hist(score_id, bins=edges, density=True, alpha=0.55, color="C0", label=f"ID ({task})")
                ax.hist(score_ood, bins=edges, density=True, alpha=0.55, color="C3", label=f"OOD ({eval_task})")
                auroc = ood_auroc(score_id, score_ood)
                ax.set_title(ood_histogram_title(method, auroc, len(score_id), len(score_ood)), fontsize=8)
                ax.set_xlabel("predictive entropy (nats)", fontsize=8)
                if i % cols == 0:
                    ax.set_ylabel("density", fontsize=8)
                ax.tick_params(labelsize=7)
                if i == 0:
                    ax.legend(fontsize=7)
            for j in range(len(pooled), n_rows * cols):
                axes[j // cols][j % cols].set_visible(False)
            fig.suptitle(f"OOD scores, trained on {task}: {task} (ID) vs {eval_task} (OOD), seeds pooled", fontsize=9)
            paths.append(save_figure(fig, out_dir / f"ood_histograms_{safe(task)}_{safe(eval_task)}.png"))
    return paths


# -- accuracy and ECE across evaluation sets --------------------------------------------------------
def _series_label(row: Any, several_models: bool) -> str:
    label = str(row["method"])
    point = row.get("search_point")
    if isinstance(point, str) and point:
        label += f" {point}"
    model = row.get("model")
    if several_models and isinstance(model, str) and model:
        label += f" [{model}]"
    return label


def shift_series(board: Any, task: str) -> tuple[list[str], dict[str, dict[str, dict[str, tuple[float, float]]]]]:
    """What ``shift_<task>.png`` draws: the evaluation sets in x order (``task`` first when present, then the OOD
    sets in board order) and, per series (method, with its search point and model when those tell rows apart),
    per metric (``accuracy``, ``ece``), per evaluation set, the leaderboard's (mean, std); std 0 for one seed.
    A board without ``eval_task`` (older runs) has only the in-distribution set."""
    import math

    group = board[board["task"] == task]
    eval_col = group["eval_task"].fillna(task) if "eval_task" in group.columns else group["task"]
    order = list(dict.fromkeys(eval_col))
    if task in order:
        order = [task] + [e for e in order if e != task]
    several_models = "model" in group.columns and group["model"].nunique() > 1
    series: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for (_, row), eval_task in zip(group.iterrows(), eval_col):
        per_metric = series.setdefault(_series_label(row, several_models), {"accuracy": {}, "ece": {}})
        for metric in per_metric:
            mean = float(row.get(f"{metric}_mean", math.nan))
            std = float(row.get(f"{metric}_std", math.nan))
            per_metric[metric][eval_task] = (mean, 0.0 if math.isnan(std) else std)
    return order, dict(sorted(series.items()))


def shift_plot(board: Any, out_dir: Path) -> list[Path]:
    """Per training task with at least one OOD evaluation set: accuracy and ECE on every evaluation set."""
    if board is None or board.empty or "eval_task" not in board.columns:
        return []
    plt = pyplot()
    out_dir = Path(out_dir)
    paths = []
    for task in dict.fromkeys(board["task"].dropna()):
        order, series = shift_series(board, task)
        if all(e == task for e in order):  # no OOD set: nothing to compare
            continue
        fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(order) + 3.5), 3.8), squeeze=False)
        for ax, metric, ylabel in zip(
            axes[0], ("accuracy", "ece"), ("accuracy (higher is better)", "ECE (lower is better)")
        ):
            for i, (label, per_metric) in enumerate(series.items()):
                offset = (i - (len(series) - 1) / 2) * SERIES_OFFSET
                points = [(x, *per_metric[metric][e]) for x, e in enumerate(order) if e in per_metric[metric]]
                if not points:
                    continue
                xs, means, stds = zip(*points)
                ax.errorbar(
                    [x + offset for x in xs],
                    means,
                    yerr=stds,
                    fmt="o",  # no line: the sets are categories, not a continuum
                    markersize=4,
                    capsize=3,
                    color=f"C{i % 10}",
                    label=label,
                )
            if order[0] == task:
                ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels([f"{e}\n(ID)" if e == task else e for e in order], fontsize=8)
            ax.set_xlim(-0.5, len(order) - 0.5)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(
            f"Trained on {task}: in-distribution (left of the dashed line) vs OOD sets, mean ± std over seeds",
            fontsize=9,
        )
        paths.append(save_figure(fig, out_dir / f"shift_{safe(task)}.png"))
    return paths


def shift_figures(run_dir: str | Path, rows: list[dict[str, Any]], board: Any = None) -> list[Path]:
    """Write the shift figures of ``run_dir`` into ``run_dir/figures``; returns the files written. Without other
    evaluation tasks only the in-distribution risk–coverage figures are drawn; without ``board`` no shift plot."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    return (
        risk_coverage_curves(run_dir, rows, out_dir)
        + ood_score_histograms(run_dir, rows, out_dir)
        + (shift_plot(board, out_dir) if board is not None else [])
    )
