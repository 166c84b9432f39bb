"""Checkpoint selection inside ``fit``: score on the validation split every ``eval_every`` steps, restore the best."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, LRVDError, TrainConfig, TrainPlan
from lrvd.checkpoint import BestCheckpoint, restore_state, snapshot_state
from lrvd.methods.bayeslora import BayesLoRA
from lrvd.metrics import accuracy
from lrvd.pruning import prune_layer
from lrvd.training import fit, predict


class SabotagedBayesLoRA(BayesLoRA):
    """BayesLoRA whose last step negates the task head: every prediction flips, the final state is the worst."""

    name = "sabotaged-bayeslora"

    def on_step_end(self, model, optimizer, step):
        logs = super().on_step_end(model, optimizer, step)
        if step == self.plan.total_steps:
            with torch.no_grad():
                for p in model.head_parameters():
                    p.neg_()
        return logs


def _trainable(model):
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def _train(eval_every: int, metric: str = "val_accuracy", total: int = 30, n_samples: int = 0):
    plan = TrainPlan(
        total, 64, TrainConfig(max_steps=total, lr=1e-2, eval_every=eval_every, checkpoint_metric=metric, log_every=7)
    )
    method = SabotagedBayesLoRA(n_samples=n_samples)
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=2), plan)
    val = make_toy_loader(n=32, seed=1, shuffle=False)
    seen, logged = {}, []

    def on_log(record):
        logged.append(record)
        if "val_accuracy" in record:  # the state that was just scored
            seen[record["step"]] = _trainable(model)

    result = fit(method, model, make_toy_loader(), plan, device="cpu", progress=False, on_log=on_log, val_loader=val)
    return method, model, val, result, seen, logged


def test_best_checkpoint_is_restored_when_the_final_state_is_worse():
    method, model, val, result, seen, logged = _train(eval_every=10)
    assert [r["step"] for r in result.val_history] == [10, 20, 30]
    accs = {r["step"]: r["val_accuracy"] for r in result.val_history}
    nlls = {r["step"]: r["val_nll"] for r in result.val_history}
    assert accs[30] < 0.5 < max(accs[10], accs[20])  # the flipped head predicts the wrong class
    expected = max((10, 20), key=lambda s: (accs[s], -nlls[s], -s))  # ties: lower NLL, then earlier
    assert result.best_step == expected and result.best_scores["val_accuracy"] == accs[expected]
    for name, value in _trainable(model).items():
        torch.testing.assert_close(value, seen[expected][name], rtol=0, atol=0)
    probs, labels = predict(method, model, val, device="cpu", progress=False)
    assert accuracy(probs, labels) == accs[expected]
    # scores join the log records (log_every=7 alone would give 7, 14, 21, 28, 30)
    assert [r["step"] for r in logged] == [7, 10, 14, 20, 21, 28, 30]
    assert "val_nll" in logged[1] and "val_nll" not in logged[0]


def test_val_nll_picks_the_lowest_nll_and_scoring_leaves_training_unchanged():
    # MC scoring (2 posterior draws) consumes the global RNG: the forked RNG must hide it from training
    _, _, _, result, _, logged = _train(eval_every=5, metric="val_nll", n_samples=2)
    nlls = {r["step"]: r["val_nll"] for r in result.val_history}
    assert result.best_step == min(nlls, key=lambda s: (nlls[s], s)) != 30
    _, _, _, plain, _, _ = _train(eval_every=0, n_samples=2)
    assert plain.best_step is None and plain.val_history == []
    losses = {r["step"]: r["loss"] for r in plain.loss_history}
    assert all(r["loss"] == losses[r["step"]] for r in logged if r["step"] in losses)


def test_eval_every_without_validation_split_is_an_error():
    plan = TrainPlan(2, 16, TrainConfig(max_steps=2, eval_every=1))
    method = BayesLoRA()
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=2), plan)
    with pytest.raises(LRVDError, match="train.eval_every=1 needs a validation split"):
        fit(method, model, make_toy_loader(n=16), plan, device="cpu", progress=False)
    with pytest.raises(LRVDError, match="unknown checkpoint_metric 'val_acc'; valid choices: val_accuracy, val_nll"):
        TrainConfig(checkpoint_metric="val_acc")


def test_restore_undoes_rank_pruning_and_restores_optimizer_state():
    plan = TrainPlan(2, 16, TrainConfig(max_steps=2))
    method = BayesLoRA()
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=3), plan)
    layer = next(m for m in model.modules() if type(m).__name__ == "LRVDLinear")
    with torch.no_grad():
        layer.A_mu.normal_()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(next(iter(make_toy_loader(n=8)))).sum().backward()
    optimizer.step()
    before = layer.A_mu.detach().clone()
    moments = {k: v["exp_avg"].clone() for k, v in enumerate(optimizer.state.values())}
    state = snapshot_state(model, optimizer)
    optimizer.step()  # moves weights and moments
    restore_state(model, state, optimizer)
    torch.testing.assert_close(layer.A_mu.detach(), before, rtol=0, atol=0)
    assert all(torch.equal(v["exp_avg"], moments[k]) for k, v in enumerate(optimizer.state.values()))
    prune_layer(layer, torch.tensor([True, False, True]))
    assert layer.r == 2
    restore_state(model, state, optimizer)
    assert layer.r == 3 and torch.equal(layer.A_mu.detach(), before)


def test_best_checkpoint_ties_go_to_the_other_metric_then_the_earlier_step():
    model = torch.nn.Linear(2, 2)
    best = BestCheckpoint("val_accuracy")
    assert best.offer(5, {"val_accuracy": 0.5, "val_nll": 0.9}, model)
    assert not best.offer(10, {"val_accuracy": 0.5, "val_nll": 0.9}, model)  # exact tie: keep the earlier
    assert best.offer(15, {"val_accuracy": 0.5, "val_nll": 0.8}, model)  # tie on accuracy, lower NLL
    assert not best.offer(20, {"val_accuracy": 0.4, "val_nll": 0.1}, model)
    assert best.step == 15
    by_nll = BestCheckpoint("val_nll")
    by_nll.offer(5, {"val_accuracy": 0.9, "val_nll": 0.5}, model)
    assert by_nll.offer(10, {"val_accuracy": 0.1, "val_nll": 0.4}, model) and by_nll.step == 10
