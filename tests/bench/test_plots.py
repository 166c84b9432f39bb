"""Figures are drawn from a run directory's trial folders (predictions.npz, ranks.csv) as PNG files."""

from __future__ import annotations

import json

import numpy as np

from lrvd_bench.plots import make_figures


def fake_trial(run_dir, method, seed, rng):
    trial_id = f"{method}-arc-e-s{seed}"
    folder = run_dir / "trials" / trial_id
    folder.mkdir(parents=True)
    logits = rng.normal(size=(40, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, size=40)
    np.savez_compressed(folder / "predictions.npz", probs=probs.astype(np.float32), labels=labels)
    lines = ["step,module,rank"] + [f"{s},m{k},{8 - s // 10}" for s in (0, 10, 20) for k in range(2)]
    (folder / "ranks.csv").write_text("\n".join(lines) + "\n")
    row = {
        "trial_id": trial_id,
        "method": method,
        "task": "arc-e",
        "seed": seed,
        "status": "ok",
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "ece": 0.1 + 0.01 * seed,
    }
    (folder / "result.json").write_text(json.dumps(row))
    return row


def test_figures_are_written_as_png(tmp_path):
    rng = np.random.default_rng(0)
    rows = [fake_trial(tmp_path, m, s, rng) for m in ("lora", "bayeslora") for s in (0, 1)]
    rows.append({"trial_id": "x", "method": "lora", "task": "arc-e", "seed": 2, "status": "failed"})
    paths = make_figures(tmp_path, rows)
    names = sorted(p.name for p in paths)
    assert names == [
        "accuracy_vs_ece_arc-e.png",
        "effective_rank_arc-e.png",
        "reliability_arc-e.png",
        "risk_coverage_arc-e.png",
    ]
    for path in paths:
        assert path.parent == tmp_path / "figures"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_figures_from_the_run_directory_alone(tmp_path):
    rng = np.random.default_rng(1)
    fake_trial(tmp_path, "lora", 0, rng)
    assert len(make_figures(tmp_path)) == 4


def test_reliability_grid_has_at_most_three_per_row_and_the_per_bin_counts():
    from PIL import Image

    from lrvd_bench.figures import DPI, grid_shape, reliability_grid, save_figure

    assert [grid_shape(n) for n in (1, 2, 3, 4, 9, 10)] == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (4, 3)]
    # confidences 0.55 (bin 8) x 3, 0.9 (bin 13) x 2, 1.0 (last bin) x 1
    conf = np.array([0.55, 0.55, 0.55, 0.9, 0.9, 1.0])
    probs, labels = np.stack([conf, 1 - conf], 1), np.array([0, 1, 0, 0, 0, 0])
    pooled = {f"m{i}": (probs, labels) for i in range(9)}
    fig = reliability_grid(pooled, {}, "t")
    count_axes = [ax for ax in fig.axes if ax.get_ylabel() == "count" or ax.get_xlabel() == "confidence"]
    assert len(count_axes) == 9
    heights = [round(p.get_height()) for p in count_axes[0].patches]
    assert {i: h for i, h in enumerate(heights) if h} == {8: 3, 13: 2, 14: 1}
    assert sorted(t.get_text() for t in count_axes[0].texts) == ["1", "2", "3"]
    width, height = fig.get_size_inches() * DPI
    assert width <= 3 * 3.3 * DPI + 1 and height > width  # 3 x 3, not a 1 x 9 strip
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        w, h = Image.open(save_figure(fig, Path(d) / "r.png")).size
    assert w <= 1200


def test_rank_curves_are_one_panel_per_method_with_the_seed_band():
    import pandas as pd

    from lrvd_bench.figures import rank_curve_grid

    curves = {
        m: pd.DataFrame({"step": [0, 10], "mean": [8.0, 4.0 + i], "std": [0.0, 1.0], "n_seeds": [2, 2]})
        for i, m in enumerate(("a", "b", "c", "d"))
    }
    fig = rank_curve_grid(curves, "t")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4 and len(fig.axes) == 6  # 2 x 3, two empty cells hidden
    for ax, (method, g) in zip(visible, curves.items()):
        (line,) = ax.get_lines()
        assert list(line.get_ydata()) == list(g["mean"]) and ax.get_title() == f"{method} (2 seeds)"
        assert len(ax.collections) == 1  # the ±std band
    assert visible[0].get_shared_y_axes().joined(visible[0], visible[3])


def test_reliability_title_shows_the_tables_ece_beside_the_pooled_one(tmp_path, monkeypatch):
    """Seed 0: confidences 0.9 (right), 0.8 (wrong): ECE (0.1 + 0.8) / 2 = 0.45; seed 1: 0.6 (right): 0.4.
    The table's ECE is their mean, 0.425; the pooled predictions' ECE is (0.1 + 0.8 + 0.4) / 3 = 0.433."""
    from lrvd_bench import plots
    from lrvd_bench.figures import pyplot

    rows = []
    for seed, probs, labels, ece in ((0, [[0.9, 0.1], [0.8, 0.2]], [0, 1], 0.45), (1, [[0.6, 0.4]], [0], 0.4)):
        trial_id = f"lora-arc-e-s{seed}"
        (tmp_path / "trials" / trial_id).mkdir(parents=True)
        np.savez(tmp_path / "trials" / trial_id / "predictions.npz", probs=np.array(probs), labels=np.array(labels))
        rows.append({"trial_id": trial_id, "method": "lora", "task": "arc-e", "seed": seed, "status": "ok", "ece": ece})
    shown = {}
    monkeypatch.setattr(plots, "reliability_grid", lambda pooled, titles, *a: shown.update(titles) or pyplot().figure())
    (tmp_path / "figures").mkdir()
    plots.reliability_diagrams(tmp_path, rows, tmp_path / "figures")
    assert shown["lora"] == "lora\nECE 0.433 pooled (n=3);\ntable: 0.425, mean of 2 seeds"
    assert plots.reliability_title("lora", 0.45, [0.45], 2) == "lora\nECE 0.450, n=2"
