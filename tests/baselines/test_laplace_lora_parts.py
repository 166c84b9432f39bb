"""Laplace-LoRA's parts one at a time, on models small enough for exact references written here:
the batched Jacobians and their laplace-torch backend (against per-example autograd), the joint
logit Monte Carlo (against the same draws done by hand), the seeded subset loader, the parameter
bounds, the parameter counts and the saved posterior.

Written against the survivors of mutation testing (docs/testing.md, "Mutation testing"); the
end-to-end comparisons with an independent laplace-torch fit are in test_laplace_lora.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, LRVDError, TrainConfig, TrainPlan, get_method
from lrvd.training import seed_everything
from lrvd_baselines.laplace_lora import (
    DictLogits,
    backend_class,
    batched_jacobians,
    fit_on_subset,
    head_frozen,
    joint_logit_mc,
    subset_loader,
)

SPEC = AdapterConfig(r=4, alpha=8)


# -- batched Jacobians -----------------------------------------------------------------------------
class TokenMLP(nn.Module):
    """x [B, T, 3] -> Linear (per token, 3-D input) -> tanh -> mean over tokens -> Linear (2-D input) -> [B, 3]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner, self.outer = nn.Linear(3, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.outer(torch.tanh(self.inner(x)).mean(1))


class SplitHead(nn.Module):
    """Class 0 reads only ``a``, class 1 only ``b``: for each class one layer is not in the graph."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Linear(3, 1), nn.Linear(3, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=-1)


class DeadBranch(nn.Module):
    """An adapted layer called first but outside the logits' graph (say an auxiliary head): its
    output has no gradient, its Jacobian columns are 0, and the layers after it still count."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.aux, self.head = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        self.aux(x)
        return self.head(x)


class SharedLayer(nn.Module):
    """One Linear called twice in the forward pass: its Jacobian is the sum of both calls' terms."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.shared, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.shared(torch.tanh(self.shared(x))))


class ScaledLinear(nn.Module):
    """A trainable parameter outside ``nn.Linear``: the batched path does not cover it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.lin, self.scale = nn.Linear(3, 2), nn.Parameter(torch.tensor([1.5]))  # 1-D: laplace-torch flattens per dim

    def forward(self, x):
        return self.scale * self.lin(x)


class MixesExamples(nn.Module):
    """A Linear applied across the batch (input [3, B]): examples interact, so per-example
    Jacobians are not blocks of one backward pass (leading dimension 3 is not a multiple of B = 4)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(4, 2)

    def forward(self, x):  # x [B=4, 3]
        return x @ self.lin(x.T)  # [B, 3] @ [3, 2] -> [B, 2]


def reference_jacobians(model, x):
    """Per-example Jacobians ``[B, C, P]`` by one autograd call per (example, class)."""
    params = [p for p in model.parameters() if p.requires_grad]
    logits = model(x)
    rows = []
    for i in range(logits.shape[0]):
        per_class = []
        for c in range(logits.shape[1]):
            grads = torch.autograd.grad(logits[i, c], params, retain_graph=True, allow_unused=True)
            flat = [(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)]
            per_class.append(torch.cat(flat))
        rows.append(torch.stack(per_class))
    return torch.stack(rows), logits.detach()


CASES = {
    "tokens": (TokenMLP, lambda: torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(4))),
    "split": (SplitHead, lambda: torch.randn(4, 3, generator=torch.Generator().manual_seed(5))),
    "shared": (SharedLayer, lambda: torch.randn(4, 3, generator=torch.Generator().manual_seed(6))),
    "dead": (DeadBranch, lambda: torch.randn(4, 3, generator=torch.Generator().manual_seed(7))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batched_jacobians_equal_per_example_autograd(case):
    """Weights and biases, 3-D (tokens) and 2-D inputs, layers absent from one class's graph, a layer used twice."""
    model_cls, make_x = CASES[case]
    model, x = model_cls(), make_x()
    params = [p for p in model.parameters() if p.requires_grad]
    want, f_want = reference_jacobians(model, x)
    got = batched_jacobians(model, x, params)
    assert got is not None
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], f_want)
    assert want.abs().sum(-1).min() > 0  # every (example, class) row has a non-zero Jacobian
    if case == "dead":
        assert want[:, :, :8].abs().max() == 0  # aux's 3 × 2 weight and 2 biases


@pytest.mark.parametrize("model_cls, x", [(ScaledLinear, torch.randn(4, 3)), (MixesExamples, torch.randn(4, 3))])
def test_batched_jacobians_decline_what_they_do_not_cover(model_cls, x):
    model = model_cls()
    assert batched_jacobians(model, x, [p for p in model.parameters() if p.requires_grad]) is None


