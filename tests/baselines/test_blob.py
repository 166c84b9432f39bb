"""BLoB: closed-form KL, flipout noise, MC predictive, parameter count, and training."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from conftest import ScaledLinear, TinyBertClassifier, make_toy_loader
from lrvd.errors import LRVDError
from lrvd.protocol import AdapterConfig, TrainConfig, TrainPlan
from lrvd.registry import get_method, list_methods
from lrvd.training import fit
from lrvd_baselines.blob import BLoB, BLoBLinear, BLoBParams, kl_weight
from lrvd_baselines.lora import LoRA

SPEC = AdapterConfig(r=2, alpha=4)


def plan(steps: int = 1, n_train: int = 32) -> TrainPlan:
    return TrainPlan(
        total_steps=steps, n_train=n_train, train=TrainConfig(lr=1e-2, mixed_precision="no", warmup_ratio=0.0)
    )


def test_kl_equals_closed_form_by_hand():
    layer = BLoBLinear(nn.Linear(2, 3), r=1, scaling=1.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[0.3, -0.5]]))
        layer.lora_A_std_sqrt.copy_(torch.tensor([[0.2, 0.4]]))  # std = 0.04, 0.16
    sp = 0.2
    expected = sum(math.log(sp / s) + (s**2 + m**2) / (2 * sp**2) - 0.5 for m, s in [(0.3, 0.04), (-0.5, 0.16)])
    assert float(layer.kl(sp).detach()) == pytest.approx(expected, rel=1e-5)


def test_flipout_noise_differs_across_examples():
    torch.manual_seed(0)
    layer = BLoBLinear(nn.Linear(8, 4), r=2, scaling=1.0, init_eps=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(1, 8).repeat(6, 1)  # six identical examples
    layer.sampling = False
    mean = layer(x)
    layer.sampling = True
    noise = layer(x) - mean
    assert noise.abs().max() > 0
    assert not torch.allclose(noise[0], noise[1]) and torch.unique(noise, dim=0).shape[0] > 1


def test_kl_weights_sum_to_one_per_cycle_and_peak_at_its_end():
    w = [kl_weight(i, 20) for i in range(1, 21)]
    assert sum(w) == pytest.approx(1.0, rel=1e-6) and w[-1] == max(w) and kl_weight(21, 20) == w[0]
    assert kl_weight(5000, 5000) == pytest.approx(0.5)  # no overflow for long cycles


def test_extra_parameters_equal_size_of_A_and_predictive_differs_from_mean():
    assert "blob" in list_methods() and get_method("blob") is BLoB
    method = BLoB()
    model = method.attach(TinyBertClassifier(), SPEC, plan())
    lora_model = LoRA().attach(TinyBertClassifier(), SPEC, plan())
    counts = method.parameter_counts(model)
    size_a = 2 * 2 * SPEC.r * 32  # 2 layers x {query, value} x [r, hidden]
    assert counts["variational"] == size_a
    assert counts["trainable"] - LoRA().parameter_counts(lora_model)["trainable"] == size_a
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, BLoBLinear):
                layer.lora_B.normal_()
                layer.lora_A_std_sqrt.fill_(0.5)
    batch = next(iter(make_toy_loader(8, shuffle=False)))
    model.eval()
    mean = method.predict_proba(model, batch, n_samples=0)
    sampled = method.predict_proba(model, batch, n_samples=3)
    assert torch.allclose(sampled.sum(-1), torch.ones(8)) and not torch.allclose(sampled, mean)
    assert torch.allclose(method.predict_proba(model, batch, n_samples=0), mean)


def test_few_steps_lower_the_loss_and_update_the_stds():
    torch.manual_seed(0)
    method = BLoB(kl_lr=0.01)
    p = plan(steps=30, n_train=64)
    model = method.attach(TinyBertClassifier(), SPEC, p)
    stds = [m.lora_A_std_sqrt.detach().clone() for m in model.modules() if isinstance(m, BLoBLinear)]
    result = fit(method, model, make_toy_loader(64), p, device="cpu", progress=False)
    first, last = result.loss_history[0]["loss"], result.loss_history[-1]["loss"]
    assert last < first
    after = [m.lora_A_std_sqrt for m in model.modules() if isinstance(m, BLoBLinear)]
    assert any(not torch.equal(a, b) for a, b in zip(stds, after))
    assert result.loss_history[-1]["kl"] > 0


# -- pinned to BLoB's code (github Wang-ML-Lab/bayesian-peft, modelwrappers/blob.py) -----------------
def readable_layer(init_eps: float = 0.05) -> BLoBLinear:
    """d_in = 3, r = 2, d_out = 2: base and mean A zero, B = identity, so the output is z's noise."""
    layer = BLoBLinear(nn.Linear(3, 2, bias=False), r=2, scaling=1.0, init_eps=init_eps)
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.lora_A.zero_()
        layer.lora_B.copy_(torch.eye(2))
    layer.sampling = True
    return layer


