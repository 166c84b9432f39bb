"""lora-temp-scaling: the temperature fit and the method around it."""

from __future__ import annotations


import pytest
import torch

from lrvd.metrics import accuracy, negative_log_likelihood
from lrvd.protocol import AdapterSpec, TrainConfig, TrainPlan
from lrvd.registry import get_method, list_methods
from lrvd.training import fit, predict
from lrvd_baselines.lora_temp_scaling import LoRATempScaling, fit_temperature
from conftest import TinyBertClassifier, make_toy_loader


def overconfident_logits(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A calibrated-ish 3-class model's logits scaled x10: right argmax often, far too confident."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g)
    logits[torch.arange(n), labels] += 1.0
    return 10.0 * logits, labels


def test_temperature_matches_grid_minimum_and_lowers_nll():
    logits, labels = overconfident_logits()
    t = fit_temperature(logits, labels)
    grid = torch.linspace(1.0, 30.0, 2901, dtype=torch.float64)
    nll = torch.stack([torch.nn.functional.cross_entropy(logits.double() / g, labels) for g in grid])
    assert t > 1.0
    assert t == pytest.approx(float(grid[nll.argmin()]), abs=0.02)
    before = negative_log_likelihood(torch.softmax(logits, -1), labels)
    after = negative_log_likelihood(torch.softmax(logits / t, -1), labels)
    assert after < before
    assert accuracy(torch.softmax(logits / t, -1), labels) == accuracy(torch.softmax(logits, -1), labels)


def test_method_fits_on_val_loader_and_keeps_argmax(tmp_path):
    assert "lora-temp-scaling" in list_methods() and get_method("lora-temp-scaling") is LoRATempScaling
    method = LoRATempScaling()
    assert method.needs_validation
    train, val = make_toy_loader(32, seed=0), make_toy_loader(16, seed=1, shuffle=False)
    plan = TrainPlan(total_steps=4, n_train=32, train=TrainConfig(lr=5e-3, mixed_precision="no"))
    model = method.attach(TinyBertClassifier(), AdapterSpec(r=2, alpha=4), plan)
    fit(method, model, train, plan, device="cpu", progress=False)
    method.after_training(model, train, val)
    assert method.temperature != 1.0
    probs, labels = predict(method, model, val, device="cpu", progress=False)
    raw = torch.cat([torch.softmax(model(b).float(), -1) for b in val])
    assert torch.equal(probs.argmax(-1), raw.argmax(-1))
    method.save_adapter(model, tmp_path)
    again = LoRATempScaling()
    again.load_adapter(again.attach(TinyBertClassifier(), AdapterSpec(r=2, alpha=4), plan), tmp_path)
    assert again.temperature == pytest.approx(method.temperature)


def test_missing_val_loader_warns_and_uses_train():
    method = LoRATempScaling()
    plan = TrainPlan(total_steps=1, n_train=16, train=TrainConfig(mixed_precision="no"))
    model = method.attach(TinyBertClassifier(), AdapterSpec(r=2, alpha=4), plan)
    with pytest.warns(UserWarning, match="no validation loader"):
        method.after_training(model, make_toy_loader(16))
    assert method.temperature > 0
