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
    row = {"trial_id": trial_id, "method": method, "task": "arc-e", "seed": seed, "status": "ok",
           "accuracy": float((probs.argmax(1) == labels).mean()), "ece": 0.1 + 0.01 * seed}
    (folder / "result.json").write_text(json.dumps(row))
    return row


def test_figures_are_written_as_png(tmp_path):
    rng = np.random.default_rng(0)
    rows = [fake_trial(tmp_path, m, s, rng) for m in ("lora", "bayeslora") for s in (0, 1)]
    rows.append({"trial_id": "x", "method": "lora", "task": "arc-e", "seed": 2, "status": "failed"})
    paths = make_figures(tmp_path, rows)
    names = sorted(p.name for p in paths)
    assert names == ["accuracy_vs_ece_arc-e.png", "effective_rank_arc-e.png", "reliability_arc-e.png"]
    for path in paths:
        assert path.parent == tmp_path / "figures"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_figures_from_the_run_directory_alone(tmp_path):
    rng = np.random.default_rng(1)
    fake_trial(tmp_path, "lora", 0, rng)
    assert len(make_figures(tmp_path)) == 3
