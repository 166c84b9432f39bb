"""Evaluation under distribution shift: a trial trained on one task is scored on other tasks' evaluation
splits (``eval_tasks``), and the leaderboard gets one row per (method, training task, evaluation task) with the
uncertainty and OOD-detection columns recomputed from the saved predictions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lrvd.metrics import classification_metrics
from lrvd_bench.config import load_config
from lrvd_bench.predictions import read_predictions, write_predictions
from lrvd_bench.tasks import get_task
from lrvd_bench.trial import run_trial

SETTINGS = {
    "tasks": ["obqa"],
    "seeds": [0, 1],
    "limit_train": 24,
    "limit_eval": 10,
    "max_length": 48,
    "eval_batch_size": 5,
    "device": "cpu",
    "n_samples": 3,
    "train.max_steps": 3,
    "train.batch_size": 4,
}


@pytest.fixture(scope="module")
def shifted_run(tiny_mc_model, tmp_path_factory):
    """lora and mc-dropout-lora × 2 seeds trained on obqa, scored on arc-c and mmlu-chem too; and one lora trial
    with the same settings but no eval_tasks (the control: training and the obqa scores must not change)."""
    run_dir = tmp_path_factory.mktemp("shift") / "run"
    config = load_config(
        None,
        {
            **SETTINGS,
            "methods": ["lora", "mc-dropout-lora"],
            "model": str(tiny_mc_model),
            "eval_tasks": "arc-c,mmlu-chem",
            # every dropout layer: after 3 steps the adapter path is near 0, and draws would barely differ
            "method_params.mc-dropout-lora.all_dropout": True,
        },
    )
    rows = [run_trial(spec, run_dir / "trials" / spec.trial_id) for spec in config.expand()]
    (run_dir / "config.yaml").write_text(config.to_yaml())
    control = load_config(None, {**SETTINGS, "methods": ["lora"], "seeds": [0], "model": str(tiny_mc_model)})
    [spec] = control.expand()
    control_dir = tmp_path_factory.mktemp("control") / spec.trial_id
    return run_dir, rows, run_trial(spec, control_dir), control_dir


def test_trial_scores_each_evaluation_task_without_changing_its_own(shifted_run):
    run_dir, rows, control, control_dir = shifted_run
    lora0 = next(r for r in rows if r["method"] == "lora" and r["seed"] == 0)
    assert lora0["eval_tasks"] == ["arc-c", "mmlu-chem"] and control["eval_tasks"] == []
    # training and the in-distribution scores are the control's: the extra sets are scored afterwards
    for key in ("final_train_loss", "accuracy", "ece", "nll", "brier"):
        assert lora0[key] == control[key], key
    own = read_predictions(run_dir / "trials" / lora0["trial_id"], "obqa")
    np.testing.assert_array_equal(own.probs, read_predictions(control_dir, "obqa").probs)
    for name, n_classes in (("arc-c", 5), ("mmlu-chem", 4)):
        saved = read_predictions(run_dir / "trials" / lora0["trial_id"], "obqa", name)
        assert (saved.task, saved.eval_task, saved.shift) == ("obqa", name, "ood")
        assert saved.probs.shape == (10, n_classes) and saved.sample_probs is None  # lora: deterministic
        task = get_task(name)
        expected_ids = [ex.id for ex in task.load("eval")]
        assert set(saved.ids) <= set(expected_ids) and len(set(saved.ids)) == 10
        labels = {ex.id: ex.label for ex in task.load("eval")}
        assert saved.labels.tolist() == [labels[i] for i in saved.ids]
        scores = lora0["evaluations"][name]
        metrics = classification_metrics(torch.as_tensor(saved.probs), torch.as_tensor(saved.labels))
        assert {k: scores[k] for k in metrics} == pytest.approx(metrics, abs=1e-12)
        assert scores["n_eval"] == 10 and scores["predictive"] == "deterministic"


def test_sampled_trials_save_their_draws(shifted_run):
    run_dir, rows, _, _ = shifted_run
    sampled = next(r for r in rows if r["method"] == "mc-dropout-lora")
    assert sampled["predictive"] == "sampled" and sampled["evaluations"]["arc-c"]["predictive"] == "sampled"
    for name in ("obqa", "arc-c"):
        saved = read_predictions(run_dir / "trials" / sampled["trial_id"], "obqa", name)
        assert saved.sample_probs.shape == (3, *saved.probs.shape)
        np.testing.assert_allclose(saved.sample_probs.mean(0), saved.probs, atol=2e-3)  # float16 draws


def test_leaderboard_has_a_row_per_evaluation_task_with_columns_from_the_files(shifted_run):
    from lrvd_bench.leaderboard import gather_rows, write_leaderboard

    run_dir, _, _, _ = shifted_run
    board = write_leaderboard(gather_rows(run_dir), run_dir)
    assert sorted(zip(board["eval_task"], board["shift"], board["method"])) == [
        (t, s, m)
        for t, s in (("arc-c", "ood"), ("mmlu-chem", "ood"), ("obqa", "id"))
        for m in ("lora", "mc-dropout-lora")
    ]
    row = board[(board["method"] == "mc-dropout-lora") & (board["eval_task"] == "arc-c")].iloc[0]
    aurocs, mis = [], []
    for seed in (0, 1):
        trial = next((run_dir / "trials").glob(f"mc-dropout-lora-obqa-s{seed}-*"))
        ind, ood = read_predictions(trial, "obqa"), read_predictions(trial, "obqa", "arc-c")
        # independent formulas: OOD positive, score -max p; MI = H(mean draw) - mean H(draw)
        scores = np.concatenate([-ind.probs.max(-1), -ood.probs.max(-1)])
        aurocs.append(roc_auc_score(np.r_[np.zeros(len(ind.probs)), np.ones(len(ood.probs))], scores))
        draws = ood.sample_probs
        mean = draws.mean(0)
        entropy = lambda p: -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)  # noqa: E731
        mis.append(float((entropy(mean) - entropy(draws).mean(0)).mean()))
    assert row["ood_auroc_maxprob_mean"] == pytest.approx(np.mean(aurocs), abs=1e-12)
    assert np.mean(mis) > 1e-7  # real draws, so MI computed from the mean alone (exactly 0) fails
    assert row["mi_mean"] == pytest.approx(np.mean(mis), rel=1e-6, abs=1e-12)
    lora = board[(board["method"] == "lora") & (board["eval_task"] == "arc-c")].iloc[0]
    assert lora["mi_mean"] == 0.0 and lora["ood_auroc_mi_mean"] == 0.5  # deterministic: MI detects nothing
    assert board[board["shift"] == "id"]["ood_auroc_maxprob_mean"].isna().all()
    # paired per evaluation set: one Holm family per (training task, evaluation task) table
    assert set(board.loc[board["method"] == "mc-dropout-lora", "delta_family"]) == {4}
    md = (run_dir / "leaderboard.md").read_text()
    assert "| obqa → arc-c | mc-dropout-lora |" in md and "OOD AUROC maxprob" in md


def test_bench_leaderboard_rebuilds_the_same_tables_from_the_files(shifted_run, tmp_path):
    import shutil

    from lrvd_bench import cli
    from lrvd_bench.leaderboard import gather_rows, write_leaderboard

    run_dir, _, _, _ = shifted_run
    write_leaderboard(gather_rows(run_dir), run_dir)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ("leaderboard.csv", "leaderboard.md"):
        (copy / name).unlink()
    assert cli.main(["leaderboard", str(copy)]) == 0
    assert (copy / "leaderboard.csv").read_text() == (run_dir / "leaderboard.csv").read_text()
    assert (copy / "leaderboard.md").read_text() == (run_dir / "leaderboard.md").read_text()


def test_closed_form_and_old_predictions_leave_mi_empty(tmp_path):
    from lrvd_bench.evaluation_rows import evaluation_rows

    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]], dtype=np.float32)
    labels = [0, 1, 1]
    for name, predictive in (("closed", "closed-form"), ("det", "deterministic")):
        write_predictions(tmp_path / "trials" / name, "t", "t", probs, labels, ["a", "b", "c"])
        rows = evaluation_rows([{"trial_id": name, "task": "t", "status": "ok", "predictive": predictive}], tmp_path)
        expected_entropy = float(-(probs * np.log(probs)).sum(-1).mean())
        assert rows[0]["entropy"] == pytest.approx(expected_entropy, abs=1e-6)
        if predictive == "closed-form":
            assert math.isnan(rows[0]["mi"]) and math.isnan(rows[0]["expected_entropy"])
        else:
            assert rows[0]["mi"] == 0.0 and rows[0]["expected_entropy"] == rows[0]["entropy"]
    old = evaluation_rows([{"trial_id": "det", "task": "t", "status": "ok"}], tmp_path)  # before `predictive`
    assert math.isnan(old[0]["mi"])


def test_spec_hash_is_unchanged_without_evaluation_tasks():
    base = load_config(None, {"tasks": ["obqa"]}).expand()[0]
    data = base.to_dict()
    data.pop("eval_tasks")
    legacy = json.dumps({k: v for k, v in data.items() if k not in base.UNHASHED and k != "stage"}, sort_keys=True)
    import hashlib

    assert base.config_hash == hashlib.sha256(legacy.encode()).hexdigest()[:12]
    shifted = load_config(None, {"tasks": ["obqa"], "eval_tasks": "arc-c"}).expand()[0]
    assert shifted.config_hash != base.config_hash
