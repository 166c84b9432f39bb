"""One parametrised matrix over every registered method (peft test_custom_models style): add a method,
add a row (``test_the_matrix_covers_every_registered_method`` fails until you do).

Method-specific tests select methods by their capability flags (``lrvd.protocol.CAPABILITIES``), and
the matrix checks that each method's flags match what it does."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, LRVDError, TrainConfig, TrainPlan, get_method, list_methods, lrvd_modules
from lrvd.training import fit, seed_everything

# name -> (hyper-parameters, learning rate on the loop's scale)
CASES = {
    "bayeslora": ({"n_samples": 3}, 3e-2),
    "lora": ({}, 3e-2),
    "mc-dropout-lora": ({}, 3e-2),
    "adalora": ({}, 3e-2),
    "adalora-ivon": ({}, 3e-2),  # the authors' defaults (IVON lr 0.4, clip_radius 1e-3, ...)
    "laplace-lora": ({"n_samples": 3}, 3e-2),
    "lora-temp-scaling": ({}, 3e-2),
    "lora-ensemble": ({"n_members": 2}, 3e-2),
    "blob": ({"n_samples": 3}, 3e-2),
}
STEPS = 20
SPEC = AdapterConfig(r=4, alpha=8)


def with_capability(capability: str) -> list[str]:
    return [name for name in CASES if getattr(get_method(name), capability)]


def test_the_matrix_covers_every_registered_method():
    assert sorted(CASES) == list_methods()


def train(name, steps=STEPS, seed=0):
    kwargs, lr = CASES[name]
    seed_everything(seed)
    loader = make_toy_loader(32, batch_size=8, seed=seed)
    plan = TrainPlan.from_loader_length(len(loader), 32, TrainConfig(lr=lr, max_steps=steps, seed=seed, log_every=1))
    method = get_method(name)(**kwargs)
    model = method.attach(TinyBertClassifier(seed=seed), SPEC, plan)
    return method, model, loader, plan


def mean_nll(model, loader):
    model.eval()
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(b), b["labels"]) for b in loader]
    model.train()
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module", params=list(CASES))
def trained(request):
    method, model, loader, plan = train(request.param)
    before = mean_nll(model, loader)
    fit(method, model, loader, plan, device="cpu", progress=False)
    method.after_training(model, loader)
    model.eval()
    return request.param, method, model, loader, before


def test_training_lowers_the_loss(trained):
    name, method, model, loader, before = trained
    assert mean_nll(model, loader) < before


def test_predict_proba_is_a_distribution(trained):
    name, method, model, loader, _ = trained
    batch = next(iter(loader))
    probs = method.predict_proba(model, batch)
    assert probs.shape == (8, 2)
    assert torch.all(probs >= 0) and torch.allclose(probs.sum(-1), torch.ones(8), atol=1e-5)


def test_parameter_counts_follow_the_trainable_rule(trained):
    name, method, model, _, _ = trained
    counts = method.parameter_counts(model)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = {id(p) for p in model.head_parameters()}
    assert all(p.requires_grad for p in model.head_parameters())
    lrvd = tuple(f"{m}." for m in lrvd_modules(model))
    assert all(
        "lora_" in n or n.startswith(lrvd) for n, p in model.named_parameters() if p.requires_grad and id(p) not in head
    )
    assert (counts["variational"] > 0) == method.posterior_params


def test_capability_flags_match_behaviour(trained):
    """``sampled_predictive``: the default predictive differs from n_samples=0; ``svd_triplets``:
    AdaLoRA's lora_E exists; ``per_rank_log_alpha``: log α snapshots were recorded during fit;
    ``posthoc_fit``: the class has its own ``after_training``."""
    from lrvd import MethodBase

    name, method, model, loader, _ = trained
    assert (type(method).after_training is not MethodBase.after_training) == method.posthoc_fit
    batch = next(iter(loader))
    sampled = method.predict_proba(model, batch)
    deterministic = method.predict_proba(model, batch, n_samples=0)
    assert (not torch.allclose(sampled, deterministic, atol=1e-6)) == method.sampled_predictive
    assert any(".lora_E" in n for n, _ in model.named_parameters()) == method.svd_triplets
    assert bool(getattr(method, "log_alpha_history", None)) == method.per_rank_log_alpha


def test_save_load_round_trips_predictions(trained, tmp_path):
    name, method, model, loader, _ = trained
    batch = next(iter(loader))
    method.save_adapter(model, tmp_path)
    fresh_method, fresh_model, _, _ = train(name, seed=0)
    with torch.no_grad():  # scramble, so the load must restore everything
        for p in fresh_model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    fresh_method.load_adapter(fresh_model, tmp_path)
    fresh_model.eval()
    torch.manual_seed(0)  # every sampled predictive draws from the global generator, seeded per prediction pass
    loaded = fresh_method.predict_proba(fresh_model, batch)
    torch.manual_seed(0)
    torch.testing.assert_close(loaded, method.predict_proba(model, batch))
    assert fresh_method.rank_report(fresh_model) == method.rank_report(model)


@pytest.mark.parametrize("name", ["lora", "mc-dropout-lora"])
def test_training_is_deterministic_with_a_fixed_seed(name):
    results = []
    for _ in range(2):
        method, model, loader, plan = train(name, steps=3)
        fit(method, model, loader, plan, device="cpu", progress=False)
        results.append([p.detach().clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mc_dropout_predictive_differs_from_deterministic_pass():
    method, model, loader, plan = train("mc-dropout-lora", steps=3)
    fit(method, model, loader, plan, device="cpu", progress=False)
    model.eval()
    batch = next(iter(loader))
    mc, det = method.predict_proba(model, batch), method.predict_proba(model, batch, n_samples=0)
    assert not torch.allclose(mc, det)
    assert not any(m.training for m in model.modules())  # modes restored


@pytest.mark.parametrize("name", with_capability("svd_triplets"))
def test_adalora_ends_at_target_budget(name):
    method, model, loader, plan = train(name, steps=12)
    fit(method, model, loader, plan, device="cpu", progress=False)
    ranks = method.rank_report(model)
    target = round(2 * SPEC.r / 3) * len(ranks)
    assert sum(ranks.values()) == target
    kept = sum(
        int((layer.lora_E["default"] != 0).sum())
        for layer in __import__("lrvd_baselines.peft_adapters", fromlist=["x"]).adapter_layers(model).values()
    )
    assert kept <= target


def test_adalora_budget_matching_sets_total_rank():
    method = get_method("adalora")(budget_total_rank=5)
    seed_everything(0)
    loader = make_toy_loader(32)
    plan = TrainPlan.from_loader_length(len(loader), 32, TrainConfig(lr=3e-2, max_steps=12))
    model = method.attach(TinyBertClassifier(), SPEC, plan)
    fit(method, model, loader, plan, device="cpu", progress=False)
    assert sum(method.rank_report(model).values()) == 5


def test_adalora_rejects_schedule_without_budgeting_phase():
    method = get_method("adalora")(tinit=0.8, tfinal=0.15)
    plan = TrainPlan(total_steps=10, n_train=32)
    with pytest.raises(LRVDError, match="budgeting phase"):
        method.attach(TinyBertClassifier(), SPEC, plan)


@pytest.mark.parametrize("name", list(CASES))
def test_unknown_hyper_parameter_is_rejected(name):
    with pytest.raises(LRVDError, match="unknown hyper-parameter"):
        get_method(name)(not_a_param=1)


def _folded_snr(mu, sigma):
    cdf = 0.5 * math.erfc((mu / sigma) / math.sqrt(2))
    mean = sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * (1 - 2 * cdf)
    return mean / math.sqrt(mu * mu + sigma * sigma - mean * mean)


@pytest.mark.parametrize("criterion", ["snr-abs", "snr", "mean", "inv-sigma"])
def test_ivon_criteria_match_hand_formula(criterion):
    import ivon
    from peft import AdaLoraConfig, get_peft_model

    from lrvd_baselines.adalora_ivon import PosteriorRankAllocator

    torch.manual_seed(0)
    net = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(6, 5)),
        AdaLoraConfig(init_r=3, target_r=1, target_modules=["0"], total_step=10, tinit=1, tfinal=1),
    )
    named = dict(net.base_model.model.named_parameters())
    group_a = [p for n, p in named.items() if "lora_A" in n or "lora_E" in n]
    group_b = [p for n, p in named.items() if "lora_B" in n]
    opt = ivon.IVON(
        [
            {"params": group_a, "ess": 100.0, "weight_decay": 1e-3},
            {"params": group_b, "ess": 50.0, "weight_decay": 1e-2},
        ],
        lr=0.1,
        ess=10.0,
    )
    x = torch.randn(4, 6)
    with opt.sampled_params(train=True):
        net(x).pow(2).sum().backward()
    opt.step()
    with torch.no_grad():
        for p in group_a + group_b:
            p.add_(torch.randn_like(p) * 0.05)
    alloc = PosteriorRankAllocator(net.base_model.model, net.peft_config["default"], "default", criterion)
    alloc.optimizer = opt
    alloc.params = named
    from lrvd_baselines.adalora_ivon import posterior_std

    alloc.stds = posterior_std(opt)
    for group in opt.param_groups:
        offset = 0
        for p in group["params"]:
            name = next(n for n, q in named.items() if q is p)
            score = alloc.element_score(name).flatten()
            for i in range(p.numel()):
                mu = float(p.flatten()[i])
                sigma = 1 / math.sqrt(group["ess"] * (float(group["hess"][offset + i]) + group["weight_decay"]))
                expected = {
                    "snr-abs": _folded_snr(mu, sigma),
                    "snr": abs(mu) / sigma,
                    "mean": abs(mu),
                    "inv-sigma": 1 / sigma,
                }[criterion]
                assert float(score[i]) == pytest.approx(expected, rel=1e-4)
            offset += p.numel()


@pytest.mark.parametrize("all_dropout", [False, True])
def test_mc_dropout_leaves_backbone_dropout_off_at_prediction(all_dropout):
    """A backbone with dropout 0.3 and a zero adapter (B = 0): only adapter-path dropout is on at
    prediction, so the MC predictive equals the deterministic pass exactly; a leak of dropout into
    the backbone (all_dropout=True, BLoB's "MCD" convention, is the control) makes them differ."""
    method = get_method("mc-dropout-lora")(all_dropout=all_dropout, n_samples=4)
    plan = TrainPlan(total_steps=1, n_train=8, train=TrainConfig())
    model = method.attach(TinyBertClassifier(dropout=0.3), SPEC, plan)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.3 for m in model.backbone.modules())
    model.eval()
    batch = next(iter(make_toy_loader(8, shuffle=False)))
    with torch.no_grad():
        det = torch.softmax(model(batch).float(), -1)
    mc = method.predict_proba(model, batch)
    if all_dropout:
        assert not torch.allclose(mc, det)
    else:
        torch.testing.assert_close(mc, det, rtol=0, atol=0)
