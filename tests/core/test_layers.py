"""LRVDLinear: parameter budget, gradients, mean mode == peft LoRA (Linear and GPT-2 Conv1D),
sampling modes and the local-reparameterisation moments."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lrvd.inject
from conftest import ScaledLinear, TinyBertClassifier, assert_same_gradients, make_toy_loader
from lrvd.inject import inject_lrvd, lrvd_modules, mc_predict_proba, sampling
from lrvd.layers import LRVDLinear


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    return GPT2Model(config).eval()


def batch():
    return next(iter(make_toy_loader(n=8, batch_size=8, shuffle=False)))


def randomise_means(model: nn.Module, seed: int = 1) -> None:
    """LoRA-like B starts near zero; give it real values so comparisons are not vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lrvd_modules(model).values():
            layer.B_mu.copy_(0.1 * torch.randn(layer.B_mu.shape, generator=g))


def copy_into_peft(lrvd_model: nn.Module, peft_model: nn.Module) -> None:
    with torch.no_grad():
        for name, layer in lrvd_modules(lrvd_model).items():
            lora = peft_model.base_model.model.get_submodule(name)
            lora.lora_A["default"].weight.copy_(layer.A_mu)
            lora.lora_B["default"].weight.copy_(layer.B_mu)


def test_extra_parameters_are_exactly_r_per_module():
    base = nn.Linear(10, 6)
    layer = LRVDLinear(base, r=4, scaling=2.0)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    lora = 4 * (10 + 6)
    assert trainable == lora + 4
    assert layer.rank_log_sigma2.shape == (4,)
    assert not base.weight.requires_grad and not base.bias.requires_grad


def test_init_follows_lora_with_small_uniform_b():
    layer = LRVDLinear(nn.Linear(64, 32), r=8, scaling=2.0, init_log_sigma2=-8.0)
    assert layer.B_mu.abs().max() <= 1e-3 and layer.B_mu.abs().min() > 0
    bound = 1.0 / 64**0.5  # kaiming_uniform(a=√5) on fan_in 64
    assert layer.A_mu.abs().max() <= bound
    assert torch.all(layer.rank_log_sigma2 == -8.0)


def test_log_sigma2_is_clamped():
    layer = LRVDLinear(nn.Linear(4, 4), r=2, scaling=1.0)
    with torch.no_grad():
        layer.rank_log_sigma2.copy_(torch.tensor([-50.0, 50.0]))
    assert layer.log_sigma2().tolist() == [-20.0, 2.0]


def test_gradients_reach_rank_log_sigma2():
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(8, 5), r=3, scaling=1.0, init_log_sigma2=-2.0).train()
    x = torch.randn(16, 8)
    loss = layer(x).square().mean()
    loss.backward()
    assert layer.rank_log_sigma2.grad is not None and layer.rank_log_sigma2.grad.abs().sum() > 0
    layer.zero_grad()
    layer.kl().backward()  # the KL alone also pulls on log σ²
    assert layer.rank_log_sigma2.grad.abs().sum() > 0


def test_eval_uses_means_unless_sampling_requested():
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(8, 5), r=3, scaling=1.0, init_log_sigma2=0.0)
    x = torch.randn(4, 8)
    layer.eval()
    mean = layer.base_layer(x) + x @ layer.delta_weight().T
    torch.testing.assert_close(layer(x), mean)
    with sampling(layer, True):
        assert not torch.allclose(layer(x), mean)
    torch.testing.assert_close(layer(x), mean)  # state restored
    layer.train()
    assert not torch.allclose(layer(x), mean)
    with sampling(layer, False):
        torch.testing.assert_close(layer(x), mean)


