"""Laplace-LoRA: the predictive, prior tuning, curvature and Jacobians against independent references.

The reference values come from laplace-torch objects built here, the authors' protocol spelled out
in the test (github adamxyang/laplace-lora, run_gpt_laplace.py / run_gpt_laplace.sh:
``Laplace(model, 'classification', prior_precision=1., subset_of_weights='all', hessian_structure='kron')``,
``optimize_prior_precision(method='marglik', n_steps=100, lr=1e-1)`` over one scalar, GLM predictive)
with the authors' curvature (the exact-Fisher KFAC; their fork's ASDL ``FISHER_EXACT``), or from the
definitions written out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils import vector_to_parameters
from torch.utils.data import DataLoader

from conftest import TinyBertClassifier, collate, make_toy_dataset, make_toy_loader
from lrvd import AdapterConfig, LRVDError, TrainConfig, TrainPlan, get_method
from lrvd.training import fit, seed_everything
from lrvd_baselines.laplace_lora import (
    DictLogits,
    batched_jacobians,
    fit_on_subset,
    head_frozen,
    joint_logit_mc,
    subset_loader,
)

SPEC = AdapterConfig(r=4, alpha=8)
AUTHORS_PRIOR_INIT, AUTHORS_MARGLIK_STEPS, AUTHORS_MARGLIK_LR = 1.0, 100, 1e-1


def trained_laplace(steps: int = 60, loader=None, **params):
    """LoRA trained ``steps`` steps on the toy task (head trained too), then the Laplace fit."""
    seed_everything(0)
    loader = loader or make_toy_loader(32, batch_size=8, seed=0)
    plan = TrainPlan.from_loader_length(
        len(loader), len(loader.dataset), TrainConfig(lr=3e-2, max_steps=steps, seed=0, log_every=1)
    )
    method = get_method("laplace-lora")(**params)
    model = method.attach(TinyBertClassifier(seed=0), SPEC, plan)
    fit(method, model, loader, plan, device="cpu", progress=False)
    model.eval()
    return method, model, loader


@pytest.fixture(scope="module")
def fitted():
    # a fixed batch order: the sampled-Fisher KFAC draws its labels per batch from a fixed seed
    method, model, loader = trained_laplace(loader=make_toy_loader(32, batch_size=8, seed=0, shuffle=False))
    method.after_training(model, loader)
    return method, model, loader


def authors_laplace(model, loader):
    """An independent laplace-torch Laplace-LoRA: stock backend class and Jacobians, the authors' tuning."""
    from laplace import Laplace
    from laplace.curvature import CurvlinopsGGN

    with head_frozen(model):
        la = Laplace(
            DictLogits(model),
            "classification",
            subset_of_weights="all",
            hessian_structure="kron",
            prior_precision=AUTHORS_PRIOR_INIT,
            backend=CurvlinopsGGN,
            backend_kwargs={"stochastic": False},
        )
        la.fit(loader)
        la.optimize_prior_precision(
            method="marglik",
            n_steps=AUTHORS_MARGLIK_STEPS,
            lr=AUTHORS_MARGLIK_LR,
            init_prior_prec=AUTHORS_PRIOR_INIT,
            prior_structure="scalar",
        )
    return la


def test_default_predictive_is_the_glm_probit_of_an_independent_laplace_torch_fit(fitted):
    method, model, loader = fitted
    assert method.params.predictive == "glm" and method.params.curvature == "ggn"
    batch = next(iter(loader))
    ours = method.predict_proba(model, batch)
    la = authors_laplace(model, loader)
    assert la.n_params == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    with head_frozen(model):
        theirs = la(batch, pred_type="glm", link_approx="probit")
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)
    assert float(method.laplace.prior_precision) == pytest.approx(float(la.prior_precision), rel=1e-4)
    # the case exercises the posterior: the predictive is not the MAP softmax
    assert (ours - method.predict_proba(model, batch, n_samples=0)).abs().max() > 1e-2


