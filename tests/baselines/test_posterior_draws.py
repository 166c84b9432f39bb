"""The draws a sampled predictive averages are the ones ``predict_with_samples`` saves (lrvd.sample_record).

For every registered method: the probabilities equal ``predict``'s at the same seed (recording changes
nothing), a predictive that averages S draws returns them as ``[S, N, C]`` and their mean is the
predictive, and a deterministic or closed-form predictive returns none.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, TrainConfig, TrainPlan, get_method, list_methods
from lrvd.training import fit, predict, predict_with_samples, seed_everything

N_SAMPLES = 3


def trained(name: str, **params):
    seed_everything(0)
    loader = make_toy_loader(32, batch_size=8)
    plan = TrainPlan.from_loader_length(len(loader), 32, TrainConfig(lr=3e-2, max_steps=4))
    method = get_method(name)(**params)
    model = method.attach(TinyBertClassifier(), AdapterConfig(r=4, alpha=8), plan)
    fit(method, model, loader, plan, device="cpu", progress=False)
    method.after_training(model, loader, val_loader=make_toy_loader(16, seed=2, shuffle=False))
    return method, model


def expected_draws(method) -> int | None:
    """How many draws the method's predictive averages at ``n_samples=N_SAMPLES`` (None: it averages none)."""
    if method.name == "lora-ensemble":
        return method.params.n_members
    if not method.sampled_predictive or getattr(method.params, "predictive", "") in ("glm", "glm-mc"):
        return None  # Laplace's default probit and joint-logit predictives are closed form here
    return N_SAMPLES


@pytest.mark.parametrize("name", list_methods())
def test_saved_draws_average_to_the_predictive(name):
    method, model = trained(name)
    loader = make_toy_loader(16, seed=1, shuffle=False)
    probs, labels = predict(method, model, loader, n_samples=N_SAMPLES, progress=False, seed=5)
    again, labels2, draws = predict_with_samples(method, model, loader, n_samples=N_SAMPLES, progress=False, seed=5)
    torch.testing.assert_close(again, probs, rtol=0, atol=0)
    assert torch.equal(labels, labels2)
    n = expected_draws(method)
    if n is None:
        assert draws is None
        return
    assert draws.shape == (n, *probs.shape)
    torch.testing.assert_close(draws.mean(0), probs, rtol=0, atol=1e-6)
    assert not torch.allclose(draws[0], draws[1])  # real draws, not one repeated


def test_laplace_nn_draws_are_its_sampled_networks():
    method, model = trained("laplace-lora", predictive="nn")
    loader = make_toy_loader(16, seed=1, shuffle=False)
    probs, _, draws = predict_with_samples(method, model, loader, n_samples=N_SAMPLES, progress=False, seed=5)
    assert draws.shape == (N_SAMPLES, *probs.shape)
    torch.testing.assert_close(draws.mean(0), probs, rtol=0, atol=1e-6)


def test_bayeslora_chunked_draws_keep_sample_order():
    """A chunk of s weight samples runs as one replicated batch [s*B]; its output must be split sample-major.
    With the posterior variance at its floor every draw is the mean model's prediction, example by example,
    so a draw that mixed examples would not match it."""
    from lrvd.inject import lrvd_modules, mc_predict_proba
    from lrvd.sample_record import recording, stacked

    method, model = trained("bayeslora")
    with torch.no_grad():
        for layer in lrvd_modules(model).values():
            layer.rank_log_sigma2.fill_(-60.0)
    batch = next(iter(make_toy_loader(8, seed=1, shuffle=False)))
    model.eval()
    mean_model = mc_predict_proba(model, batch, 0)
    with recording() as chunked:
        mc_predict_proba(model, batch, 4, chunk=2)
    draws = stacked(chunked)
    assert draws.shape == (4, 8, 2)
    assert not torch.allclose(mean_model[0], mean_model[1])  # examples differ, so mixing would show
    torch.testing.assert_close(draws, mean_model.expand(4, 8, 2), rtol=0, atol=1e-5)
