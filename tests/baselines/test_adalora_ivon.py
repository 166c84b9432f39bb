"""AdaLoRA-IVON beyond the shared AdaLoRA tests (test_adalora.py): every parameter bound, σ per
weight from IVON's flat Hessian, the Hessian logs, the posterior draws of the sampled predictives,
σ in the saved adapter and the plain-peft export.

Written against the survivors of mutation testing (docs/testing.md, "Mutation testing"): each test
pins a value computed here by hand (σ = 1/√(ess·(h + δ)), θ = μ + σ·ε, the error texts) rather
than by the code under test.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, LRVDError, TrainConfig, TrainPlan, get_method
from lrvd.classifier import ClassifierModel
from lrvd.training import seed_everything
from lrvd_baselines.adalora_ivon import importance, posterior_std
from lrvd_baselines.peft_adapters import adapter_layers, peft_root

SPEC = AdapterConfig(r=4, alpha=8)
N_TRAIN = 37


def attached(steps=20, **params):
    seed_everything(0)
    loader = make_toy_loader(32, batch_size=8)
    plan = TrainPlan(total_steps=steps, n_train=N_TRAIN, train=TrainConfig(lr=3e-2, max_steps=steps, log_every=1))
    method = get_method("adalora-ivon")(**params)
    model = method.attach(TinyBertClassifier(), SPEC, plan)
    return method, model, loader, plan


def distinct_hessians(optimizer, seed=0):
    """IVON's flat per-group Hessian set to distinct values in [0.5, 4.5): σ differs per weight."""
    g = torch.Generator().manual_seed(seed)
    for group in optimizer.param_groups:
        group["hess"].copy_(0.5 + 4 * torch.rand(group["hess"].shape, generator=g))


# -- parameters ------------------------------------------------------------------------------------
FRACTION = "first_phase is a fraction of the run in [0, 1), got {}"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),  # AdaLoRA's own check comes first
        ({"hess_init": 0.0}, "hess_init must be > 0, got 0.0"),
        ({"weight_decay": 0.0}, "weight_decay must be > 0, got 0.0"),
        ({"clip_radius": 0.0}, "clip_radius must be > 0, got 0.0"),
        ({"head_lr": 0.0}, "head_lr must be > 0, got 0.0"),
        ({"lr_first": 0.0}, "lr_first must be > 0, got 0.0"),
        ({"first_phase": -0.1}, FRACTION.format(-0.1)),
        ({"first_phase": 1.0}, FRACTION.format(1.0)),
        ({"first_phase": 1.5}, FRACTION.format(1.5)),
        ({"ess": 0.0}, "ess must be > 0, got 0.0"),
        ({"ivon_beta1": 1.0}, "ivon_beta1 must be in [0, 1), got 1.0"),
        ({"ivon_beta1": 1.5}, "ivon_beta1 must be in [0, 1), got 1.5"),
        ({"ivon_beta2": 0.0}, "ivon_beta2 must be in (0, 1), got 0.0"),
        ({"ivon_beta2": 1.0}, "ivon_beta2 must be in (0, 1), got 1.0"),  # beta1 stays valid: both bounds must hold
        ({"ivon_beta2": 1.5}, "ivon_beta2 must be in (0, 1), got 1.5"),
        ({"n_samples": -1}, "n_samples must be >= 0, got -1"),
        ({"beta1": 1.0}, "beta1 must be in (0, 1), got 1.0"),  # AdaLoRA's sensitivity EMA, inherited
        ({"criterion": "snr2"}, "unknown AdaLoRA-IVON criterion 'snr2'; valid choices: inv-sigma, mean, snr, snr-abs"),
        ({"predictive": "glm"}, "unknown AdaLoRA-IVON predictive 'glm'; valid choices: bma, mc-logits, mean"),
    ],
)
def test_each_bound_is_rejected_at_the_boundary_with_its_message(params, message):
    with pytest.raises(LRVDError) as err:
        get_method("adalora-ivon")(**params)
    assert str(err.value) == message


def test_adalora_bounds_still_apply():
    with pytest.raises(LRVDError, match="tinit is a fraction of the run"):
        get_method("adalora-ivon")(tinit=800)


