"""Ensembles built from the sweep's own LoRA trials: which trials are reused, and the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lrvd_bench.config import TrialSpec
from lrvd_bench.ensembles import materialize, plan_reuse


def spec(method, seed, **kw):
    base = dict(method=method, task="arc-e", model="minilm", seed=seed, adapter={"r": 8}, train={"lr": 1e-3})
    base = {**base, **kw}
    base["train"] = {**base["train"], "seed": seed}  # ExperimentConfig.expand copies the seed in
    return TrialSpec(**base)


def test_plan_reuse_takes_ensembles_out_of_ray_when_enough_lora_seeds_exist():
    specs = (
        [spec("lora", s) for s in (0, 1, 2, 3)] + [spec("lora-ensemble", s) for s in (0, 1)] + [spec("bayeslora", 0)]
    )
    keep, reused = plan_reuse(specs)
    lora = {s.seed: s.trial_id for s in specs if s.method == "lora"}
    ens = {s.seed: s.trial_id for s in specs if s.method == "lora-ensemble"}
    # default M = 3, members rotate over the sorted LoRA seeds
    assert reused == {ens[0]: [lora[0], lora[1], lora[2]], ens[1]: [lora[1], lora[2], lora[3]]}
    assert len(keep) == len(specs)


def test_plan_reuse_drops_duplicate_member_sets_and_respects_opt_out_and_mismatch():
    specs = [spec("lora", s) for s in (0, 1)] + [
        spec("lora-ensemble", s, method_params={"n_members": 2}) for s in (0, 1)
    ]
    keep, reused = plan_reuse(specs)
    assert len(reused) == 1 and len(keep) == 3  # seed 1 would be the same two members
    opt_out = [spec("lora", s) for s in (0, 1)] + [
        spec("lora-ensemble", 0, method_params={"n_members": 2, "reuse_trials": False})
    ]
    assert plan_reuse(opt_out)[1] == {}
    other_lr = [spec("lora", s, train={"lr": 5e-4}) for s in (0, 1)] + [
        spec("lora-ensemble", 0, method_params={"n_members": 2})
    ]
    assert plan_reuse(other_lr)[1] == {}
    too_few = [spec("lora", 0)] + [spec("lora-ensemble", 0)]
    assert plan_reuse(too_few)[1] == {}


def _member(trials, s, probs, train_time):
    folder = trials / s.trial_id
    folder.mkdir(parents=True)
    labels = np.array([0, 1, 1])
    np.savez_compressed(folder / "predictions.npz", probs=np.array(probs), labels=labels)
    row = {
        "trial_id": s.trial_id,
        "method": "lora",
        "seed": s.seed,
        "status": "ok",
        "final_train_loss": 0.5,
        "rank_per_module": {"q": 8},
        "trainable_params": 100,
        "train_time_s": train_time,
        "time_per_step_s": train_time / 10,
        "eval_time_s": 1.0,
        "peak_memory_mb": 50.0 + s.seed,
        "n_eval": 3,
    }
    (folder / "result.json").write_text(json.dumps(row))


def test_materialize_averages_member_probabilities_and_sums_costs(tmp_path):
    specs = [spec("lora", s) for s in (0, 1)] + [spec("lora-ensemble", 0, method_params={"n_members": 2})]
    keep, reused = plan_reuse(specs)
    trials = tmp_path / "trials"
    p0 = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]
    p1 = [[0.7, 0.3], [0.2, 0.8], [0.4, 0.6]]
    _member(trials, specs[0], p0, 10.0)
    _member(trials, specs[1], p1, 12.0)
    materialize(tmp_path, keep, reused)
    ens_dir = trials / specs[2].trial_id
    row = json.loads((ens_dir / "result.json").read_text())
    mean = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]], dtype=torch.float64)
    assert row["method"] == "lora-ensemble" and row["status"] == "ok"
    assert row["accuracy"] == pytest.approx(1.0)  # argmax of the mean: 0, 1, 1
    assert row["nll"] == pytest.approx(float(-torch.log(mean[[0, 1, 2], [0, 1, 1]]).mean()))
    assert row["train_time_s"] == pytest.approx(22.0) and row["trainable_params"] == 200
    assert row["peak_memory_mb"] == 51.0 and row["rank_per_module"] == {"q": 16}
    with np.load(ens_dir / "predictions.npz") as f:
        assert np.allclose(f["probs"], mean.numpy())


def test_materialize_records_failure_when_a_member_is_missing(tmp_path):
    specs = [spec("lora", s) for s in (0, 1)] + [spec("lora-ensemble", 0, method_params={"n_members": 2})]
    keep, reused = plan_reuse(specs)
    _member(tmp_path / "trials", specs[0], [[0.9, 0.1]] * 3, 1.0)
    materialize(tmp_path, keep, reused)
    error = json.loads((tmp_path / "trials" / specs[2].trial_id / "error.json").read_text())
    assert error["status"] == "failed" and "did not all finish" in error["error"]
