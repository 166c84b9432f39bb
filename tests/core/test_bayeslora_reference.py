"""BayesLoRA pinned to the authors' code (github mercury0100/bayeslora) and to hand-computed values.

Each test is built so that the wrong formula, default or wiring it names turns it red: B entries
with small log α (a KL over A only shows), distinct per-rank variances (untied noise shows), ranks
half a nat either side of τ (an off-by-one threshold shows), a β strictly between 0 and 1.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import TinyBertClassifier, make_toy_loader
from lrvd import AdapterConfig, LRVDError, TrainConfig, TrainPlan
from lrvd.inject import lrvd_modules, sampling
from lrvd.kl import K1, K2, K3
from lrvd.layers import LRVDLinear
from lrvd.methods.bayeslora import PROTOCOLS, BayesLoRA
from lrvd.pruning import prune_ranks

SPEC = AdapterConfig(target_modules=["query", "value"], r=4, alpha=8.0)


def kl_by_hand(log_alpha: float) -> float:
    """Molchanov et al. (2017) eq. 14, written out independently of lrvd.kl."""
    sigmoid = 1.0 / (1.0 + math.exp(-(K2 + K3 * log_alpha)))
    return -(K1 * sigmoid - 0.5 * math.log1p(math.exp(-log_alpha)) - K1)


def batch():
    return next(iter(make_toy_loader(n=8, batch_size=8, shuffle=False)))


def attached(total_steps: int = 20, train: TrainConfig | None = None, **params):
    method = BayesLoRA(**params)
    model = method.attach(TinyBertClassifier(), SPEC, TrainPlan(total_steps, 64, train or TrainConfig()))
    return method, model


# -- KL ----------------------------------------------------------------------------------------------
def test_kl_sums_b_entries_too():
    """B entries of order 1 have log α ≈ log σ², so their KL is as large as A's: a KL over A alone
    misses about half the total (the old test's B ~ U(±1e-3) had log α_B ≥ 10, KL ≈ 0)."""
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(3, 4), r=2, scaling=1.0)
    with torch.no_grad():
        layer.A_mu.copy_(torch.tensor([[0.5, -1.0, 2.0], [0.3, 0.7, -0.4]]))
        layer.B_mu.copy_(torch.tensor([[1.0, -0.6], [0.8, 0.5], [-1.5, 0.9], [0.2, -1.2]]))
        layer.rank_log_sigma2.copy_(torch.tensor([-3.0, -1.0]))
    s2 = [-3.0, -1.0]
    kl_a = sum(kl_by_hand(s2[k] - math.log(a**2 + 1e-8)) for k in range(2) for a in layer.A_mu[k].tolist())
    kl_b = sum(kl_by_hand(s2[k] - math.log(row[k] ** 2 + 1e-8)) for k in range(2) for row in layer.B_mu.tolist())
    assert kl_b > 0.5 * kl_a  # the case exercises B
    assert float(layer.kl().detach()) == pytest.approx(kl_a + kl_b, rel=1e-5)


# -- noise tied per rank ------------------------------------------------------------------------------
def test_factor_noise_is_tied_per_rank_in_a_and_b():
    """Row k of A and column k of B share σ_k (the authors' tie_alpha_per_rank=True)."""
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(6, 5), r=3, scaling=1.0)
    log_s2 = torch.tensor([-4.0, -1.0, 1.0])  # distinct per-rank variances
    with torch.no_grad():
        layer.rank_log_sigma2.copy_(log_s2)
    A, B = layer.sample_factors(20000)
    sd_a = (A - layer.A_mu).std(dim=(0, 2))  # per rank k: over samples and d_in
    sd_b = (B - layer.B_mu).std(dim=(0, 1))  # per rank k: over samples and d_out
    expected = torch.exp(0.5 * log_s2)
    torch.testing.assert_close(sd_a.detach(), expected, rtol=0.02, atol=0)
    torch.testing.assert_close(sd_b.detach(), expected, rtol=0.02, atol=0)


# -- pruning threshold -------------------------------------------------------------------------------
def layer_with_rank_log_alphas(values: list[float]) -> LRVDLinear:
    """All |μ| = 0.1, so log α_k = log σ_k² − log 0.01 for every entry (and both medians)."""
    layer = LRVDLinear(nn.Linear(3, 3), r=len(values), scaling=1.0)
    with torch.no_grad():
        layer.A_mu.fill_(0.1)
        layer.B_mu.fill_(-0.1)
        layer.rank_log_sigma2.copy_(torch.tensor(values) + math.log(0.01 + 1e-8))
    return layer