@pytest.mark.parametrize(
    "params",
    [{"first_phase": 0.0}, {"ivon_beta1": 0.0}, {"n_samples": 0}, {"lr_first": 0.5}, {"ess": 0.5}, {"head_lr": 0.5}],
)
def test_values_just_inside_the_bounds_are_accepted(params):
    """The closed ends ([0, ...) and >= 0) and positive values below 1 are valid."""
    p = get_method("adalora-ivon")(**params).params
    assert all(getattr(p, k) == v for k, v in params.items())


@pytest.mark.parametrize("predictive, sampled", [("mean", False), ("mc-logits", True), ("bma", True)])
def test_only_the_posterior_mean_predictive_is_deterministic(predictive, sampled):
    assert get_method("adalora-ivon")(predictive=predictive).sampled_predictive is sampled


def test_unknown_criterion_in_importance_is_one_line():
    with pytest.raises(LRVDError) as err:
        importance("snr2", torch.ones(2), torch.ones(2))
    assert str(err.value) == "unknown AdaLoRA-IVON criterion 'snr2'; valid choices: inv-sigma, mean, snr, snr-abs"


@pytest.mark.parametrize("criterion", ["snr-abs", "snr", "mean", "inv-sigma"])
def test_importance_is_returned_in_the_weights_dtype(criterion):
    mu, sigma = torch.tensor([0.3, -1.0]), torch.tensor([0.5, 0.2])
    assert importance(criterion, mu, sigma).dtype == torch.float32
    assert importance(criterion, mu.half(), sigma.half()).dtype == torch.float16


# -- IVON hyper-parameters and σ -------------------------------------------------------------------
def test_ivon_receives_every_non_default_hyper_parameter():
    """Values unlike ivon-opt's own defaults, so a dropped keyword shows."""
    chosen = dict(lr=0.2, ess=11.0, hess_init=3.0, ivon_beta1=0.8, ivon_beta2=0.999, weight_decay=1e-3, clip_radius=0.5)
    method, model, _, plan = attached(**chosen)
    assert method.ivon_kwargs(plan) == dict(
        lr=0.2, ess=11.0, hess_init=3.0, beta1=0.8, beta2=0.999, weight_decay=1e-3, clip_radius=0.5
    )
    optimizer, _ = method.configure_optimizers(model, plan)
    for group in optimizer.param_groups:
        assert (group["hess_init"], group["beta1"], group["beta2"], group["weight_decay"]) == (3.0, 0.8, 0.999, 1e-3)
        assert group["clip_radius"] == 0.5 and group["ess"] == 11.0
        torch.testing.assert_close(group["hess"], torch.full_like(group["hess"], 3.0))
    sigma = method.posterior_stds(model)
    assert all(torch.allclose(s, torch.full_like(s, 1 / math.sqrt(11.0 * (3.0 + 1e-3)))) for s in sigma.values())


def test_posterior_std_slices_each_groups_flat_hessian_by_parameter():
    """Three parameters in one group (offsets 0, 6, 10) and a second group with its own ess and δ."""
    import ivon

    shapes = ((2, 3), (4,), (3, 2))
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    other = torch.nn.Parameter(torch.zeros(5))
    optimizer = ivon.IVON(
        [{"params": params, "ess": 10.0, "weight_decay": 0.5}, {"params": [other], "ess": 4.0, "weight_decay": 0.25}],
        lr=0.1,
        ess=1.0,
    )
    for group in optimizer.param_groups:
        group["hess"].copy_(torch.arange(1, group["hess"].numel() + 1, dtype=group["hess"].dtype))
    stds = posterior_std(optimizer)
    offset = 0
    for p in params:
        hs = range(offset + 1, offset + p.numel() + 1)
        expected = torch.tensor([1 / math.sqrt(10.0 * (h + 0.5)) for h in hs]).view_as(p)
        torch.testing.assert_close(stds[p], expected)
        offset += p.numel()
    torch.testing.assert_close(stds[other], torch.tensor([1 / math.sqrt(4.0 * (h + 0.25)) for h in range(1, 6)]))