def test_marglik_moves_the_prior_precision_to_a_maximum_of_the_marginal_likelihood(fitted):
    """Run to convergence (1000 Adam steps: run_gpt_laplace.py's argparse default; the exact-Fisher
    optimum on this model is more than 100 steps of lr 0.1 away in log λ)."""
    _, model, loader = fitted
    method = get_method("laplace-lora")(prior_steps=1000)
    method.after_training(model, loader)
    la = method.laplace
    tuned = float(la.prior_precision)
    assert abs(math.log(tuned / AUTHORS_PRIOR_INIT)) > 1.0  # far from where it started
    points = (AUTHORS_PRIOR_INIT, tuned / 1.5, tuned, tuned * 1.5)
    at = {x: float(la.log_marginal_likelihood(torch.tensor([x]))) for x in points}
    assert at[tuned] > max(at[AUTHORS_PRIOR_INIT], at[tuned / 1.5], at[tuned * 1.5])


def test_marglik_starts_from_the_given_prior_precision():
    """One Adam step (lr 0.1) on log λ moves it by exactly 0.1 from ``prior_precision``, not from 1."""
    method, model, loader = trained_laplace(steps=5, prior_precision=7.0, prior_steps=1)
    method.after_training(model, loader)
    moved = math.log(float(method.laplace.prior_precision)) - math.log(7.0)
    assert abs(moved) == pytest.approx(AUTHORS_MARGLIK_LR, rel=1e-3)
    method, model, loader = trained_laplace(steps=5, prior_precision=7.0, prior_steps=0)
    method.after_training(model, loader)
    assert float(method.laplace.prior_precision) == pytest.approx(7.0)


def test_nn_predictive_averages_n_samples_sampled_networks(fitted, monkeypatch):
    method, model, loader = fitted
    batch = next(iter(loader))
    la = method.laplace
    monkeypatch.setattr(method.params, "predictive", "nn")
    monkeypatch.setattr(method, "next_sample_seed", lambda: 1234)

    def by_hand(n):
        with head_frozen(model):
            params = [p for p in model.parameters() if p.requires_grad]
            mean = torch.nn.utils.parameters_to_vector(params).detach().clone()
            torch.manual_seed(1234)
            probs = []
            for theta in la.sample(n):
                vector_to_parameters(theta, params)
                with torch.no_grad():
                    probs.append(torch.softmax(model(batch), -1))
            vector_to_parameters(mean, params)
        return torch.stack(probs)

    per_sample = by_hand(3)
    three = method.predict_proba(model, batch, n_samples=3)
    torch.testing.assert_close(three, per_sample.mean(0), rtol=1e-4, atol=1e-5)
    assert (per_sample[0] - per_sample[1]).abs().max() > 1e-3  # distinct samples, so n matters
    one = method.predict_proba(model, batch, n_samples=1)
    torch.testing.assert_close(one, per_sample[0], rtol=1e-4, atol=1e-5)
    assert (one - three).abs().max() > 1e-3


def test_glm_mc_is_the_mean_softmax_of_joint_logit_samples_of_the_glm(fitted, monkeypatch):
    """The wiring: glm-mc = ``joint_logit_mc`` over laplace-torch's own GLM mean and covariance."""
    from laplace.curvature import CurvlinopsGGN

    method, model, loader = fitted
    batch = next(iter(loader))
    monkeypatch.setattr(method.params, "predictive", "glm-mc")
    monkeypatch.setattr(method.params, "logit_samples", 3000)
    monkeypatch.setattr(method, "next_sample_seed", lambda: 99)
    ours = method.predict_proba(model, batch, n_samples=4)
    with head_frozen(model):
        jacobians, f_mu = CurvlinopsGGN(DictLogits(model), "classification").jacobians(batch)
        f_var = method.laplace.functional_variance(jacobians)
    torch.manual_seed(99)
    torch.testing.assert_close(ours, joint_logit_mc(f_mu, f_var, 3000), rtol=1e-4, atol=1e-5)


