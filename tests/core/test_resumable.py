"""Resumable training: a run stopped after a checkpoint and continued in a fresh model and method ends
bit for bit where the uninterrupted run ends, for every registered method and for the method states
that change mid-training (BayesLoRA's pruning and optimizer rebuilds, AdaLoRA's allocation, IVON's
Hessian, checkpoint selection)."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, TrainConfig, TrainPlan, get_method, list_methods
from lrvd.errors import LRVDError
from lrvd.resumable import checkpoint_step, has_checkpoint
from lrvd.training import fit, predict, seed_everything

STEPS, EVERY, STOP_AT = 12, 4, 8


class Preempted(Exception):
    """Raised from ``on_checkpoint``: the run dies right after a checkpoint, as a killed trial does."""


def _train(name, params, tmp, stop_at=None, every=EVERY, capture=None, **train):
    seed_everything(0)
    loader = make_toy_loader(32, batch_size=8)
    cfg = TrainConfig(lr=3e-2, max_steps=STEPS, checkpoint_every=every, log_every=1, rank_log_interval=2, **train)
    plan = TrainPlan.from_loader_length(len(loader), 32, cfg)
    method = get_method(name)(**params)
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=4, alpha=8), plan)
    logged = []

    def stop(step):
        if capture is not None:
            capture["model"] = model
        if step == stop_at:
            raise Preempted(step)

    val = make_toy_loader(16, seed=2, shuffle=False) if train.get("eval_every") else None
    result = fit(
        method,
        model,
        loader,
        plan,
        device="cpu",
        progress=False,
        on_log=logged.append,
        val_loader=val,
        checkpoint_dir=tmp / "ckpt",
        on_checkpoint=stop,
    )
    method.after_training(model, loader)
    probs, _ = predict(method, model, make_toy_loader(16, seed=1, shuffle=False), n_samples=2, progress=False, seed=0)
    return method, model, result, logged, probs


def _assert_same_run(name, params, tmp, **train):
    _, model_a, res_a, log_a, probs_a = _train(name, params, tmp / "a", every=0, **train)
    with pytest.raises(Preempted):
        _train(name, params, tmp / "b", stop_at=STOP_AT, **train)
    assert checkpoint_step(tmp / "b" / "ckpt") == STOP_AT
    _, model_b, res_b, log_b, probs_b = _train(name, params, tmp / "b", **train)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert torch.equal(probs_a, probs_b)
    assert res_b.loss_history == res_a.loss_history
    assert res_b.rank_history == res_a.rank_history
    assert (res_b.final_loss, res_b.final_nll, res_b.best_step) == (res_a.final_loss, res_a.final_nll, res_a.best_step)
    assert log_b == log_a  # the records before the checkpoint are replayed, the rest follow
    assert res_b.wall_time_s > 0


@pytest.mark.parametrize("name", list_methods())
def test_every_method_resumes_to_the_uninterrupted_run(name, tmp_path):
    _assert_same_run(name, {}, tmp_path)


@pytest.mark.parametrize(
    "after_prune", ["keep-moments", "rebuild-on-change", "rebuild-every-check"], ids=lambda v: f"after_prune={v}"
)
def test_bayeslora_resumes_across_prunes_and_optimizer_rebuilds(after_prune, tmp_path):
    # a check every 4 steps from step 4, τ high enough to prune: the checkpoint at 8 follows a prune,
    # so shrunk layers, the rebuilt optimizer, the schedule lag and the dropped next gradient all carry over
    params = {"prune_every": 4, "prune_start": 0.0, "tau": -1.0, "after_prune": after_prune}
    _assert_same_run("bayeslora", params, tmp_path)


def test_bayeslora_checkpoint_really_holds_a_pruned_rank(tmp_path):
    params = {"prune_every": 4, "prune_start": 0.0, "tau": -1.0}
    with pytest.raises(Preempted):
        _train("bayeslora", params, tmp_path, stop_at=STOP_AT)
    from lrvd.adapter_io import read_meta

    ranks = read_meta(tmp_path / "ckpt" / "adapter")["extra"]["ranks"]
    assert min(ranks.values()) < 4  # the resume test above covers a shape change, not just values


@pytest.mark.parametrize(
    "schedule",
    [
        # budgeting from step 1, re-allocated every 2 steps, final mask at step 10: the checkpoint at 8 falls
        # between allocations, so the importance EMAs the allocation at 9 reads must carry over
        {"tinit": 0.1, "tfinal": 0.17, "deltaT": 0.17},
        # final mask at step 7: the fixed rank pattern must carry over the checkpoint at 8
        {"tinit": 0.1, "tfinal": 0.4, "deltaT": 0.17},
    ],
    ids=["budgeting", "final-phase"],
)
def test_adalora_resumes_inside_its_budget_schedule(schedule, tmp_path):
    _assert_same_run("adalora", schedule, tmp_path)


def test_adalora_checkpoint_restores_the_allocator_emas(tmp_path):
    """The budgeting window's sensitivity EMAs at the checkpoint are the restored allocator's (the
    allocation after it reads them; on a tiny model the top-b set can come out the same without them)."""
    from lrvd.resumable import load_checkpoint
    from lrvd_baselines.adalora import ALLOCATOR_EMAS
    from lrvd_baselines.peft_adapters import peft_root

    schedule = {"tinit": 0.1, "tfinal": 0.17, "deltaT": 0.17}
    seen = {}
    with pytest.raises(Preempted):
        _train("adalora", schedule, tmp_path, stop_at=STOP_AT, capture=seen)
    saved = {key: getattr(peft_root(seen["model"]).rankallocator, key) for key in ALLOCATOR_EMAS}
    assert all(saved.values())  # inside the budgeting phase: the EMAs are live
    method = get_method("adalora")(**schedule)
    plan = TrainPlan.from_loader_length(4, 32, TrainConfig(max_steps=STEPS))
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=4, alpha=8), plan)
    method.load_training_state(model, load_checkpoint(tmp_path / "ckpt", method, model)["method"])
    for key in ALLOCATOR_EMAS:
        restored = getattr(peft_root(model).rankallocator, key)
        assert restored.keys() == saved[key].keys()
        assert all(torch.equal(restored[n], saved[key][n]) for n in restored)


def test_checkpoint_selection_state_carries_over(tmp_path):
    _assert_same_run("lora", {}, tmp_path, eval_every=3)


def test_no_checkpoint_without_a_folder_or_when_off(tmp_path):
    _train("lora", {}, tmp_path, every=0)
    assert not has_checkpoint(tmp_path / "ckpt")


def test_checkpoint_every_must_not_be_negative():
    with pytest.raises(LRVDError, match="checkpoint_every must be >= 0"):
        TrainConfig(checkpoint_every=-1)