def test_on_step_end_logs_the_hessian_summary_over_every_group():
    method, model, _, plan = attached()
    optimizer, _ = method.configure_optimizers(model, plan)
    distinct_hessians(optimizer)
    values = [float(h) for g in optimizer.param_groups for h in g["hess"]]
    assert len(optimizer.param_groups) > 1 and len(values) % 2 == 0  # an even count: mean != lower median
    logs = method.on_step_end(model, optimizer, 1)  # before tinit: no masking
    assert logs["hess_mean"] == pytest.approx(statistics.fmean(values), rel=1e-5)
    assert logs["hess_median"] == pytest.approx(statistics.median_low(values))  # torch.median: the lower one
    assert (logs["hess_min"], logs["hess_max"]) == pytest.approx((min(values), max(values)))
    assert logs["rank_budget"] == sum(layer.lora_E["default"].shape[0] for layer in adapter_layers(model).values())


def test_no_posterior_before_training_or_loading():
    method, model, _, _ = attached()
    with pytest.raises(LRVDError) as err:
        method.posterior_stds(model)
    assert str(err.value) == "adalora-ivon has no posterior yet: train the model or load a saved adapter"


def test_masking_needs_the_bound_optimizer():
    _, model, _, _ = attached()
    root = peft_root(model)
    with pytest.raises(RuntimeError) as err:
        root.rankallocator.mask_to_budget(root.model, 2)
    assert str(err.value) == "PosteriorRankAllocator needs the IVON optimizer (configure_optimizers binds it)"


# -- posterior draws -------------------------------------------------------------------------------
def test_mc_logits_draws_mu_plus_sigma_eps_for_every_ivon_weight(monkeypatch):
    """With the live optimizer: each draw sets θ = μ + σ·ε (ε ~ N(0, 1) from the call's seed) for
    every IVON-trained weight, head included; the logits of the draws are averaged, then softmaxed."""
    method, model, loader, plan = attached(predictive="mc-logits", n_samples=2)
    optimizer, _ = method.configure_optimizers(model, plan)
    distinct_hessians(optimizer)
    model.eval()
    batch = next(iter(loader))
    monkeypatch.setattr(method, "next_sample_seed", lambda: 1234)
    sigma = posterior_std(optimizer)
    noisy = [(p, sigma[p]) for p in model.parameters() if p in sigma]
    assert any(id(p) in {id(h) for h in model.head_parameters()} for p, _ in noisy)
    means = [p.detach().clone() for p, _ in noisy]
    torch.manual_seed(1234)
    logits = []
    with torch.no_grad():
        for _ in range(2):
            for (p, s), mu in zip(noisy, means):
                p.copy_(mu + s * torch.randn_like(mu))
            logits.append(model(batch).float())
        for (p, _), mu in zip(noisy, means):
            p.copy_(mu)
    expected = torch.softmax((logits[0] + logits[1]) / 2, dim=-1)
    torch.testing.assert_close(method.predict_proba(model, batch), expected)
    assert all(torch.equal(p, mu) for (p, _), mu in zip(noisy, means))  # the means are restored


# -- persistence and export ------------------------------------------------------------------------
def test_parameter_counts_one_posterior_variance_per_trainable_weight():
    method, model, _, _ = attached()
    counts = method.parameter_counts(model)
    # 4 adapted modules (query, value × 2 layers), d = 32, r = 4: A [4, 32], B [32, 4], λ [4, 1];
    # the task head 32 × 2 + 2
    adapter = 4 * (4 * 32 + 32 * 4 + 4)
    assert counts["trainable"] == counts["variational"] == adapter + 32 * 2 + 2