@pytest.mark.parametrize("variant", ["factor", "gate"])
def test_mean_mode_equals_peft_lora_on_bert(variant):
    from peft import LoraConfig, get_peft_model

    model = TinyBertClassifier()
    reference = copy.deepcopy(model.backbone)
    inject_lrvd(model.backbone, ["query", "value"], r=4, scaling=16 / 4, variant=variant)
    randomise_means(model)
    peft_model = get_peft_model(reference, LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"]))
    copy_into_peft(model.backbone, peft_model)
    model.eval(), peft_model.eval()
    b = batch()
    expected = peft_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(model(b), expected, rtol=1e-5, atol=1e-6)


def test_mean_mode_equals_peft_lora_on_gpt2_conv1d():
    from peft import LoraConfig, get_peft_model

    lrvd_model = tiny_gpt2()
    reference = copy.deepcopy(lrvd_model)
    layers = inject_lrvd(lrvd_model, ["c_attn"], r=2, scaling=8 / 2)
    assert all(layer.fan_in_fan_out for layer in layers.values())
    randomise_means(lrvd_model)
    cfg = LoraConfig(r=2, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    peft_model = get_peft_model(reference, cfg).eval()
    copy_into_peft(lrvd_model, peft_model)
    ids = torch.randint(0, 64, (2, 7))
    expected = peft_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(lrvd_model.eval()(input_ids=ids).last_hidden_state, expected, rtol=1e-5, atol=1e-6)


def test_adapter_follows_base_dtype_and_device():
    layer = LRVDLinear(nn.Linear(4, 3).double(), r=2, scaling=1.0)
    assert layer.A_mu.dtype == torch.float64
    half = LRVDLinear(nn.Linear(4, 3).to(torch.bfloat16), r=2, scaling=1.0)
    assert half.A_mu.dtype == torch.float32  # log σ² near −20 needs fp32 storage
    assert half(torch.randn(2, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_local_reparam_matches_factor_noise_moments():
    """Local reparameterisation samples the exact output moments of the factor posterior:
    Var y_o = Σ_k μ_B² v_s + s2 m_s² + s2 v_s (incl. the cross term)."""
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(6, 3, bias=False), r=2, scaling=1.0, init_log_sigma2=-1.0)
    with torch.no_grad():
        layer.B_mu.normal_()
        layer.base_layer.weight.zero_()
    x = torch.randn(1, 6)
    n = 20000
    layer.train()
    with sampling(layer, True, n_weight_samples=n):  # factor samples, one per replica
        factor = layer(x.expand(n, 6))
    layer.local_reparam = True
    local = layer(x.expand(n, 6))
    s2 = torch.exp(layer.log_sigma2())
    m_s, v_s = x @ layer.A_mu.T, x.square().sum() * s2
    var = (v_s @ layer.B_mu.square().T + (m_s.square() * s2).sum() + (v_s * s2).sum()).reshape(1, -1)
    mean = m_s @ layer.B_mu.T
    for samples in (factor, local):
        torch.testing.assert_close(samples.mean(0, keepdim=True), mean.detach(), atol=0.1, rtol=0.05)
        torch.testing.assert_close(samples.var(0, keepdim=True), var.detach(), atol=0.02, rtol=0.08)


def test_local_reparam_sample_equals_the_moment_formula_draw_for_draw():
    """With the same noise, the layer's local-reparameterisation output is s (m_y + √v_y ε) with the
    moments written out as in the authors' layer (v_y through the matmul v_s (B_mu²)^T), at a
    scaling s ≠ 1 and distinct per-rank variances: the cheaper algebra leaves every draw unchanged."""
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(6, 5).double(), r=3, scaling=2.5, local_reparam=True)
    with torch.no_grad():
        layer.rank_log_sigma2.copy_(torch.tensor([-6.0, -2.0, 0.5]))
        layer.B_mu.normal_()
    layer.train()
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    s2 = torch.exp(layer.log_sigma2())
    m_s = x @ layer.A_mu.T
    v_s = x.square().sum(-1, keepdim=True) * s2
    m_y = m_s @ layer.B_mu.T
    v_y = v_s @ layer.B_mu.square().T + ((m_s.square() + v_s) * s2).sum(-1, keepdim=True)
    torch.manual_seed(1)
    expected = 2.5 * (m_y + torch.sqrt(v_y + 1e-12) * torch.randn_like(m_y))
    torch.manual_seed(1)
    got = layer.adapter_delta(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # and the same gradients (the noise path's hand-written backward) for a non-linear loss
    assert_same_gradients(got, expected, [x, layer.A_mu, layer.B_mu, layer.rank_log_sigma2])


def test_grouped_samples_use_one_weight_draw_per_group():
    """Inside a replica group the layer is one affine map (a single draw); groups differ."""
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(5, 4), r=3, scaling=1.0, init_log_sigma2=0.0).eval()
    x1, x2 = torch.randn(1, 5), torch.randn(1, 5)
    group = torch.cat([x1, x2, x1 + x2])
    with sampling(layer, True, n_weight_samples=3):
        y = layer(torch.cat([group] * 3)).reshape(3, 3, 4)
    bias = layer.base_layer.bias
    for s in range(3):
        torch.testing.assert_close(y[s, 0] + y[s, 1] - y[s, 2], bias, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y[0], y[1]) and not torch.allclose(y[1], y[2])


def test_mc_predictive_batched_and_looped_agree_when_noise_vanishes():
    model = TinyBertClassifier()
    inject_lrvd(model.backbone, ["query", "value"], r=2, scaling=1.0, init_log_sigma2=-20.0)
    randomise_means(model)
    model.eval()
    b = batch()
    mean = mc_predict_proba(model, b, 0)
    for chunk in (0, 1, 2):
        probs = mc_predict_proba(model, b, 4, chunk=chunk)
        assert probs.shape == (8, 2)
        torch.testing.assert_close(probs.sum(-1), torch.ones(8))
        torch.testing.assert_close(probs, mean, atol=1e-4, rtol=1e-4)


def test_mc_predictive_samples_differ_from_mean_with_noise():
    model = TinyBertClassifier()
    inject_lrvd(model.backbone, ["query", "value"], r=2, scaling=4.0, init_log_sigma2=1.0)
    randomise_means(model)
    model.eval()
    b = batch()
    assert not torch.allclose(mc_predict_proba(model, b, 3), mc_predict_proba(model, b, 0))


def test_gate_variant_samples_rank_gates_with_gradients():
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(8, 5), r=3, scaling=1.0, init_log_sigma2=-3.0, variant="gate").train()
    with torch.no_grad():
        layer.B_mu.normal_(std=0.1)
    x = torch.randn(16, 8)
    mean = layer.base_layer(x) + x @ layer.delta_weight().T
    y = layer(x)
    assert not torch.allclose(y, mean)
    y.square().mean().backward()
    assert layer.rank_log_sigma2.grad.abs().sum() > 0
    gates = layer.sample_gates(20000)
    alpha = torch.exp(layer.rank_log_alpha().clamp(max=8.0))
    torch.testing.assert_close(gates.mean(0), torch.ones(3), atol=0.1 * alpha.sqrt().max().item(), rtol=0)
    torch.testing.assert_close(gates.var(0), alpha.detach(), rtol=0.05, atol=0)


def test_inject_reports_candidates_when_nothing_matches():
    from lrvd import LRVDError

    model = TinyBertClassifier()
    with pytest.raises(
        LRVDError,
        match=r"no linear module matches target_modules=\['q_proj'\]; "
        r"the model's linear module names: query, key, value, dense, classifier$",
    ):
        inject_lrvd(model.backbone, ["q_proj"], r=2, scaling=1.0)


def test_a_module_pruned_to_rank_zero_leaves_the_autograd_graph():
    """Backward must stop at the lowest module that still has ranks: a rank-0 module adds nothing to
    the output and builds no graph, so the frozen layer below it is never backpropagated through."""
    from lrvd.pruning import prune_ranks

    torch.manual_seed(0)
    lower, upper = LRVDLinear(nn.Linear(6, 6), r=3, scaling=1.0), LRVDLinear(nn.Linear(6, 2), r=3, scaling=1.0)
    x = torch.randn(5, 6)
    with torch.no_grad():
        lower.rank_log_sigma2.fill_(5.0)  # huge noise relative to the means: log α ≫ τ, pruned
    lower.eval()
    removed = prune_ranks(lower, tau=3.0, min_ranks=0)
    assert removed and lower.r == 0
    hidden = lower(x)
    torch.testing.assert_close(hidden, lower.base_layer(x))
    assert hidden.grad_fn is None  # nothing below `upper` will be differentiated
    y = upper(hidden)
    y.sum().backward()
    assert upper.A_mu.grad is not None and lower.A_mu.grad is None


def test_activation_probe_counts_the_outputs_alive_at_once():
    """Sequential(Linear(4, 100), Linear(100, 3), Linear(3, 50)) on 5 rows: when the second layer's
    output exists the first's (its input) is still alive: 5·100·4 + 5·3·4 = 2060 bytes; at the third
    the first is freed (60 + 1000); the Sequential's output is the third's storage (counted once)."""
    from lrvd.inject import ActivationProbe

    model = nn.Sequential(nn.Linear(4, 100), nn.Linear(100, 3), nn.Linear(3, 50))
    with torch.no_grad(), ActivationProbe(model) as probe:
        model(torch.randn(5, 4))
    assert probe.peak == 2060
    assert not model[0]._forward_hooks  # hooks removed on exit


def test_auto_chunk_from_the_memory_budget_hand_computed():
    from lrvd.inject import auto_chunk

    # c = floor(1 + budget (resident + a) / (2 a)), in [1, S]
    assert auto_chunk(10, resident=100, activation=10, memory_budget=0.1) == 1  # 1 + 11/20
    assert auto_chunk(10, resident=1000, activation=10, memory_budget=0.1) == 6  # 1 + 101/20 = 6.05
    assert auto_chunk(10, resident=10**6, activation=10, memory_budget=0.1) == 10  # weights ≫ activations
    assert auto_chunk(10, resident=1000, activation=10, memory_budget=0.0) == 1
    assert auto_chunk(10, resident=1000, activation=0, memory_budget=0.1) == 10


@pytest.mark.parametrize("budget, passes", [(0.0, 10), (1e6, 2)])
def test_mc_predictive_chunks_samples_from_the_memory_budget(budget, passes, monkeypatch):
    """mc_chunk = 0 off CPU: one probed sample, then chunks of auto_chunk samples: no extra memory
    allowed means one sample per pass; an unbounded budget puts the other 9 in one pass. (The CPU
    model stands in for a CUDA one: no device has a measured chunk here.)"""
    monkeypatch.setattr(lrvd.inject, "DEVICE_MC_CHUNK", {})
    model = TinyBertClassifier()
    inject_lrvd(model.backbone, ["query", "value"], r=2, scaling=1.0, init_log_sigma2=-2.0, local_reparam=True)
    model.eval()
    calls = []
    model.backbone.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    batch = next(iter(make_toy_loader(n=4, batch_size=4, shuffle=False)))
    probs = mc_predict_proba(model, batch, 10, chunk=0, memory_budget=budget)
    assert len(calls) == passes and sum(calls) == 10 * 4
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_mc_predictive_loops_on_cpu_by_default_whatever_the_budget():
    """mc_chunk = 0 on CPU is the measured choice, a loop of S passes over the batch (no probe pass
    either), even where the memory budget would batch every sample."""
    from lrvd.inject import default_chunk

    model = TinyBertClassifier()
    inject_lrvd(model.backbone, ["query", "value"], r=2, scaling=1.0, init_log_sigma2=-2.0, local_reparam=True)
    model.eval()
    assert default_chunk(model) == 1 and default_chunk(nn.Linear(2, 2, device="meta")) == 0
    calls = []
    model.backbone.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    batch = next(iter(make_toy_loader(n=4, batch_size=4, shuffle=False)))
    torch.manual_seed(3)
    probs = mc_predict_proba(model, batch, 10, chunk=0, memory_budget=1e6)
    assert calls == [4] * 10
    torch.manual_seed(3)
    torch.testing.assert_close(probs, mc_predict_proba(model, batch, 10, chunk=1))


# -- written against surviving mutants (docs/testing.md) -------------------------------------------
def test_frozen_shape_of_linear_and_conv1d_and_the_rank_one_layer():
    from transformers.pytorch_utils import Conv1D

    import lrvd

    linear = lrvd.LRVDLinear(nn.Linear(3, 5), r=1, scaling=1.0)  # r = 1 is a valid rank
    assert (linear.fan_in_fan_out, linear.in_features, linear.out_features, linear.r) == (False, 3, 5, 1)
    conv = lrvd.LRVDLinear(Conv1D(5, 3), r=2, scaling=1.0)  # Conv1D(nf=out, nx=in): weight [in, out]
    assert (conv.fan_in_fan_out, conv.in_features, conv.out_features) == (True, 3, 5)
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        lrvd.LRVDLinear(nn.Linear(3, 5), r=0, scaling=1.0)
    with pytest.raises(ValueError, match="unknown LRVD variant 'gates'; valid: factor, gate"):
        lrvd.LRVDLinear(nn.Linear(3, 5), r=1, scaling=1.0, variant="gates")
    with pytest.raises(TypeError, match="LRVDLinear wraps nn.Linear or Conv1D, got Bilinear"):
        lrvd.LRVDLinear(nn.Bilinear(3, 3, 5), r=1, scaling=1.0)


def _float64_layer(variant: str) -> LRVDLinear:
    """A float64 layer with distinct per-rank variances and real (not ~1e-3) B means."""
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(6, 5).double(), r=3, scaling=2.5, variant=variant)
    with torch.no_grad():
        layer.rank_log_sigma2.copy_(torch.tensor([-6.0, -2.0, 0.5]))
        layer.B_mu.normal_()
    return layer.eval()