def test_joint_logit_mc_estimates_the_expected_softmax_under_the_full_covariance():
    """Strongly correlated logits: the joint estimate matches E[softmax(z)], z ~ N(μ, Σ) (drawn here by
    ``MultivariateNormal``), and differs from sampling each logit on its own; a masked class (zero
    variance, logit -1e4) keeps probability 0."""
    mu = torch.tensor([[0.5, 0.0, -0.5, -1e4]])
    var = torch.tensor([[[4.0, 3.9, 0.0, 0.0], [3.9, 4.0, 0.0, 0.0], [0.0, 0.0, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    torch.manual_seed(0)
    got = joint_logit_mc(mu, var, 200_000, chunk=30_000)
    torch.manual_seed(1)
    dist = torch.distributions.MultivariateNormal(mu[0, :3].double(), var[0, :3, :3].double())
    expected = torch.softmax(dist.sample((400_000,)), -1).mean(0).float()
    torch.testing.assert_close(got[0, :3], expected, atol=4e-3, rtol=0)
    assert got[0, 3] == 0 and torch.allclose(got.sum(-1), torch.ones(1))
    torch.manual_seed(2)
    independent = mu[0, :3] + var[0, :3, :3].diagonal().sqrt() * torch.randn(400_000, 3)
    assert (torch.softmax(independent, -1).mean(0) - expected).abs().max() > 0.02


def test_batched_jacobians_equal_laplace_torch_jacobians_for_sequence_and_multiple_choice_models():
    from laplace.curvature import CurvlinopsGGN
    from transformers import BertConfig, BertForMultipleChoice

    from lrvd_bench.backbones import MultipleChoiceClassifier

    method, model, loader = trained_laplace(steps=3)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    hf = BertForMultipleChoice(config)
    mc = MultipleChoiceClassifier(hf, 5, head_params=list(hf.classifier.parameters()))
    mc_method = get_method("laplace-lora")()
    mc = mc_method.attach(mc, SPEC, TrainPlan.from_loader_length(1, 3, TrainConfig(max_steps=1)))
    with torch.no_grad():  # B starts at zero: give the adapters weights so every Jacobian block is non-zero
        for n, p in mc.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    mc.eval()
    ids = torch.randint(2, 64, (3, 4, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[:, :, 8:] = 0
    mc_batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "choice_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]).bool(),
        "labels": torch.tensor([0, 3, 1]),
    }
    for m, batch in ((model, next(iter(loader))), (mc, mc_batch)):
        with head_frozen(m):
            backend = CurvlinopsGGN(DictLogits(m), "classification")
            want, f_want = backend.jacobians(batch)
            got, f_got = batched_jacobians(DictLogits(m), batch, backend.params)
        assert got.shape == want.shape and want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(f_got, f_want)


def test_curvature_names_select_the_laplace_torch_backend(fitted):
    from laplace.curvature import CurvlinopsEF, CurvlinopsGGN

    _, model, _ = fitted
    cases = (("ggn", CurvlinopsGGN, False), ("ggn-mc", CurvlinopsGGN, True), ("ef", CurvlinopsEF, None))
    for name, cls, stochastic in cases:
        la = get_method("laplace-lora")(curvature=name).build_laplace(model)
        assert isinstance(la.backend, cls)
        if stochastic is not None:
            assert la.backend.stochastic is stochastic


@pytest.mark.parametrize("curvature, per_batch", [("ggn", 2), ("ggn-mc", 1), ("ef", 1)])
def test_fit_backpropagates_once_per_class_only_for_the_exact_curvature(curvature, per_batch):
    """The fit-cost claim (docs/performance.md): exact KFAC needs one backward pass per class (2 here),
    the sampled and empirical Fisher one per batch; counted at every adapted layer's output."""
    method, model, loader = trained_laplace(steps=3, curvature=curvature)
    counts = []
    layer = next(m for n, m in model.named_modules() if n.endswith("lora_B.default"))
    hook = layer.register_full_backward_hook(lambda *_: counts.append(1))
    try:
        method.after_training(model, loader)
    finally:
        hook.remove()
    assert len(counts) == per_batch * len(loader)


@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_kfac_fit_runs_the_network_once_per_batch_with_laplace_torchs_loss_and_factors(curvature):
    """laplace-torch's kron forwards each batch twice (KFAC pass, then the loss alone); the suite's
    backend reuses the KFAC pass's logits: one forward per batch, and the same loss (which enters the
    marginal likelihood) and Kronecker factors as the stock backend (deterministic curvatures)."""
    from laplace import Laplace
    from laplace.curvature import CurvlinopsEF, CurvlinopsGGN

    method, model, loader = trained_laplace(steps=3, curvature=curvature)
    model.eval()
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with head_frozen(model):
            ours = method.build_laplace(model)
            ours.fit(loader)
            ours_calls, calls[:] = len(calls), []
            stock = Laplace(
                DictLogits(model),
                "classification",
                subset_of_weights="all",
                hessian_structure="kron",
                prior_precision=1.0,
                backend={"ggn": CurvlinopsGGN, "ef": CurvlinopsEF}[curvature],
            )
            stock.fit(loader)
    finally:
        hook.remove()
    # laplace-torch's fit also probes the output size with one forward of the first batch
    assert (ours_calls, len(calls)) == (len(loader) + 1, 2 * len(loader) + 1)
    assert float(ours.loss) == pytest.approx(float(stock.loss), rel=1e-6)
    for got, want in zip(ours.H_facs.kfacs, stock.H_facs.kfacs, strict=True):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "key, value, choices",
    [
        ("predictive", "probit", "glm, glm-mc, nn"),
        ("predictive", "auto", "glm, glm-mc, nn"),
        ("prior_tuning", "val_gd", "gridsearch, marglik"),
        ("curvature", "kron", "ef, ggn, ggn-mc"),
    ],
)
def test_unknown_names_are_one_line_errors_listing_the_valid_ones(key, value, choices):
    with pytest.raises(LRVDError) as err:
        get_method("laplace-lora")(**{key: value})
    message = str(err.value)
    assert repr(value) in message and choices in message and "\n" not in message


def test_subset_fit_is_rescaled_to_the_full_training_set():
    """32 copies of one example: KFAC on any 8 of them, rescaled by 32/8, must equal the full fit."""
    one = make_toy_dataset(1, seed=3)[0]
    loader = DataLoader([one] * 32, batch_size=4, collate_fn=collate)
    method, model, _ = trained_laplace(steps=5)
    assert len(subset_loader(loader, 8, seed=1).dataset) == 8
    with head_frozen(model):
        full, sub = method.build_laplace(model), method.build_laplace(model)
        full.fit(loader)
        fit_on_subset(sub, loader, 8, seed=1)
        assert sub.n_data == full.n_data == 32
        assert float(sub.loss) == pytest.approx(float(full.loss), rel=1e-5)
        for got, want in zip(sub.H_facs.kfacs, full.H_facs.kfacs):
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
        assert float(sub.log_marginal_likelihood()) == pytest.approx(float(full.log_marginal_likelihood()), rel=1e-4)


def test_fit_examples_is_validated():
    with pytest.raises(LRVDError, match="fit_examples"):
        get_method("laplace-lora")(fit_examples=-1)


def test_bench_cli_rejects_an_unknown_predictive_in_one_line_with_exit_code_2(capsys, tmp_path):
    from lrvd_bench import cli

    code = cli.main(
        [
            "run",
            "--methods",
            "laplace-lora",
            "--set",
            "method_params.laplace-lora.predictive=probit",
            "--output",
            str(tmp_path / "run"),
        ]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "unknown Laplace predictive 'probit'; valid choices: glm, glm-mc, nn" in lines[0]