@pytest.fixture
def base_calls(monkeypatch):
    """Calls that reach laplace-torch's own (torch.func) Jacobians of the GGN backend."""
    from laplace.curvature import CurvlinopsGGN

    calls = []
    own = CurvlinopsGGN.jacobians

    def counted(self, x, enable_backprop=False):
        calls.append(enable_backprop)
        return own(self, x, enable_backprop=enable_backprop)

    monkeypatch.setattr(CurvlinopsGGN, "jacobians", counted)
    return calls


def test_backend_uses_the_batched_jacobians_for_linear_layers(base_calls):
    model, x = TokenMLP(), CASES["tokens"][1]()
    backend = backend_class("ggn")(model, "classification")
    want, f_want = reference_jacobians(model, x)
    for js, f in (backend.jacobians(x), backend.functorch_jacobians(x)):
        torch.testing.assert_close(js, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(f, f_want)
    assert base_calls == []


def test_backend_falls_back_to_laplace_torch_for_other_parameters(base_calls):
    model, x = ScaledLinear(), torch.randn(4, 3)
    backend = backend_class("ggn")(model, "classification")
    js, f = backend.jacobians(x)
    want, f_want = reference_jacobians(model, x)
    torch.testing.assert_close(js, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f, f_want)
    assert base_calls == [False] and not f.requires_grad


def test_backend_with_backprop_is_laplace_torchs_and_keeps_the_graph(base_calls):
    model, x = TokenMLP(), CASES["tokens"][1]()
    backend = backend_class("ggn")(model, "classification")
    for js, f in (backend.jacobians(x, enable_backprop=True), backend.functorch_jacobians(x, enable_backprop=True)):
        assert f.requires_grad
        torch.testing.assert_close(js.detach(), reference_jacobians(model, x)[0], rtol=1e-5, atol=1e-6)
    assert base_calls == [True, True]


@pytest.mark.parametrize("wrapped", [False, True])
def test_backend_kron_is_laplace_torchs_with_its_keyword_arguments(wrapped):
    """The KFAC pass equals the stock backend's, loss and factors, with a keyword argument passed
    through (``kfac_approx="reduce"``, which differs from the default on token inputs): on a plain
    module (laplace-torch's own path) and on the suite's ``DictLogits`` (logits reused)."""
    from laplace.curvature import CurvlinopsGGN

    if wrapped:
        _, model, loader = attached()
        batch = next(iter(loader))
        net, x, y = DictLogits(model), batch, batch["labels"]
    else:
        net, x = TokenMLP(), CASES["tokens"][1]()
        y = torch.tensor([0, 2, 1, 2])
    with head_frozen(model) if wrapped else torch.enable_grad():
        ours = backend_class("ggn")(net, "classification").kron(x, y, 32, kfac_approx="reduce")
        stock = CurvlinopsGGN(net, "classification").kron(x, y, 32, kfac_approx="reduce")
        default = CurvlinopsGGN(net, "classification").kron(x, y, 32)
    assert float(ours[0]) == pytest.approx(float(stock[0]), rel=1e-6)
    got, want, other = ([f for factors in k[1].kfacs for f in factors] for k in (ours, stock, default))
    assert len(got) == len(want) and all(torch.allclose(g, w, rtol=1e-5, atol=1e-7) for g, w in zip(got, want))
    assert not all(torch.allclose(g, o, rtol=1e-5, atol=1e-7) for g, o in zip(got, other))  # the argument matters


# -- joint logit Monte Carlo -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_joint_logit_mc_over_chunks_is_the_mean_softmax_of_mu_plus_l_eps(dtype):
    """3 samples in chunks of 2 and 1: draws ``μ + L ε`` (``L Lᵀ = Σ + 1e-6 I``) in the order drawn
    here, each sample counted once; the output keeps ``μ``'s dtype."""
    mu = torch.tensor([[0.3, -0.2, 1.0], [0.0, 2.0, -1.0]], dtype=dtype)
    a = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.8, 0.1], [0.0, 0.3, 0.6]], dtype=torch.float64)
    var = torch.stack([a @ a.T, 0.5 * a.T @ a]).to(dtype)
    scale = torch.linalg.cholesky(var.double() + 1e-6 * torch.eye(3, dtype=torch.float64)).to(dtype)
    torch.manual_seed(7)
    eps = torch.cat([torch.randn(2, 2, 3, 1, dtype=dtype), torch.randn(1, 2, 3, 1, dtype=dtype)])
    expected = torch.softmax(mu + (scale @ eps).squeeze(-1), dim=-1).mean(0)
    torch.manual_seed(7)
    got = joint_logit_mc(mu, var, 3, chunk=2)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, dtype=dtype))