def test_flipout_flips_the_sign_of_each_rank_output_per_row():
    """With x = e_0 every row's noise is r_0 · t ∘ E[:, 0]: without the output signs t all rows would
    be ± one vector (equal sign pattern); BLoB's flipout gives both patterns within one pass."""
    torch.manual_seed(0)
    layer = readable_layer()
    x = torch.zeros(64, 3)
    x[:, 0] = 1.0
    noise = layer(x)
    pattern = torch.sign(noise[:, 0]) * torch.sign(noise[:, 1])
    assert (pattern > 0).any() and (pattern < 0).any()
    magnitude = noise.abs()
    torch.testing.assert_close(magnitude, magnitude[:1].expand_as(magnitude))  # one E per pass


def test_noise_std_is_g_squared():
    """std(A) = G² (``lora_A_std_sqrt`` holds G): G = 0.5 gives std 0.25, not 0.5."""
    torch.manual_seed(0)
    layer = readable_layer()
    with torch.no_grad():
        layer.lora_A_std_sqrt.copy_(torch.tensor([[0.5, 0.3, 0.1], [0.7, 0.2, 0.1]]))
    x = torch.zeros(1, 3)
    x[0, 0] = 1.0
    draws = torch.cat([layer(x) for _ in range(4000)])  # a fresh E per pass
    torch.testing.assert_close(draws.std(0), torch.tensor([0.25, 0.49]), rtol=0.05, atol=0)


def test_defaults_and_initialisation_are_blobs():
    """bayes_eps 0.05 with G ~ U(eps/√2, eps), bayes_beta (prior std) 0.2, bayes_kllr 0.01,
    bayes_gamma 8, 10 evaluation samples (scripts/blob/blob-llama-all.sh and BLoBConfig)."""
    p = BLoB().params
    assert (p.init_eps, p.prior_std, p.kl_lr, p.gamma) == (0.05, 0.2, 0.01, 8.0)
    assert (p.n_samples, p.kl_reweighting) == (10, True)
    model = BLoB().attach(TinyBertClassifier(), SPEC, plan())
    layers = [m for m in model.modules() if isinstance(m, BLoBLinear)]
    g = torch.cat([layer.lora_A_std_sqrt.detach().flatten() for layer in layers])
    assert float(g.min()) >= 0.05 / math.sqrt(2) and float(g.max()) <= 0.05
    assert float(g.min()) < 0.0365 and float(g.max()) > 0.049  # spans the interval
    assert all(float(layer.lora_B.abs().max()) == 0.0 for layer in layers)  # B starts at zero (LoRA)


