"""Shift figures are drawn from the trials' per-evaluation-task predictions and the leaderboard: the curves, the
AUROCs in the titles and the error bars are the numbers computed independently here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lrvd.uncertainty import ood_auroc
from lrvd_bench import shift_plots
from lrvd_bench.predictions import write_predictions
from lrvd_bench.shift_plots import (
    mean_risk_curve,
    ood_score_histograms,
    risk_coverage_curves,
    shift_figures,
    shift_plot,
)

TASK, OOD = "obqa", "arc-c"


def confident(conf: list[float], correct: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """3-class probabilities with max ``conf`` on class 0 and labels 0 (correct) or 1 (wrong)."""
    c = np.asarray(conf)
    probs = np.stack([c, (1 - c) / 2, (1 - c) / 2], 1)
    return probs, np.where(correct, 0, 1)


# In-distribution predictions of lora: the risk-coverage numbers below are worked out by hand from them.
LORA_ID = {
    # sorted by confidence: correct, wrong, correct, wrong -> risks 0, 1/2, 1/3, 2/4
    0: confident([0.6, 0.9, 0.5, 0.7], [True, True, False, False]),
    # sorted: wrong, correct, correct, correct -> risks 1, 1/2, 1/3, 1/4
    1: confident([0.8, 0.4, 0.9, 0.6], [True, True, False, True]),
}
LORA_ID_MEAN_RISK = [(0 + 1) / 2, (1 / 2 + 1 / 2) / 2, (1 / 3 + 1 / 3) / 2, (2 / 4 + 1 / 4) / 2]
LORA_ID_AURCS = [(0 + 1 / 2 + 1 / 3 + 2 / 4) / 4, (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4]


def fake_run(run_dir, eval_tasks=(OOD,)) -> list[dict]:
    """2 methods x 2 seeds trained on obqa; each trial saved the obqa split and every task of ``eval_tasks``."""
    rng = np.random.default_rng(3)
    rows = []
    for method in ("lora", "blob"):
        for seed in (0, 1):
            trial_id = f"{method}-{TASK}-s{seed}"
            folder = run_dir / "trials" / trial_id
            folder.mkdir(parents=True)
            if method == "lora":
                probs, labels = LORA_ID[seed]
            else:
                probs = rng.dirichlet([2.0, 1.0, 1.0], size=4)
                labels = rng.integers(0, 3, size=4)
            write_predictions(folder, TASK, TASK, probs, labels, [f"q{i}" for i in range(len(labels))])
            for eval_task in eval_tasks:
                # OOD probabilities of varied shape: entropy and max-probability rank them differently
                ood = rng.dirichlet([0.6, 0.6, 0.6], size=6)
                write_predictions(folder, TASK, eval_task, ood, rng.integers(0, 3, size=6), [f"o{i}" for i in range(6)])
            row = {"trial_id": trial_id, "status": "ok", "method": method, "task": TASK, "seed": seed}
            if eval_tasks:
                row["eval_tasks"] = list(eval_tasks)
            rows.append(row)
    rows.append({"trial_id": "lora-obqa-s2", "status": "failed", "method": "lora", "task": TASK, "seed": 2})
    return rows


def board_frame(with_eval_task: bool = True) -> pd.DataFrame:
    # Board order puts an OOD set first: the plot still starts with the in-distribution set.
    records = [
        ("lora", "arc-e", 0.55, 0.02, 0.12, 0.01),
        ("lora", TASK, 0.70, 0.03, 0.05, float("nan")),
        ("lora", OOD, 0.50, 0.04, 0.15, 0.02),
        ("blob", TASK, 0.72, 0.01, 0.03, 0.005),
        ("blob", "arc-e", 0.60, 0.02, 0.06, 0.01),
        ("blob", OOD, 0.52, 0.03, 0.08, 0.01),
    ]
    board = pd.DataFrame(
        records, columns=["method", "eval_task", "accuracy_mean", "accuracy_std", "ece_mean", "ece_std"]
    )
    board.insert(0, "task", TASK)
    board["shift"] = np.where(board["eval_task"] == TASK, "id", "ood")
    return board if with_eval_task else board[board["eval_task"] == TASK].drop(columns=["eval_task", "shift"])


@pytest.fixture
def drawn(monkeypatch):
    """file name -> the figure written under it (captured before it is saved and closed)."""
    figures = {}
    real_save = shift_plots.save_figure

    def capture(fig, path):
        figures[path.name] = fig
        return real_save(fig, path)

    monkeypatch.setattr(shift_plots, "save_figure", capture)
    return figures


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_all_shift_figures_are_written_under_their_names(tmp_path):
    rows = fake_run(tmp_path)
    paths = shift_figures(tmp_path, rows, board_frame())
    assert sorted(p.name for p in paths) == [
        "ood_histograms_obqa_arc-c.png",
        "risk_coverage_obqa.png",
        "risk_coverage_obqa_arc-c.png",
        "shift_obqa.png",
    ]
    assert all(p.parent == tmp_path / "figures" and is_png(p) for p in paths)


def test_without_other_eval_tasks_only_the_in_distribution_risk_coverage(tmp_path):
    rows = fake_run(tmp_path, eval_tasks=())
    assert all("eval_tasks" not in r for r in rows)  # an older run
    paths = shift_figures(tmp_path, rows, board_frame(with_eval_task=False))
    assert [p.name for p in paths] == ["risk_coverage_obqa.png"]
    assert shift_figures(tmp_path, rows, None) == paths
    assert shift_plot(board_frame()[lambda b: b["eval_task"] == TASK], tmp_path) == []  # only the ID set


def test_mean_risk_curve_is_the_pointwise_mean_of_the_seed_curves():
    seeds = [(p.max(1), p.argmax(1) == y) for p, y in LORA_ID.values()]
    coverage, risk = mean_risk_curve(seeds)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, LORA_ID_MEAN_RISK)
    # a seed scored on 2 examples: risks 0 (at 1/2) and 1/2 (at 1), interpolated onto quarters
    two = (np.array([0.9, 0.8]), np.array([True, False]))
    coverage, risk = mean_risk_curve([seeds[0], two])
    np.testing.assert_allclose(risk, [(0 + 0) / 2, (1 / 2 + 0) / 2, (1 / 3 + 1 / 4) / 2, (2 / 4 + 1 / 2) / 2])
    with pytest.raises(ValueError):
        mean_risk_curve([])


def test_risk_coverage_figure_draws_the_seed_mean_curve_and_mean_aurc(tmp_path, drawn):
    rows = fake_run(tmp_path)
    risk_coverage_curves(tmp_path, rows, tmp_path)
    ax = drawn["risk_coverage_obqa.png"].axes[0]
    lines = {line.get_label().split(" ")[0]: line for line in ax.get_lines()}
    assert sorted(lines) == ["blob", "lora"]
    np.testing.assert_allclose(lines["lora"].get_xdata(), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(lines["lora"].get_ydata(), LORA_ID_MEAN_RISK)
    aurc = sum(LORA_ID_AURCS) / 2  # 0.4270...
    assert lines["lora"].get_label() == f"lora (AURC {aurc:.3f}, 2 seeds)" == "lora (AURC 0.427, 2 seeds)"
    assert "arc-c (OOD)" in drawn["risk_coverage_obqa_arc-c.png"].axes[0].get_title()


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)


def test_histogram_titles_give_the_ood_auroc_of_the_pooled_entropies(tmp_path, drawn):
    from lrvd_bench.predictions import read_predictions

    rows = fake_run(tmp_path)
    assert [p.name for p in ood_score_histograms(tmp_path, rows, tmp_path)] == ["ood_histograms_obqa_arc-c.png"]
    titles = {ax.get_title().split("\n")[0]: ax.get_title() for ax in drawn["ood_histograms_obqa_arc-c.png"].axes}
    assert sorted(titles) == ["blob", "lora"]
    for method in ("lora", "blob"):
        folders = [tmp_path / "trials" / f"{method}-{TASK}-s{s}" for s in (0, 1)]
        ids = [read_predictions(f, TASK, TASK).probs.astype(float) for f in folders]
        oods = [read_predictions(f, TASK, OOD).probs.astype(float) for f in folders]
        pooled = ood_auroc(np.concatenate([entropy(p) for p in ids]), np.concatenate([entropy(p) for p in oods]))
        # the data tell the intended number from its likely mistakes: another score, per-seed averaging
        maxprob = ood_auroc(-np.concatenate([p.max(1) for p in ids]), -np.concatenate([p.max(1) for p in oods]))
        per_seed = np.mean([ood_auroc(entropy(i), entropy(o)) for i, o in zip(ids, oods)])
        assert min(abs(pooled - maxprob), abs(pooled - per_seed), abs(pooled - 0.5)) > 0.01
        assert titles[method] == f"{method}\nentropy OOD AUROC {pooled:.3f} (n=8 ID, 12 OOD)"


def test_shift_plot_puts_the_id_set_first_and_draws_the_board_mean_and_std(tmp_path, drawn):
    board = board_frame()
    assert [p.name for p in shift_plot(board, tmp_path)] == ["shift_obqa.png"]
    fig = drawn["shift_obqa.png"]
    acc_ax, ece_ax = fig.axes[:2]
    assert [t.get_text() for t in acc_ax.get_xticklabels()] == ["obqa\n(ID)", "arc-e", "arc-c"]
    order = [TASK, "arc-e", OOD]
    # the dashed separator just after the in-distribution set
    assert any(list(line.get_xdata()) == [0.5, 0.5] and line.get_linestyle() == "--" for line in acc_ax.get_lines())
    for ax, metric in ((acc_ax, "accuracy"), (ece_ax, "ece")):
        bars = {c.get_label(): c for c in ax.containers}
        assert sorted(bars) == ["blob", "lora"]
        offsets = {}
        for method, container in bars.items():
            expected = board[board["method"] == method].set_index("eval_task").loc[order]
            data_line, _, (vertical,) = container.lines
            xs = np.asarray(data_line.get_xdata(), dtype=float)
            offsets[method] = xs - np.arange(3)
            np.testing.assert_allclose(
                np.asarray(data_line.get_ydata(), float), expected[f"{metric}_mean"].to_numpy(float)
            )
            half_heights = [abs(seg[1][1] - seg[0][1]) / 2 for seg in vertical.get_segments()]
            np.testing.assert_allclose(half_heights, expected[f"{metric}_std"].fillna(0.0).to_numpy(float))
        # each method has one offset for all sets, different from the other's
        assert all(np.ptp(o) < 1e-12 for o in offsets.values())
        assert not math.isclose(offsets["blob"][0], offsets["lora"][0])