# -- subset fit ------------------------------------------------------------------------------------
def test_subset_loader_takes_a_seeded_permutation_in_order_with_the_same_batching():
    rows = [torch.tensor([i]) for i in range(20)]
    loader = DataLoader(rows, batch_size=3, collate_fn=torch.stack)
    torch.manual_seed(123)  # the global RNG must not matter
    subset = subset_loader(loader, 7, seed=5)
    expected = torch.randperm(20, generator=torch.Generator().manual_seed(5))[:7]
    batches = list(subset)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert torch.cat(batches).flatten().tolist() == expected.tolist()
    assert torch.cat(list(subset)).flatten().tolist() == expected.tolist()  # not reshuffled per epoch


# -- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, message",
    [
        ({"prior_tuning": "val_gd"}, "unknown Laplace prior tuning 'val_gd'; valid choices: gridsearch, marglik"),
        ({"curvature": "kron"}, "unknown Laplace curvature 'kron'; valid choices: ef, ggn, ggn-mc"),
        ({"n_samples": -1}, "n_samples must be >= 0, got -1"),
        ({"prior_precision": 0.0}, "prior_precision must be > 0, got 0.0"),
        ({"logit_samples": 0}, "logit_samples must be >= 1 and prior_steps >= 0, got 0, 100"),
        ({"prior_steps": -1}, "logit_samples must be >= 1 and prior_steps >= 0, got 100000, -1"),
    ],
)
def test_each_bound_is_rejected_at_the_boundary_with_its_message(params, message):
    with pytest.raises(LRVDError) as err:
        get_method("laplace-lora")(**params)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "params", [{"n_samples": 0}, {"logit_samples": 1}, {"prior_steps": 0}, {"prior_precision": 0.5}]
)
def test_values_at_the_closed_ends_are_accepted(params):
    p = get_method("laplace-lora")(**params).params
    assert all(getattr(p, k) == v for k, v in params.items())


# -- the fit: subset seed, prior tuning on the validation split -------------------------------------
def attached(seed=3, layers=2, **params):
    """Laplace-LoRA on the tiny BERT with every adapter weight O(0.3) (no training: B starts at 0)."""
    seed_everything(0)
    loader = make_toy_loader(32, batch_size=8, seed=0, shuffle=False)
    plan = TrainPlan.from_loader_length(len(loader), 32, TrainConfig(lr=3e-2, max_steps=1, seed=seed))
    method = get_method("laplace-lora")(**params)
    model = method.attach(TinyBertClassifier(seed=0, layers=layers), SPEC, plan)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    model.eval()
    return method, model, loader


def kfacs(la):
    return [f.clone() for factors in la.H_facs.kfacs for f in factors]


def test_subset_fit_draws_its_examples_with_the_trial_seed_or_0_without_a_plan():
    """fit_examples=8 of 32 with the exact (deterministic) GGN: the KFAC factors are those of
    ``fit_on_subset`` with the plan's seed 3; a method that never attached (no plan) uses seed 0."""
    method, model, loader = attached(seed=3, fit_examples=8, curvature="ggn", prior_steps=0)
    method.after_training(model, loader)
    with head_frozen(model):
        refs = {}
        for seed in (3, 0):
            refs[seed] = method.build_laplace(model)
            fit_on_subset(refs[seed], loader, 8, seed=seed)
    got = kfacs(method.laplace)
    assert all(torch.equal(g, w) for g, w in zip(got, kfacs(refs[3])))
    assert not all(torch.allclose(g, w) for g, w in zip(got, kfacs(refs[0])))  # the seed matters
    planless = get_method("laplace-lora")(fit_examples=8, curvature="ggn", prior_steps=0)
    planless.after_training(model, loader)
    assert all(torch.equal(g, w) for g, w in zip(kfacs(planless.laplace), kfacs(refs[0])))


def test_gridsearch_without_a_validation_loader_is_a_one_line_error():
    method, model, loader = attached(prior_tuning="gridsearch")
    with pytest.raises(LRVDError) as err:
        method.after_training(model, loader)
    assert str(err.value) == "prior_tuning='gridsearch' needs set_validation_loader(loader) before after_training"