def test_prune_threshold_is_tau_not_one_nat_off():
    """Ranks half a nat (and 0.99 nat) below τ stay, above τ go (the authors' prune keeps log α < τ)."""
    tau = 3.0
    layer = layer_with_rank_log_alphas([tau - 0.5, tau + 0.5, tau - 0.99, tau + 0.99])
    expected = torch.tensor([tau - 0.5, tau + 0.5, tau - 0.99, tau + 0.99])
    torch.testing.assert_close(layer.rank_log_alpha().detach(), expected, atol=2e-5, rtol=0)
    removed = prune_ranks(layer, tau=tau)
    assert removed == {"": 2}
    assert layer.rank_log_alpha().tolist() == pytest.approx([tau - 0.5, tau - 0.99], abs=1e-4)
    assert BayesLoRA().params.tau == 3.0  # the GLUE bench's log_alpha_threshold default


# -- defaults and initialisation ---------------------------------------------------------------------
def test_defaults_are_the_authors():
    """kl_scale 1e-6 (run_glue_bench.py --kl_scale and bayeslora_llama.py --kl-scale defaults),
    init_log_sigma2 −8 (bayeslora/hf.py VariationalLoRAWrapper.__init__), τ = 3, no β anneal."""
    p = BayesLoRA().params
    assert (p.kl_scale, p.init_log_sigma2, p.tau) == (1e-6, -8.0, 3.0)
    assert (p.kl_warmup, p.kl_ramp) == (0.0, 0.0)


def test_attach_initialises_like_the_authors():
    """rank_log_sigma2 = −8, A_mu ~ kaiming_uniform(a=√5), B_mu ~ U(−1e-3, 1e-3) (bayeslora/hf.py)."""
    _, model = attached()
    for layer in lrvd_modules(model).values():
        assert torch.equal(layer.rank_log_sigma2.detach(), torch.full((SPEC.r,), -8.0))
        b_max = float(layer.B_mu.detach().abs().max())
        assert 5e-4 < b_max <= 1e-3
        bound = 1.0 / math.sqrt(layer.in_features)  # kaiming_uniform(a=√5) bound = 1/√fan_in
        a_max = float(layer.A_mu.detach().abs().max())
        assert 0.9 * bound < a_max <= bound


# -- β schedule in the loss --------------------------------------------------------------------------
def test_beta_schedule_enters_the_loss():
    method, model = attached(total_steps=100, kl_scale=1e-2, kl_warmup=0.2, kl_ramp=0.4, kl_per_example=False)
    b = batch()
    logits = model(b)
    for step, beta in ((0, 0.0), (30, 0.25), (50, 0.75), (90, 1.0)):
        loss, logs = method.training_loss(model, b, logits, step)
        assert logs["beta"] == pytest.approx(beta)
        assert float(loss.detach()) == pytest.approx(logs["nll"] + beta * 1e-2 * logs["kl"], rel=1e-6)


# -- protocols -------------------------------------------------------------------------------------
def test_unknown_protocol_lists_the_valid_ones():
    with pytest.raises(LRVDError, match="glue-bench.*llm-scripts|llm-scripts.*glue-bench") as err:
        BayesLoRA(protocol="paper")
    assert "\n" not in str(err.value)


def test_protocol_defaults_and_explicit_overrides():
    glue = BayesLoRA(protocol="glue-bench").params
    assert (glue.sample_warmup, glue.local_reparam, glue.n_samples) == (1.0, False, 0)
    assert (glue.log_sigma2_lr_mult, glue.kl_per_example, glue.after_prune) == (0.1, False, "rebuild-every-check")
    llm = BayesLoRA().params
    assert llm.protocol == "llm-scripts"
    # bayeslora_llama.py: sampling from step 0, local_reparam=True, --mc-eval 5, one AdamW group at
    # --lr (log σ² too), KL / x.size(0), _rebuild_opt_and_sched only `if changed`
    assert (llm.sample_warmup, llm.local_reparam, llm.n_samples) == (0.0, True, 5)
    assert (llm.log_sigma2_lr_mult, llm.kl_per_example, llm.after_prune) == (1.0, True, "rebuild-on-change")
    assert BayesLoRA(protocol="glue-bench", n_samples=4).params.n_samples == 4
    with pytest.raises(LRVDError, match="keep-moments") as err:
        BayesLoRA(after_prune="reset")
    assert "\n" not in str(err.value)
    assert set(PROTOCOLS) == {"glue-bench", "llm-scripts"}


