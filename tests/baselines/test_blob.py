"""BLoB: closed-form KL, flipout noise, MC predictive, parameter count, and training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import TinyBertClassifier, make_toy_loader
from lrvd.protocol import AdapterSpec, TrainConfig, TrainPlan
from lrvd.registry import get_method, list_methods
from lrvd.training import fit
from lrvd_baselines.blob import BLoB, BLoBLinear, kl_weight
from lrvd_baselines.lora import LoRA

SPEC = AdapterSpec(r=2, alpha=4)


def plan(steps: int = 1, n_train: int = 32) -> TrainPlan:
    return TrainPlan(total_steps=steps, n_train=n_train, train=TrainConfig(lr=1e-2, mixed_precision="no", warmup_ratio=0.0))


def test_kl_equals_closed_form_by_hand():
    layer = BLoBLinear(nn.Linear(2, 3), r=1, scaling=1.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[0.3, -0.5]]))
        layer.lora_A_std_sqrt.copy_(torch.tensor([[0.2, 0.4]]))  # std = 0.04, 0.16
    sp = 0.2
    expected = sum(
        math.log(sp / s) + (s**2 + m**2) / (2 * sp**2) - 0.5 for m, s in [(0.3, 0.04), (-0.5, 0.16)]
    )
    assert float(layer.kl(sp)) == pytest.approx(expected, rel=1e-5)


def test_flipout_noise_differs_across_examples():
    torch.manual_seed(0)
    layer = BLoBLinear(nn.Linear(8, 4), r=2, scaling=1.0, init_eps=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(1, 8).repeat(6, 1)  # six identical examples
    layer.sampling = False
    mean = layer(x)
    layer.sampling = True
    noise = layer(x) - mean
    assert noise.abs().max() > 0
    assert not torch.allclose(noise[0], noise[1]) and torch.unique(noise, dim=0).shape[0] > 1


def test_kl_weights_sum_to_one_per_cycle_and_peak_at_its_end():
    w = [kl_weight(i, 20) for i in range(1, 21)]
    assert sum(w) == pytest.approx(1.0, rel=1e-6) and w[-1] == max(w) and kl_weight(21, 20) == w[0]
    assert kl_weight(5000, 5000) == pytest.approx(0.5)  # no overflow for long cycles


def test_extra_parameters_equal_size_of_A_and_predictive_differs_from_mean():
    assert "blob" in list_methods() and get_method("blob") is BLoB
    method = BLoB()
    model = method.attach(TinyBertClassifier(), SPEC, plan())
    lora_model = LoRA().attach(TinyBertClassifier(), SPEC, plan())
    counts = method.parameter_counts(model)
    size_a = 2 * 2 * SPEC.r * 32  # 2 layers x {query, value} x [r, hidden]
    assert counts["variational"] == size_a
    assert counts["trainable"] - LoRA().parameter_counts(lora_model)["trainable"] == size_a
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, BLoBLinear):
                layer.lora_B.normal_()
                layer.lora_A_std_sqrt.fill_(0.5)
    batch = next(iter(make_toy_loader(8, shuffle=False)))
    model.eval()
    mean = method.predict_proba(model, batch, n_samples=0)
    sampled = method.predict_proba(model, batch, n_samples=3)
    assert torch.allclose(sampled.sum(-1), torch.ones(8)) and not torch.allclose(sampled, mean)
    assert torch.allclose(method.predict_proba(model, batch, n_samples=0), mean)


def test_few_steps_lower_the_loss_and_update_the_stds():
    torch.manual_seed(0)
    method = BLoB(kl_lr=0.01)
    p = plan(steps=30, n_train=64)
    model = method.attach(TinyBertClassifier(), SPEC, p)
    stds = [m.lora_A_std_sqrt.detach().clone() for m in model.modules() if isinstance(m, BLoBLinear)]
    result = fit(method, model, make_toy_loader(64), p, device="cpu", progress=False)
    first, last = result.loss_history[0]["loss"], result.loss_history[-1]["loss"]
    assert last < first
    after = [m.lora_A_std_sqrt for m in model.modules() if isinstance(m, BLoBLinear)]
    assert any(not torch.equal(a, b) for a, b in zip(stds, after))
    assert result.loss_history[-1]["kl"] > 0
