"""Every registered method (baselines, bayeslora, third-party) trains on the same tiny task and
produces a leaderboard metric row through the shared loop."""

from __future__ import annotations

import math

import pytest

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, TrainConfig, TrainPlan, get_method, list_methods
from lrvd.metrics import classification_metrics
from lrvd.training import fit, predict, seed_everything


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_produces_a_metric_row(name):
    seed_everything(0)
    loader = make_toy_loader(32, batch_size=8)
    plan = TrainPlan.from_loader_length(len(loader), 32, TrainConfig(lr=3e-2, max_steps=12))
    method = get_method(name)()
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=4, alpha=8), plan)
    result = fit(method, model, loader, plan, device="cpu", progress=False)
    method.after_training(model, loader)
    probs, labels = predict(method, model, make_toy_loader(16, seed=1, shuffle=False), n_samples=2, progress=False)
    row = classification_metrics(probs, labels)
    assert set(row) == {"accuracy", "ece", "nll", "brier", "mcc"}
    assert all(math.isfinite(v) for v in row.values())
    assert math.isfinite(result.final_loss)
    assert sum(method.rank_report(model).values()) > 0