def test_g_is_stepped_by_sgd_on_nll_plus_weighted_kl_and_m_gets_the_kl_gradient():
    """BLoB's second optimizer: plain SGD at kl_lr on G (its NLL gradient + π ∂KL/∂G) and on M
    (π ∂KL/∂M); G is not in AdamW. With σ = G²: ∂KL/∂G = −2/G + 2G³/σ_p², ∂KL/∂μ = μ/σ_p²."""
    method = BLoB(kl_lr=0.1)
    p = plan(steps=100, n_train=32)
    model = method.attach(TinyBertClassifier(), SPEC, p)
    optimizer, _ = method.configure_optimizers(model, p)
    in_adamw = {id(q) for group in optimizer.param_groups for q in group["params"]}
    layers = [m for m in model.modules() if isinstance(m, BLoBLinear)]
    assert all(id(layer.lora_A_std_sqrt) not in in_adamw and id(layer.lora_A) in in_adamw for layer in layers)
    layer = layers[0]
    g0, m0 = layer.lora_A_std_sqrt.detach().clone(), layer.lora_A.detach().clone()
    nll_grad = torch.full_like(g0, 0.3)
    for other in layers:
        other.lora_A_std_sqrt.grad = nll_grad.clone()
        other.lora_A.grad = torch.full_like(m0, 0.7)  # M's NLL gradient is AdamW's, not this step's
    step = method.kl_cycle  # the cycle's last step: π ≈ 1/2, so the KL step on M is visible
    pi = method.kl_weight(step)
    assert pi == pytest.approx(0.5)
    lr = 0.1 * (p.total_steps - (step - 1)) / p.total_steps  # linear decay, no warm-up
    kl = float(sum(other.kl(0.2) for other in layers))  # logged: the KL before the step
    logs = method.on_step_end(model, optimizer, step)
    assert logs == pytest.approx({"kl": kl, "kl_weight": pi})
    sp2 = 0.2**2
    expected_g = g0 - lr * (nll_grad + pi * (-2.0 / g0 + 2.0 * g0**3 / sp2))
    expected_m = m0 - lr * pi * m0 / sp2
    torch.testing.assert_close(layer.lora_A_std_sqrt.detach(), expected_g, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(layer.lora_A.detach(), expected_m, rtol=1e-5, atol=1e-7)
    assert float((layer.lora_A.detach() - m0).abs().max()) > 1e-3


def test_kl_cycle_length_is_blobs():
    """M = int(100 · N^(π/γ) / batch) (modelwrappers/blob.py with --bayes-datasetrescaling, one GPU):
    N = 1000, γ = 8, batch 8 → 100 · 15.07 / 8 = 188; π_i = 2^i / (2^{K+1} − 1)."""
    method = BLoB()
    train = TrainConfig(batch_size=8, mixed_precision="no")
    method.attach(TinyBertClassifier(), SPEC, TrainPlan(total_steps=10, n_train=1000, train=train))
    assert method.kl_cycle == 188
    assert [kl_weight(i, 3) for i in (1, 2, 3, 4)] == pytest.approx([2 / 15, 4 / 15, 8 / 15, 2 / 15])


def test_lm_head_is_adaptable_on_a_causal_lm():
    """--apply-classhead-lora: LoRA and BLoB's Gaussian A also on lm_head, which scores the letters."""
    from transformers import AutoTokenizer, LlamaConfig

    from lrvd_bench.backbones import build_backbone_from_config, resolve_model_path
    from lrvd_bench.tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    backbone = build_backbone_from_config(config, get_task("arc-e"), tokenizer)
    method = BLoB()
    model = method.attach(
        backbone.model, AdapterConfig(target_modules=["q_proj", "v_proj", "lm_head"], r=2, alpha=4), plan()
    )
    head = model.backbone.lm_head
    assert isinstance(head, BLoBLinear) and head.lora_A_std_sqrt.requires_grad
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": torch.tensor([0, 1])}
    model.eval()
    before = model(batch)
    with torch.no_grad():
        head.lora_B.normal_()
    assert not torch.allclose(model(batch), before)  # the head's adapter moves the letter logits


# -- written against surviving mutants (docs/testing.md, `tools/mutation.sh blob`) --------------------
def blob_layers_of(model) -> list[BLoBLinear]:
    return [m for m in model.modules() if isinstance(m, BLoBLinear)]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"init_eps": 0.0}, "init_eps must be > 0, got 0.0"),
        ({"prior_std": 0.0}, "prior_std must be > 0, got 0.0"),
        ({"gamma": 0.0}, "gamma must be > 0, got 0.0"),
        ({"gamma": float("nan")}, "gamma must be > 0, got nan"),
        ({"kl_lr": -0.1}, "kl_lr must be >= 0, got -0.1"),
        ({"n_samples": -1}, "n_samples must be >= 0, got -1"),
    ],
)
def test_params_reject_each_out_of_range_value_alone(bad, message):
    with pytest.raises(LRVDError, match=f"^{re.escape(message)}$"):
        BLoBParams(**bad)