def test_saved_adapter_carries_sigma_and_ranks_and_a_loaded_posterior_replaces_the_live_one(tmp_path):
    method, model, loader, plan = attached(predictive="bma", n_samples=3)
    optimizer, _ = method.configure_optimizers(model, plan)
    distinct_hessians(optimizer)
    root = peft_root(model)  # masked triplets: the rank pattern travels too (bma keeps them noise-free)
    total = sum(layer.lora_E["default"].shape[0] for layer in adapter_layers(model).values())
    root.peft_config["default"].rank_pattern = root.rankallocator.mask_to_budget(root.model, total // 2 + 1)
    sigma = method.posterior_stds(model)
    method.save_adapter(model, tmp_path)
    fresh, fresh_model, _, _ = attached(predictive="bma", n_samples=3)
    fresh.configure_optimizers(fresh_model, plan)  # a live posterior (σ from hess_init) the load must replace
    fresh.load_adapter(fresh_model, tmp_path)
    assert fresh.optimizer is None
    assert fresh.rank_report(fresh_model) == method.rank_report(model) != {n: SPEC.r for n in method.rank_report(model)}
    loaded = fresh.posterior_stds(fresh_model)
    assert sorted(loaded) == sorted(sigma) and len(sigma) == sum(1 for p in model.parameters() if p.requires_grad)
    for name, s in sigma.items():
        torch.testing.assert_close(loaded[name], s, rtol=0, atol=0)
    model.eval()
    fresh_model.eval()
    batch = next(iter(loader))
    torch.manual_seed(5)
    expected = method.predict_proba(model, batch)
    torch.manual_seed(5)
    torch.testing.assert_close(fresh.predict_proba(fresh_model, batch), expected, rtol=0, atol=0)


class TinyGPT2Classifier(ClassifierModel):
    """GPT-2 (``Conv1D`` layers, weight stored [in, out]: peft's ``fan_in_fan_out``) sequence classifier."""

    def __init__(self, seed: int = 0):
        from transformers import GPT2Config, GPT2ForSequenceClassification

        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, num_labels=2, pad_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        backbone = GPT2ForSequenceClassification(config)
        super().__init__(backbone, 2, head_params=list(backbone.score.parameters()))

    def forward(self, batch):
        return self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


BACKBONES = {"bert": (TinyBertClassifier, ["query", "value"]), "gpt2": (TinyGPT2Classifier, ["c_attn"])}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_exported_peft_lora_reproduces_the_posterior_mean_with_masked_triplets(tmp_path, backbone):
    """Plain peft (``PeftModel.from_pretrained`` on the untouched base) gives the suite's posterior-mean
    logits, with half of the triplets masked and every adapter weight O(0.5), so a wrong scaling, a
    lost triplet or a masked one let through shows in the logits; GPT-2's ``Conv1D`` needs the
    transposed (``fan_in_fan_out``) layout."""
    from peft import PeftModel

    make, targets = BACKBONES[backbone]
    seed_everything(0)
    loader = make_toy_loader(32, batch_size=8)
    plan = TrainPlan(total_steps=20, n_train=N_TRAIN, train=TrainConfig(lr=3e-2, max_steps=20))
    method = get_method("adalora-ivon")()
    model = method.attach(make(), AdapterConfig(r=4, alpha=8, target_modules=targets), plan)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    method.configure_optimizers(model, plan)
    root = peft_root(model)
    total = sum(layer.lora_E["default"].shape[0] for layer in adapter_layers(model).values())
    root.peft_config["default"].rank_pattern = root.rankallocator.mask_to_budget(root.model, total // 2 + 1)
    kept = method.rank_report(model)
    assert sorted(set(kept.values())) != [SPEC.r] and sum(kept.values()) == total // 2 + 1
    model.eval()
    method.save_adapter(model, tmp_path)
    batch = next(iter(loader))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected = model(batch).float()
        plain = PeftModel.from_pretrained(make().backbone, str(tmp_path)).eval()
        got = plain(**inputs).logits.float()
        untouched = make().backbone.eval()(**inputs).logits.float()
    assert str(plain.peft_config["default"].peft_type.value) == "LORA"
    # peft repairs a wrong flag for Conv1D at load (with a warning); the saved config must be right
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (backbone == "gpt2")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (expected - untouched).abs().max() > 1e-2
    if backbone == "bert":  # in float64 the export's own rounding (B·diag(λ) in float32) is ~3e-9 here,
        # so the scaling must be AdaLoRA's α/(r + 1e-5) exactly: α/(r − 1e-5) is off by ~6e-7
        with torch.no_grad():
            got64, expected64 = plain.double()(**inputs).logits, model.double()(batch)
        torch.testing.assert_close(got64, expected64, rtol=0, atol=1e-7)


def test_no_kept_triplet_anywhere_has_no_peft_form():
    """A budget of 0 masks every triplet: a rank-0 LoRA is not a peft adapter, so there is no export
    (the native state still goes to the sidecar)."""
    method, model, _, plan = attached()
    method.configure_optimizers(model, plan)
    root = peft_root(model)
    root.peft_config["default"].rank_pattern = root.rankallocator.mask_to_budget(root.model, 0)
    assert set(method.rank_report(model).values()) == {0}
    assert method.peft_export(model) is None
