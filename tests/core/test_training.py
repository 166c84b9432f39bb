"""The shared training loop: divergence is reported as a one-line error naming step and method."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, LRVDError, TrainConfig, TrainPlan
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
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=2), plan)
    with pytest.raises(LRVDError, match=r"non-finite loss \(nan\) at step 2 for method 'diverging-bayeslora'"):
        fit(method, model, make_toy_loader(), plan, device="cpu", progress=False)


def test_predict_returns_mc_probabilities_for_every_example():
    plan = TrainPlan(2, 16, TrainConfig(max_steps=2))
    method = BayesLoRA(n_samples=3)
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=2), plan)
    fit(method, model, make_toy_loader(n=16), plan, device="cpu", progress=False)
    probs, labels = predict(method, model, make_toy_loader(n=16, shuffle=False), device="cpu", progress=False)
    assert probs.shape == (16, 2) and labels.shape == (16,)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16))


def test_train_step_accumulates_micro_batches_as_one_big_batch():
    """Two micro-batches of 4 give the gradient of one batch of 8 (loss / n_micro; mean CE), and the
    step hands ``on_step_end`` the 1-based step count."""
    from lrvd.registry import get_method
    from lrvd.training import train_step

    batch = next(iter(make_toy_loader(n=8, batch_size=8, shuffle=False)))
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    train = TrainConfig(max_steps=1, lr=0.0, max_grad_norm=None, warmup_ratio=0.0)
    plan = TrainPlan(1, 8, train)
    grads = []
    for micro in ([batch], halves):
        method = get_method("lora")()
        model = method.attach(TinyBertClassifier(), AdapterConfig(r=2), plan)
        with torch.no_grad():  # B = 0 at init would leave A without gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        optimizer, scheduler = method.configure_optimizers(model, plan)
        seen = []
        method.on_step_end = lambda model, opt, step, seen=seen: seen.append(step) or {"hook": 1.0}
        out = train_step(
            method, model, optimizer, micro, 6, device=torch.device("cpu"), train=train, scheduler=scheduler
        )
        assert seen == [7] and out.step_logs == {"hook": 1.0}
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grads[-1]["loss"] = torch.tensor(out.loss)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 2
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)