def test_params_accept_the_boundary_values():
    """γ in (0, 1] is a (short-cycle) γ, kl_lr = 0 switches the KL/std step off, n_samples = 0 is BLoB (N=0)."""
    p = BLoBParams(gamma=0.5, kl_lr=0.0, n_samples=0)
    assert (p.gamma, p.kl_lr, p.n_samples) == (0.5, 0.0, 0)


def test_layer_defaults_initialisation_dtype_and_wrapper_error():
    """Default init_eps 0.05 (G ~ U(0.035, 0.05)); M ~ kaiming_uniform(a=√5), i.e. U(±1/√d_in) as LoRA's
    A (2048 draws reach past 0.95 of the bound); adapter parameters in the base's fp64."""
    torch.manual_seed(0)
    layer = BLoBLinear(nn.Linear(256, 4), r=8, scaling=1.0)
    g = layer.lora_A_std_sqrt.detach()
    assert float(g.min()) >= 0.05 / math.sqrt(2) and float(g.max()) <= 0.05
    largest, bound = float(layer.lora_A.detach().abs().max()), 1 / math.sqrt(256)
    assert 0.95 * bound < largest <= bound
    double = BLoBLinear(nn.Linear(4, 3).double(), r=2, scaling=1.0)
    assert {p.dtype for p in (double.lora_A, double.lora_A_std_sqrt, double.lora_B)} == {torch.float64}
    with pytest.raises(TypeError, match="^BLoBLinear wraps nn.Linear or Conv1D, got Bilinear$"):
        BLoBLinear(nn.Bilinear(3, 3, 5), r=1, scaling=1.0)


