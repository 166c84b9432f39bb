"""The shared training loop: divergence is reported as a one-line error naming step and method."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterSpec, LRVDError, TrainConfig, TrainPlan
from lrvd.methods.bayeslora import BayesLoRA
from lrvd.training import fit, predict


class DivergingBayesLoRA(BayesLoRA):
    """BayesLoRA whose loss turns NaN at step 2 (as after an exploding KL)."""

    name = "diverging-bayeslora"

    def training_loss(self, model, batch, logits, step):
        loss, logs = super().training_loss(model, batch, logits, step)
        return (loss * torch.nan if step == 2 else loss), logs


def test_nan_loss_raises_error_naming_step_and_method():
    plan = TrainPlan(5, 64, TrainConfig(max_steps=5, lr=1e-3))
    method = DivergingBayesLoRA()
    model = method.attach(TinyBertClassifier(), AdapterSpec(r=2), plan)
    with pytest.raises(LRVDError, match=r"non-finite loss \(nan\) at step 2 for method 'diverging-bayeslora'"):
        fit(method, model, make_toy_loader(), plan, device="cpu", progress=False)


def test_predict_returns_mc_probabilities_for_every_example():
    plan = TrainPlan(2, 16, TrainConfig(max_steps=2))
    method = BayesLoRA(n_samples=3)
    model = method.attach(TinyBertClassifier(), AdapterSpec(r=2), plan)
    fit(method, model, make_toy_loader(n=16), plan, device="cpu", progress=False)
    probs, labels = predict(method, model, make_toy_loader(n=16, shuffle=False), device="cpu", progress=False)
    assert probs.shape == (16, 2) and labels.shape == (16,)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16))