@pytest.mark.parametrize("variant", ["factor", "gate"])
def test_grouped_sample_equals_the_posterior_draw_for_draw(variant):
    """With the same noise, replica group s of a sampled forward is s·x ΔW_s^T with, per group,
    factor: ΔW_s = (B_mu + σ ε_B) (A_mu + σ ε_A), σ_k = exp(½ log σ²_k), ε in float64 like the adapter;
    gate:   ΔW_s = B_mu diag(z_s) A_mu, z_s,k = 1 + √α_k ε_k.
    The reference is written per group and per matrix, not through the layer's batched einsums."""
    layer = _float64_layer(variant)
    x = torch.randn(4, 3, 6, dtype=torch.float64)  # 2 groups of 2 sequences of 3 tokens
    torch.manual_seed(1)
    with sampling(layer, True, n_weight_samples=2):
        got = layer.adapter_delta(x)
    torch.manual_seed(1)
    sigma = torch.exp(0.5 * layer.rank_log_sigma2.detach())
    if variant == "factor":
        eps_A = torch.randn(2, 3, 6, dtype=torch.float64)
        eps_B = torch.randn(2, 5, 3, dtype=torch.float64)
        deltas = [(layer.B_mu + sigma * eps_B[s]) @ (layer.A_mu + sigma[:, None] * eps_A[s]) for s in range(2)]
    else:
        z = 1.0 + torch.exp(0.5 * layer.rank_log_alpha()) * torch.randn(2, 3, dtype=torch.float64)
        deltas = [layer.B_mu @ torch.diag(z[s]) @ layer.A_mu for s in range(2)]
    expected = torch.cat([2.5 * x[2 * s : 2 * s + 2] @ deltas[s].T for s in range(2)])
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-12)
    torch.manual_seed(1)
    with sampling(layer, False):  # and the means differ from every draw: the noise is not negligible
        assert not torch.allclose(layer.adapter_delta(x), got, rtol=1e-3, atol=0)