def test_adapter_runs_in_fp32_under_a_bf16_base_and_returns_bf16():
    """y = W x + b + s·B M x: the adapter path in fp32 (x cast up), the sum cast back to the base's bf16."""
    torch.manual_seed(0)
    layer = BLoBLinear(nn.Linear(4, 3).to(torch.bfloat16), r=2, scaling=2.0).eval()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 4).to(torch.bfloat16)
    out = layer(x)
    assert layer.lora_A.dtype == torch.float32 and out.dtype == torch.bfloat16
    expected = layer.base_layer(x).float() + 2.0 * (x.float() @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(out.float(), expected.detach(), rtol=2e-2, atol=2e-2)


def test_sampled_forward_equals_flipout_draw_for_draw():
    """With the same noise: y = W x + b + s·B(M x + ((x ∘ r) Eᵀ) ∘ t), E = G² ∘ ε (one per pass),
    r ∈ {±1}^{d_in} and t ∈ {±1}^r per row, drawn as the authors' layer draws them: r and t as
    uniform(−1, 1) signs, then ε, in that order."""
    torch.manual_seed(0)
    layer = BLoBLinear(nn.Linear(6, 4), r=3, scaling=2.0, init_eps=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.sampling = True
    x = torch.randn(2, 5, 6)
    torch.manual_seed(1)
    got = layer(x)
    torch.manual_seed(1)
    r = torch.empty(2, 5, 6).uniform_(-1, 1).sign()
    t = torch.empty(2, 5, 3).uniform_(-1, 1).sign()
    e = layer.lora_A_std_sqrt.detach().square() * torch.randn(3, 6)
    assert set(r.unique().tolist()) == set(t.unique().tolist()) == {-1.0, 1.0}
    z = x @ layer.lora_A.T + ((x * r) @ e.T) * t
    expected = layer.base_layer(x) + 2.0 * z @ layer.lora_B.T
    torch.testing.assert_close(got, expected.detach())


def test_flipout_noise_lives_on_the_adapters_device():
    """The sign vectors are drawn on x's device (the meta device stands in for an accelerator here:
    a CPU tensor cannot be multiplied with it)."""
    layer = BLoBLinear(nn.Linear(4, 3, device="meta"), r=2, scaling=1.0)
    layer.sampling = True
    out = layer(torch.empty(5, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (5, 3)


def test_extra_forward_arguments_reach_the_base_layer():
    torch.manual_seed(0)
    layer = BLoBLinear(ScaledLinear(4, 3), r=2, scaling=1.0).eval()
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x, 3.0, shift=0.5), 3.0 * layer.base_layer(x) + 0.5)  # B = 0 at init


def test_attach_refuses_fp16_with_one_line():
    p = TrainPlan(total_steps=1, n_train=32, train=TrainConfig(mixed_precision="fp16"))
    with pytest.raises(LRVDError, match=r"^blob does not support mixed_precision=fp16 \(use bf16 or no\)$"):
        BLoB().attach(TinyBertClassifier(), SPEC, p)


def test_attach_passes_scaling_and_init_eps_and_counts_the_effective_batch():
    """Every layer gets s = alpha / r = 2 and G ~ U(0.2/√2, 0.2) for init_eps = 0.2; batch 4 with
    gradient accumulation 2 is an effective batch of 8: N = 1000 gives 125 steps per epoch, a
    188-step KL cycle (as batch 8), and without re-weighting π = 1/125 at every step."""
    method = BLoB(init_eps=0.2, kl_reweighting=False)
    train = TrainConfig(batch_size=4, grad_accum=2, mixed_precision="no")
    model = method.attach(TinyBertClassifier(), SPEC, TrainPlan(total_steps=10, n_train=1000, train=train))
    layers = blob_layers_of(model)
    assert [layer.scaling for layer in layers] == [2.0] * 4
    g = torch.cat([layer.lora_A_std_sqrt.detach().flatten() for layer in layers])
    assert float(g.min()) >= 0.2 / math.sqrt(2) and float(g.max()) <= 0.2
    assert (method.steps_per_epoch, method.kl_cycle) == (125, 188)
    assert [method.kl_weight(s) for s in (1, 7, 188)] == [1 / 125] * 3


@pytest.mark.parametrize("reweighting, weight", [(True, 2 / 3), (False, 1.0)])
def test_a_tiny_training_set_has_one_step_epochs_and_one_step_cycles(reweighting, weight):
    """N = 2, batch 256: ⌈2/256⌉ = 1 step per epoch (π = 1/1) and int(100 · 2^(π/8) / 256) = 0, floored
    to a one-step cycle, whose single weight is π_1 = 2 / (2² − 1)."""
    method = BLoB(kl_reweighting=reweighting)
    train = TrainConfig(batch_size=256, mixed_precision="no")
    method.attach(TinyBertClassifier(), SPEC, TrainPlan(total_steps=3, n_train=2, train=train))
    assert (method.steps_per_epoch, method.kl_cycle) == (1, 1)
    assert [method.kl_weight(s) for s in (1, 2, 3)] == pytest.approx([weight] * 3)


def test_kl_lr_follows_the_main_schedule():
    """BLoB's scheduler2 is the main schedule (lrvd.protocol.linear_warmup_decay) applied to kl_lr: 100
    steps, warm-up 0.1 → 0.1 (s + 1)/10 for s < 10, then 0.1 (100 − s)/90; a one-step run gets kl_lr."""
    method = BLoB(kl_lr=0.1)
    train = TrainConfig(warmup_ratio=0.1, mixed_precision="no")
    method.attach(TinyBertClassifier(), SPEC, TrainPlan(total_steps=100, n_train=32, train=train))
    assert [method.kl_lr(s) for s in (0, 4, 9, 10, 55, 100)] == pytest.approx([0.01, 0.05, 0.1, 0.1, 0.05, 0.0])
    one = BLoB(kl_lr=0.1)
    one.attach(TinyBertClassifier(), SPEC, plan(steps=1))
    assert one.kl_lr(0) == pytest.approx(0.1)


def test_a_non_finite_nll_gradient_on_g_skips_the_kl_step_and_clears_it():
    """An inf in G's gradient (an overflowed backward) must reach neither G nor M."""
    method = BLoB(kl_lr=0.1)
    model = method.attach(TinyBertClassifier(), SPEC, plan(steps=100))
    layers = blob_layers_of(model)
    before = [(layer.lora_A.detach().clone(), layer.lora_A_std_sqrt.detach().clone()) for layer in layers]
    for layer in layers:
        layer.lora_A_std_sqrt.grad = torch.full_like(layer.lora_A_std_sqrt, 0.3)
    layers[0].lora_A_std_sqrt.grad[0, 0] = float("inf")
    method.on_step_end(model, None, method.kl_cycle)
    for layer, (m, g) in zip(layers, before):
        assert torch.equal(layer.lora_A.detach(), m) and torch.equal(layer.lora_A_std_sqrt.detach(), g)
        assert layer.lora_A_std_sqrt.grad is None


def test_saved_adapter_is_the_posterior_mean_as_plain_peft_lora(tmp_path):
    """The peft files hold (M, B) and the head: peft's LoRA on a fresh backbone reproduces BLoB (N=0),
    and BLoB's own load restores the same mean predictive and the stds G."""
    from peft import PeftModel

    method = BLoB()
    model = method.attach(TinyBertClassifier(), SPEC, plan())
    with torch.no_grad():
        for layer in blob_layers_of(model):
            layer.lora_B.normal_()
            layer.lora_A_std_sqrt.uniform_(0.1, 0.3)
        for p in model.head_parameters():
            p.add_(0.5)  # a trained head must travel with the adapter
    model.eval()
    b = next(iter(make_toy_loader(8, shuffle=False)))
    expected = model(b)
    method.save_adapter(model, tmp_path)
    reloaded = PeftModel.from_pretrained(TinyBertClassifier().backbone, str(tmp_path)).eval()
    logits = reloaded(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    fresh_method = BLoB()
    fresh = fresh_method.attach(TinyBertClassifier(), SPEC, plan())
    with torch.no_grad():  # scramble, so the load must restore everything
        for p in fresh.parameters():
            if p.requires_grad:
                p.add_(0.5)
    fresh_method.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh.eval()(b), expected)
    for a, c in zip(blob_layers_of(fresh), blob_layers_of(model)):
        torch.testing.assert_close(a.lora_A_std_sqrt, c.lora_A_std_sqrt)


def test_saved_adapter_stores_m_and_b_once_and_only_g_in_the_sidecar(tmp_path):
    """peft's file holds every layer's M and B (the sidecar points to them: ``native_in_peft``); the
    sidecar's own tensors are exactly the stds G, one per adapted module."""
    import json

    from safetensors.torch import load_file

    method = BLoB()
    model = method.attach(TinyBertClassifier(), SPEC, plan())
    method.save_adapter(model, tmp_path)
    native = {n for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert len(native) == 8
    sidecar = json.loads((tmp_path / "lrvd_adapter.json").read_text())
    assert native <= set(sidecar["native_in_peft"])
    stds = {n for n, _ in model.named_parameters() if n.endswith("lora_A_std_sqrt")}
    assert set(load_file(str(tmp_path / "lrvd_posterior.safetensors"))) == stds


def test_saved_adapter_on_gpt2_conv1d_says_fan_in_fan_out(tmp_path):
    """GPT-2's Conv1D stores weight [in, out]: the peft config must say ``fan_in_fan_out``."""
    import json

    from transformers import AutoTokenizer, GPT2Config

    from lrvd_bench.backbones import build_backbone_from_config, resolve_model_path
    from lrvd_bench.tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=4)
    backbone = build_backbone_from_config(config, get_task("arc-e"), tokenizer)
    method = BLoB()
    model = method.attach(backbone.model, AdapterConfig(target_modules=["c_attn"], r=2, alpha=4), plan())
    method.save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fan_in_fan_out"] is True
