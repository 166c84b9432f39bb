"""AdaLoRA and AdaLoRA-IVON: the authors' defaults, the exact-budget masking, the predictives.

Sources of the pinned values (docs/methods.md lists them too):
- AdaLoRA schedule: the official AdaLoRA CoLA script (tinit 800, tfinal 3500, deltaT 10 of 6,700 steps);
- IVON optimiser: idiap/vilora ``run_glue_no_trainer.py`` argparse defaults (``--ivon_clip_radius``
  1e-3, ``--ivon_weight_decay`` 1e-8, ``--ivon_hess_init`` 1, ``--ivon_beta1`` 0.9, ``--ivon_beta2``
  0.99999, ``--ivon_ess`` 0 = ``len(train_dataset)``, ``--ivon_infer_mc_samples`` 0 = posterior
  mean) and its large-GLUE scripts (``--learning_rate 0.4``, linear schedule).
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, LRVDError, TrainConfig, TrainPlan, get_method
from lrvd.training import fit, seed_everything
from lrvd_baselines.adalora import keep_top_budget
from lrvd_baselines.adalora_ivon import CRITERIA, two_phase_schedule
from lrvd_baselines.peft_adapters import adapter_layers, peft_root

SPEC = AdapterConfig(r=4, alpha=8)
N_TRAIN = 37  # distinct from every other number in these tests, so a wrong ess cannot pass by chance


def attached(name, steps=20, lr=3e-2, **params):
    seed_everything(0)
    loader = make_toy_loader(32, batch_size=8)
    plan = TrainPlan(total_steps=steps, n_train=N_TRAIN, train=TrainConfig(lr=lr, max_steps=steps, log_every=1))
    method = get_method(name)(**params)
    model = method.attach(TinyBertClassifier(), SPEC, plan)
    return method, model, loader, plan


# -- defaults --------------------------------------------------------------------------------------
def test_adalora_schedule_defaults_are_the_cola_script_as_fractions():
    """Official AdaLoRA CoLA script: tinit 800, tfinal 3500, deltaT 10 of 6,700 steps."""
    method = get_method("adalora")()
    steps = method.schedule(SPEC, TrainPlan(total_steps=6700, n_train=8551))
    assert steps == {"tinit": 800, "tfinal": 3500, "deltaT": 10, "total_step": 6700}
    assert method.schedule(SPEC, TrainPlan(total_steps=100, n_train=400)) == {
        "tinit": 12,
        "tfinal": 52,
        "deltaT": 1,
        "total_step": 100,
    }


@pytest.mark.parametrize(("name", "steps"), [("adalora", 2), ("adalora", 3), ("adalora-ivon", 3)])
def test_a_schedule_without_a_scored_step_before_the_final_mask_is_refused(name, steps):
    """At 2 and 3 steps the defaults round to tinit 0 and total − tfinal = 1: the final mask would come
    after step 1, before any importance was scored (peft's allocator then raised a KeyError)."""
    method, *_ = attached(name, steps=4)
    plan = TrainPlan(total_steps=steps, n_train=N_TRAIN, train=TrainConfig(max_steps=steps))
    with pytest.raises(LRVDError, match=f"no budgeting phase at {steps} steps: max\\(tinit, 1\\) = 1 must be < "):
        method.schedule(SPEC, plan)


def test_the_shortest_feasible_schedule_trains():
    """4 steps: importance scored after step 1, the final mask after step 2."""
    method, model, loader, plan = attached("adalora", steps=4)
    assert method.schedule(SPEC, plan) == {"tinit": 0, "tfinal": 2, "deltaT": 1, "total_step": 4}
    fit(method, model, loader, plan, device="cpu", progress=False)
    ranks = method.rank_report(model)  # the final budget applied: target_r triplets per module on average
    assert sum(ranks.values()) == method.target_rank(SPEC) * len(ranks) < SPEC.r * len(ranks)


@pytest.mark.parametrize("key, value", [("tinit", 800), ("tfinal", 1.0), ("deltaT", 0.0)])
def test_adalora_schedule_knobs_are_fractions(key, value):
    with pytest.raises(LRVDError, match=f"{key} is a fraction of the run"):
        get_method("adalora")(**{key: value})


def test_ivon_defaults_are_the_vilora_authors():
    """idiap/vilora argparse defaults and large-GLUE scripts (module docstring)."""
    p = get_method("adalora-ivon")().params
    assert (p.lr, p.clip_radius, p.weight_decay, p.hess_init, p.ivon_beta1, p.ivon_beta2) == (
        0.4,
        1e-3,
        1e-8,
        1.0,
        0.9,
        0.99999,
    )
    assert p.ess is None and p.lr_first is None
    assert p.criterion == "snr-abs"  # vilora --vilora_criterion SNR_mean_abs
    assert p.predictive == "mean"  # vilora --ivon_infer_mc_samples 0


def test_ivon_optimizer_receives_the_defaults_and_ess_is_n_train():
    """The IVON groups carry the cited values; ess = plan.n_train (a default of 1 must fail here)."""
    method, model, _, plan = attached("adalora-ivon", lr=2e-3)
    optimizer, scheduler = method.configure_optimizers(model, plan)
    for group in optimizer.param_groups:
        assert group["ess"] == N_TRAIN
        assert group["clip_radius"] == 1e-3 and group["weight_decay"] == 1e-8
        assert group["hess_init"] == 1.0 and group["beta1"] == 0.9 and group["beta2"] == 0.99999
    adapter_group = optimizer.param_groups[0]
    assert adapter_group["initial_lr"] == pytest.approx(0.4)
    # initial posterior sd: σ = 1/√(ess·(hess_init + δ))
    sigma = method.posterior_stds(model)
    name = next(n for n in sigma if "lora_A" in n)
    torch.testing.assert_close(sigma[name], torch.full_like(sigma[name], 1 / math.sqrt(N_TRAIN * (1 + 1e-8))))


def test_ivon_head_lr_keeps_the_shared_ratio_unless_set():
    plan = TrainPlan(total_steps=20, n_train=N_TRAIN, train=TrainConfig(lr=2e-3, head_lr=1e-2, max_steps=20))
    for params, expected in (({}, {"adapter": 0.4, "head": 2.0}), ({"head_lr": 0.7}, {"adapter": 0.4, "head": 0.7})):
        seed_everything(0)
        method = get_method("adalora-ivon")(**params)
        model = method.attach(TinyBertClassifier(), SPEC, plan)
        optimizer, _ = method.configure_optimizers(model, plan)
        head = {id(p) for p in model.head_parameters()}
        lrs = {("head" if id(g["params"][0]) in head else "adapter"): g["initial_lr"] for g in optimizer.param_groups}
        assert lrs == pytest.approx(expected)


def test_ivon_ess_override_is_used():
    method, model, _, plan = attached("adalora-ivon", ess=5.0)
    optimizer, _ = method.configure_optimizers(model, plan)
    assert all(group["ess"] == 5.0 for group in optimizer.param_groups)


def test_adalora_own_lr_overrides_only_the_adapter_lr():
    seed_everything(0)
    plan = TrainPlan(total_steps=20, n_train=N_TRAIN, train=TrainConfig(lr=2e-3, head_lr=1e-2, max_steps=20))
    method = get_method("adalora")(lr=7e-3)
    model = method.attach(TinyBertClassifier(), SPEC, plan)
    optimizer, _ = method.configure_optimizers(model, plan)
    head = {id(p) for p in model.head_parameters()}
    lrs = {("head" if id(g["params"][0]) in head else "adapter"): g["initial_lr"] for g in optimizer.param_groups}
    assert lrs == {"adapter": 7e-3, "head": 1e-2}


@pytest.mark.parametrize("head_bias_decay", [False, True])
def test_head_bias_decay_follows_the_glue_benchs_train_adalora(head_bias_decay):
    """train_adalora: ``weight_decay: cfg.wd`` on the adapter group and on the whole head group
    (biases included); by default the head's biases are at 0 as for every method."""
    plan = TrainPlan(total_steps=20, n_train=N_TRAIN, train=TrainConfig(weight_decay=1e-2, max_steps=20))
    method = get_method("adalora")(head_bias_decay=head_bias_decay)
    model = method.attach(TinyBertClassifier(), SPEC, plan)
    optimizer, _ = method.configure_optimizers(model, plan)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    head = model.backbone.classifier
    assert decay[id(head.weight)] == 1e-2
    assert decay[id(head.bias)] == (1e-2 if head_bias_decay else 0.0)
    assert all(decay[id(p)] == 1e-2 for p in method.adapter_parameters(model))


def test_paper_glue_config_runs_train_adaloras_schedule():
    """configs/paper_glue_deberta.yaml, AdaLoRA = glue_helpers.train_adalora: tinit = the 6 % warm-up,
    tfinal = 0.8 of the run, ΔT = 200 steps of the suite's 1,205-step CoLA run (7,696 training rows
    after the 10 % hold-out, batch 32, 5 epochs), orth_reg_weight 0.5 (peft's default, which
    train_adalora leaves), weight decay on head biases too."""
    from pathlib import Path

    from lrvd_bench.config import load_config

    config = load_config(Path(__file__).parents[2] / "configs" / "paper_glue_deberta.yaml")
    ada = config.method_params["adalora"]
    assert (ada["tinit"], ada["tfinal"], ada["orth_reg_weight"], ada["head_bias_decay"]) == (0.06, 0.8, 0.5, True)
    total = 5 * -(-int(8551 * 0.9) // 32)
    assert total == 1205 and round(ada["deltaT"] * total) == 200


def test_default_ivon_run_moves_the_adapters():
    """20 steps at the defaults: the adapter means travel a sizeable part of IVON's largest possible path.

    Each IVON step moves a weight by at most ``lr_t · clip_radius``; with the cited lr 0.4 and
    clip_radius 1e-3 over this schedule (1 warm-up step, then linear decay) the path is at most
    ``0.4e-3 · 11``. The former defaults (lr 0.05, no clipping, δ = 1e-4) moved the means by ~6 %
    of it, and the adapters never left their initialisation in the quickstart.
    """
    method, model, loader, plan = attached("adalora-ivon", lr=2e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    fit(method, model, loader, plan, device="cpu", progress=False)
    moved = torch.cat([(p.detach() - before[n]).abs().flatten() for n, p in model.named_parameters() if n in before])
    factors = [1.0] + [(20 - s) / 19 for s in range(1, 20)]  # linear_warmup_decay(20 steps, 6 % warm-up)
    longest_path = 0.4 * 1e-3 * sum(factors)
    assert moved.mean() > 0.2 * longest_path
    assert moved.max() <= longest_path * (1 + 1e-4)  # clipped: no weight moves further than the bound


# -- exact budget under ties -----------------------------------------------------------------------
def test_keep_top_budget_breaks_ties_by_position():
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0])
    assert keep_top_budget(scores, 2).tolist() == [False, True, True, False, False]
    assert keep_top_budget(scores, 4).tolist() == [True, True, True, True, False]
    assert keep_top_budget(torch.ones(6), 3).tolist() == [True] * 3 + [False] * 3


def _budget_after_masking(method, model, budget):
    root = peft_root(model)
    pattern = root.rankallocator.mask_to_budget(root.model, budget)
    kept_e = sum(int((layer.lora_E["default"] != 0).sum()) for layer in adapter_layers(model).values())
    return pattern, kept_e


@pytest.mark.parametrize("criterion", CRITERIA)
def test_ivon_tied_scores_keep_exactly_the_budget(criterion):
    """Equal σ everywhere (a fresh IVON: h = hess_init) and, for μ-dependent criteria, equal |μ| too."""
    method, model, _, plan = attached("adalora-ivon", criterion=criterion)
    method.configure_optimizers(model, plan)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.fill_(0.3)
    total = sum(layer.lora_E["default"].shape[0] for layer in adapter_layers(model).values())
    budget = total // 2 + 1
    pattern, kept_e = _budget_after_masking(method, model, budget)
    assert sum(sum(keep) for keep in pattern.values()) == budget == kept_e
    flat = [k for name in sorted(pattern) for k in pattern[name]]
    assert flat == [True] * budget + [False] * (total - budget)  # ties: earliest (module, index) kept


def test_adalora_tied_sensitivities_keep_exactly_the_budget():
    method, model, _, plan = attached("adalora")
    allocator = peft_root(model).rankallocator
    for n, p in peft_root(model).model.named_parameters():
        if "lora_" in n:
            allocator.exp_avg_ipt[n] = torch.ones_like(p)
            allocator.exp_avg_unc[n] = torch.ones_like(p)
            with torch.no_grad():
                p.fill_(0.3)
    total = sum(layer.lora_E["default"].shape[0] for layer in adapter_layers(model).values())
    pattern, kept_e = _budget_after_masking(method, model, 3)
    assert sum(sum(keep) for keep in pattern.values()) == 3 == kept_e
    assert total > 3


# -- predictives -----------------------------------------------------------------------------------
def _with_masked_triplets(predictive, sigma_elsewhere=0.0):
    """A model with half of its triplets masked and a posterior whose σ is 2 on masked triplets only."""
    method, model, loader, plan = attached("adalora-ivon", predictive=predictive, n_samples=3)
    with torch.no_grad():  # weights of order 1, so the logits leave softmax's linear regime
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    root = peft_root(model)
    method.configure_optimizers(model, plan)
    total = sum(layer.lora_E["default"].shape[0] for layer in adapter_layers(model).values())
    root.peft_config["default"].rank_pattern = root.rankallocator.mask_to_budget(root.model, total // 2)
    masks = method.noise_masks(model)
    stds = {n: torch.full_like(p, sigma_elsewhere) for n, p in model.named_parameters() if p.requires_grad}
    for n, keep in masks.items():
        stds[n] = torch.where(keep.expand_as(stds[n]) > 0, stds[n], torch.full_like(stds[n], 2.0))
    method.optimizer, method._loaded_std = None, stds
    model.eval()
    return method, model, next(iter(loader))


def test_mean_predictive_is_the_posterior_mean_model_whatever_n_samples():
    method, model, batch = _with_masked_triplets("mean", sigma_elsewhere=0.2)
    mean = torch.softmax(model(batch).float(), dim=-1)
    torch.testing.assert_close(method.predict_proba(model, batch, n_samples=4), mean, rtol=0, atol=0)


def test_bma_keeps_masked_triplets_noise_free():
    method, model, batch = _with_masked_triplets("bma")
    logits = model(batch).float()
    for sample in method.logit_samples(model, batch, 3, noise_on_masked=False):
        torch.testing.assert_close(sample, logits, rtol=0, atol=0)  # σ > 0 only on masked triplets: no noise
    mean = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(method.predict_proba(model, batch), mean, rtol=0, atol=1e-6)  # (p + p + p) / 3


def test_mc_logits_perturbs_masked_triplets_and_averages_logits():
    method, model, batch = _with_masked_triplets("mc-logits")
    mean = torch.softmax(model(batch).float(), dim=-1)
    torch.manual_seed(0)  # the MC seed of a call is drawn from torch's global RNG
    logits = method.logit_samples(model, batch, 3, noise_on_masked=True)
    torch.manual_seed(0)  # the MC seed of a call is drawn from torch's global RNG
    probs = method.predict_proba(model, batch)
    assert (probs - mean).abs().max() > 1e-3  # noise on masked triplets reaches the output
    torch.testing.assert_close(probs, torch.softmax(torch.stack(logits).mean(0), dim=-1))
    assert (probs - torch.stack([torch.softmax(x, -1) for x in logits]).mean(0)).abs().max() > 1e-4


def test_bma_averages_probabilities():
    method, model, batch = _with_masked_triplets("bma", sigma_elsewhere=0.5)
    torch.manual_seed(0)  # the MC seed of a call is drawn from torch's global RNG
    logits = method.logit_samples(model, batch, 3, noise_on_masked=False)
    torch.manual_seed(0)  # the MC seed of a call is drawn from torch's global RNG
    probs = method.predict_proba(model, batch)
    torch.testing.assert_close(probs, torch.stack([torch.softmax(x, -1) for x in logits]).mean(0))
    assert (probs - torch.softmax(model(batch).float(), -1)).abs().max() > 1e-3


def test_unknown_predictive_is_one_line_listing_the_choices():
    with pytest.raises(LRVDError) as err:
        get_method("adalora-ivon")(predictive="glm")
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "'glm'" in message
    assert all(name in message for name in ("mean", "mc-logits", "bma"))


# -- vilora's small-task schedule ------------------------------------------------------------------
def schedule_lrs(total_steps: int, **schedule) -> list[float]:
    """The lr each of ``total_steps`` steps runs at under ``two_phase_schedule`` (base lr 0.4)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = two_phase_schedule(opt, total_steps=total_steps, **schedule)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_two_phase_schedule_follows_vilora_clr():
    """Warm-up to lr_first (factor 5 = 2.0/0.4), hold, drop to lr, linear decay to 0."""
    lrs = schedule_lrs(100, warmup_ratio=0.1, first_factor=5.0, first_phase=0.3)
    assert lrs[0] == pytest.approx(0.2) and lrs[9] == pytest.approx(2.0)  # warm-up: 2.0 · (t+1)/10
    assert lrs[10] == lrs[29] == pytest.approx(2.0)
    assert (
        lrs[30] == pytest.approx(0.4) and lrs[65] == pytest.approx(0.4 * 35 / 70) and lrs[99] == pytest.approx(0.4 / 70)
    )


def test_two_phase_schedule_drops_to_lr_for_a_single_last_step():
    """first_phase 0.9 of 10 steps: 9 steps at lr_first, then step 9 at exactly lr (factor 1/1)."""
    lrs = schedule_lrs(10, warmup_ratio=0.0, first_factor=5.0, first_phase=0.9)
    assert lrs == pytest.approx([2.0] * 9 + [0.4])


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_lr_first_switches_the_ivon_schedule_on():
    method, model, _, plan = attached("adalora-ivon", steps=100, lr_first=2.0, first_phase=0.3)
    optimizer, scheduler = method.configure_optimizers(model, plan)
    for _ in range(20):  # no optimizer step: IVON needs a sampled gradient first; only the factors matter here
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0)