@pytest.mark.parametrize(
    "predictive, n_samples, how",
    [("glm", 3, "set_validation_loader"), ("nn", 2, "argument"), ("nn", 0, "argument")],
)
def test_gridsearch_picks_laplace_torchs_grid_optimum_of_the_predictive(predictive, n_samples, how):
    """Grid search on the validation split equals laplace-torch's own, called as documented: the
    predictive's ``pred_type`` and link (glm: probit; nn: Monte Carlo with max(1, n_samples) networks)."""
    from laplace import Laplace
    from laplace.curvature import CurvlinopsGGN

    method, model, loader = attached(prior_tuning="gridsearch", predictive=predictive, n_samples=n_samples)
    method.params.curvature = "ggn"  # exact: the fits below agree bit for bit
    val = make_toy_loader(8, batch_size=8, seed=1, shuffle=False)
    torch.manual_seed(0)
    if how == "set_validation_loader":
        method.set_validation_loader(val)
        method.after_training(model, loader)
    else:
        method.after_training(model, loader, val)
    with head_frozen(model):
        la = Laplace(
            DictLogits(model),
            "classification",
            subset_of_weights="all",
            hessian_structure="kron",
            backend=CurvlinopsGGN,
            dict_key_x="input_ids",
            dict_key_y="labels",
        )
        torch.manual_seed(0)
        la.fit(loader)
        la.optimize_prior_precision(
            pred_type=predictive,
            method="gridsearch",
            val_loader=val,
            prior_structure="scalar",
            link_approx="probit" if predictive == "glm" else "mc",
            n_samples=max(1, n_samples),
        )
    assert method.laplace.prior_precision.numel() == 1
    assert float(method.laplace.prior_precision) == pytest.approx(float(la.prior_precision), rel=1e-6)


# -- counts and persistence ------------------------------------------------------------------------
def test_variational_count_is_the_kronecker_factor_entries_of_the_lora_matrices():
    method, model, _ = attached()
    counts = method.parameter_counts(model)
    # 4 adapted modules (query, value × 2 layers), d = 32, r = 4: A [4, 32] and B [32, 4] each
    # have factors of 4² + 32² entries; the task head (32 × 2 + 2) is not in the posterior
    assert counts["variational"] == 4 * 2 * (4 * 4 + 32 * 32)
    assert counts["trainable"] == 4 * (4 * 32 + 32 * 4) + 32 * 2 + 2


def test_saved_posterior_reloads_exactly(tmp_path):
    """Three layers (12 Kronecker-factored matrices: keys 10 and 11 sort before 2 as text), a tuned
    prior and a fitted loss: the reloaded Laplace object is the saved one, factor by factor."""
    method, model, loader = attached(layers=3, curvature="ggn", prior_steps=5)
    method.after_training(model, loader)
    method.save_adapter(model, tmp_path / "fitted")
    unfitted, unfitted_model, _ = attached(layers=3)
    unfitted.save_adapter(unfitted_model, tmp_path / "unfitted")

    fresh, fresh_model, _ = attached(layers=3, curvature="ggn", prior_steps=5)
    with torch.no_grad():  # scrambled: the load must restore every tensor
        for p in fresh_model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    fresh.load_adapter(fresh_model, tmp_path / "fitted")
    ours, theirs = method.laplace, fresh.laplace
    assert len(ours.H_facs.kfacs) == 12
    for got, want in zip(theirs.H_facs.kfacs, ours.H_facs.kfacs):
        assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
    assert torch.equal(theirs.mean, ours.mean) and torch.equal(theirs.prior_precision, ours.prior_precision)
    assert (float(theirs.loss), theirs.n_data, theirs.n_outputs) == (float(ours.loss), 32, 2)
    assert float(theirs.sigma_noise) == float(ours.sigma_noise) and theirs.temperature == ours.temperature
    assert float(theirs.log_marginal_likelihood()) == pytest.approx(float(ours.log_marginal_likelihood()), rel=1e-6)
    batch = next(iter(loader))
    torch.testing.assert_close(fresh.predict_proba(fresh_model, batch), method.predict_proba(model, batch))

    again, again_model, _ = attached(layers=3)
    again.load_adapter(again_model, tmp_path / "unfitted")
    assert again.laplace is None  # nothing fitted, nothing loaded: the MAP predictive


def test_before_the_fit_the_predictive_is_the_map_lora():
    method, model, loader = attached()
    batch = next(iter(loader))
    with torch.no_grad():
        expected = torch.softmax(model(batch).float(), dim=-1)
    torch.testing.assert_close(method.predict_proba(model, batch), expected, rtol=0, atol=0)


def test_a_one_example_subset_is_a_subset_fit_rescaled_to_n():
    """fit_examples=1 is a real subset (the bound is n <= 0 for "all"): loss and KFAC of that one
    example, scaled by N = 32; the full fit differs."""
    method, model, loader = attached(curvature="ggn")
    with head_frozen(model):
        one, full, sub = method.build_laplace(model), method.build_laplace(model), method.build_laplace(model)
        one.fit(subset_loader(loader, 1, seed=0))
        full.fit(loader)
        fit_on_subset(sub, loader, 1, seed=0)
    assert sub.n_data == 32 and float(sub.loss) == pytest.approx(32 * float(one.loss), rel=1e-6)
    assert float(sub.loss) != pytest.approx(float(full.loss), rel=1e-3)