def test_sampling_noise_lives_on_the_adapters_device_one_draw_by_default():
    """Noise is drawn on the adapter's device (the meta device stands in for an accelerator here: a
    CPU noise tensor cannot be added to it), and ``sample_*()`` without ``n`` is one draw."""
    layer = LRVDLinear(nn.Linear(6, 5, device="meta"), r=3, scaling=1.0, variant="gate")
    A, B = layer.sample_factors()
    gates = layer.sample_gates()
    assert (A.shape, B.shape, gates.shape) == ((1, 3, 6), (1, 5, 3), (1, 3))
    assert {A.device.type, B.device.type, gates.device.type} == {"meta"}


def test_local_reparam_keeps_an_all_zero_input_row_finite():
    """A zero input row (after a ReLU or dropout) has zero output variance; the 1e-12 floor keeps
    √v and the noise gradient ε / (2√v) finite, and the row's update stays ~1e-6."""
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(6, 5), r=3, scaling=2.0, init_log_sigma2=-1.0, local_reparam=True).train()
    x = torch.randn(3, 6)
    x[1] = 0.0
    x.requires_grad_(True)
    delta = layer.adapter_delta(x)
    assert torch.isfinite(delta).all() and delta[1].abs().max() < 1e-4
    delta.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in (x, layer.A_mu, layer.B_mu, layer.rank_log_sigma2))


def test_grouped_sampling_rejects_a_batch_that_does_not_split_into_the_groups():
    layer = LRVDLinear(nn.Linear(3, 2), r=1, scaling=1.0)
    with (
        sampling(layer, True, n_weight_samples=2),
        pytest.raises(ValueError, match=r"^leading dim 5 is not a multiple of n_weight_samples=2$"),
    ):
        layer(torch.randn(5, 3))


def test_extra_forward_arguments_reach_the_base_layer():
    torch.manual_seed(0)
    layer = LRVDLinear(ScaledLinear(4, 3), r=2, scaling=1.0).eval()
    x = torch.randn(2, 4)
    delta = x @ layer.delta_weight().T
    torch.testing.assert_close(layer(x, 3.0, shift=0.5), 3.0 * layer.base_layer(x) + 0.5 + delta)