def perturb(model) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lrvd_modules(model).values():
            layer.B_mu.copy_(0.1 * torch.randn(layer.B_mu.shape, generator=g))
            layer.rank_log_sigma2.fill_(0.0)


def test_glue_bench_trains_and_predicts_at_the_mean():
    """run_glue_bench.py never calls set_bayeslora_sampling(model, True): training forwards and the
    predictive are the mean model, while the KL still moves σ (through the loss)."""
    method, model = attached(total_steps=10, protocol="glue-bench")
    perturb(model)
    model.train()
    b = batch()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for step in range(1, 10):  # every step but the last: on_step_end keeps sampling off
        method.on_step_end(model, opt, step)
        torch.testing.assert_close(model(b), model(b))
    model.eval()
    with sampling(model, False):
        mean = torch.softmax(model(b), -1)
    torch.testing.assert_close(method.predict_proba(model, b), mean)
    loss, logs = method.training_loss(model, b, model(b), 0)
    sigma = [layer.rank_log_sigma2 for layer in lrvd_modules(model).values()]
    grads = torch.autograd.grad(loss, sigma)
    assert all(float(g.abs().sum()) > 0 for g in grads)  # σ moves only through the KL


def test_llm_scripts_sample_with_local_reparam_also_at_prediction():
    """bayeslora_llama.py: local_reparam=True, sampling on from step 0 and during MC evaluation; the
    authors' layer uses the local reparameterisation whenever it samples, so two identical rows of
    one replica group get different outputs (a shared weight draw would give equal ones)."""
    method, model = attached(total_steps=10)
    perturb(model)
    layer = next(iter(lrvd_modules(model).values()))
    assert layer.local_reparam is True
    model.train()
    method.on_step_end(model, None, 1)
    b = batch()
    assert not torch.allclose(model(b), model(b))  # sampling from the first step
    layer.eval()
    x = torch.randn(1, 7, layer.in_features).expand(2, 7, layer.in_features).contiguous()
    with sampling(layer, True, n_weight_samples=1):
        y = layer(x)
    assert not torch.allclose(y[0], y[1])
    probs = method.predict_proba(model.eval(), b)
    torch.testing.assert_close(probs.sum(-1), torch.ones(8))


# -- weight decay ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("protocol", "log_sigma2_lr"), [("glue-bench", 1e-4), ("llm-scripts", 1e-3)])
def test_no_weight_decay_on_adapter_means_or_head_biases(protocol, log_sigma2_lr):
    """glue_helpers.build_param_groups: A_mu, B_mu and log σ² at weight_decay 0, log σ² at
    adapter_lr · 0.1; the head's weight matrix at ``wd``, its bias at 0. bayeslora_llama.py
    (_optimizer_and_sched): log σ² in the one AdamW group at the full lr."""
    train = TrainConfig(weight_decay=0.1, lr=1e-3, head_lr=1e-2)
    method, model = attached(train=train, protocol=protocol)
    groups = method.param_groups(model, method.plan)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    for layer in lrvd_modules(model).values():
        assert decay[id(layer.A_mu)] == decay[id(layer.B_mu)] == decay[id(layer.rank_log_sigma2)] == 0.0
        assert lr[id(layer.rank_log_sigma2)] == pytest.approx(log_sigma2_lr)
    head = model.backbone.classifier
    assert decay[id(head.weight)] == 0.1 and decay[id(head.bias)] == 0.0
    assert lr[id(head.weight)] == lr[id(head.bias)] == 1e-2
    assert len(decay) == sum(1 for p in model.parameters() if p.requires_grad)


def test_fit_reports_the_nll_part_without_the_kl():
    """The "not learned" mark reads ``final_nll``: the smoothed NLL, without β · kl_scale · KL."""
    from lrvd.training import fit

    train = TrainConfig(lr=1e-3, max_steps=3, warmup_ratio=0.0)
    method, model = attached(total_steps=3, train=train, kl_scale=1e-3, protocol="glue-bench")
    result = fit(method, model, make_toy_loader(), method.plan, device="cpu", progress=False)
    gap = result.final_loss - result.final_nll
    assert gap == pytest.approx(1e-3 * method.last_kl, rel=0.2)  # KL barely moves in 3 steps
    assert result.final_nll < math.log(2) + 0.1


# -- after a prune check -----------------------------------------------------------------------------
def run_steps(method, model, steps: int, start: int = 0):
    from lrvd.training import train_step

    b = batch()
    for step in range(start, start + steps):
        train_step(
            method,
            model,
            method.optimizer,
            [b],
            step,
            device=torch.device("cpu"),
            train=method.plan.train,
            scheduler=method.scheduler,
        )


def doom_first_rank(model):
    """The first LRVD module, its rank 0 set to log α > 11 after the next step, every other rank < 4."""
    layer = next(iter(lrvd_modules(model).values()))
    with torch.no_grad():
        layer.A_mu[0].fill_(1e-6)
        layer.B_mu[:, 0].fill_(1e-6)
        layer.rank_log_sigma2[0] = 2.0
    return layer


def optimised(protocol: str, prune_every: int, **params):
    train = TrainConfig(lr=1e-2, warmup_ratio=0.1, max_grad_norm=0.0)
    method, model = attached(total_steps=20, train=train, protocol=protocol, prune_every=prune_every, **params)
    model.train()
    method.optimizer, method.scheduler = method.configure_optimizers(model, method.plan)
    return method, model


def test_glue_bench_rebuilds_adamw_at_every_check_with_one_step_at_lr_0():
    """glue_helpers.train_bayeslora: make_optim_and_sched(step_already=step) after every check, changed
    or not: moments reset, that step at the new schedule's λ(0) = 0, then the schedule at the step.
    The tensors a prune replaced get no gradient in that step (the bench prunes after the forward)."""
    method, model = optimised("glue-bench", prune_every=4, tau=1e9)  # a check that removes nothing
    run_steps(method, model, 4)
    opt = method.optimizer
    assert len(opt.state) == 0 and all(g["lr"] == 0.0 for g in opt.param_groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    run_steps(method, model, 1, start=4)
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(before[n], after[n]) for n in before)  # lr 0: nothing moved
    assert all(int(s["step"]) == 1 for s in opt.state.values())  # fresh moments, one step old
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * (20 - 5) / (20 - 2))  # back on the schedule

    method, model = optimised("glue-bench", prune_every=4, tau=8.0)
    run_steps(method, model, 3)
    layer = doom_first_rank(model)
    run_steps(method, model, 2, start=3)
    kept = {id(t) for t in (layer.A_mu, layer.B_mu, layer.rank_log_sigma2)}
    assert layer.r == SPEC.r - 1
    fresh = [p for g in method.optimizer.param_groups for p in g["params"] if id(p) in kept]
    assert len(fresh) == 3 and all(p not in method.optimizer.state for p in fresh)
    assert len(method.optimizer.state) > 0  # the other modules and the head did step


@pytest.mark.parametrize(("after_prune", "reset"), [("rebuild-on-change", True), ("keep-moments", False)])
def test_llm_scripts_rebuild_only_when_a_rank_went(after_prune, reset):
    """bayeslora_llama.py: ``if changed: opt, sched = _rebuild_opt_and_sched(...)``; keep-moments
    slices the kept ranks' moments and keeps the rate."""
    method, model = optimised("llm-scripts", prune_every=4, tau=1e9, after_prune=after_prune)
    run_steps(method, model, 4)
    assert len(method.optimizer.state) > 0 and method.optimizer.param_groups[0]["lr"] > 0  # nothing went
    method, model = optimised("llm-scripts", prune_every=4, tau=8.0, after_prune=after_prune)
    run_steps(method, model, 3)
    layer = doom_first_rank(model)
    run_steps(method, model, 1, start=3)
    assert layer.r == SPEC.r - 1
    assert (len(method.optimizer.state) == 0) is reset
    assert (method.optimizer.param_groups[0]["lr"] == 0.0) is reset
    assert method.schedule_lag == int(reset)
