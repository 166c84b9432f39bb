"""The Molchanov (2017) KL approximation against hand-computed values, and its sums over layers."""

import math

import pytest
import torch
from torch import nn

import lrvd
from lrvd.kl import K1, K2, K3, kl_log_uniform
from lrvd.layers import LRVDLinear, total_kl


def kl_by_hand(log_alpha: float) -> float:
    sigmoid = 1.0 / (1.0 + math.exp(-(K2 + K3 * log_alpha)))
    return -(K1 * sigmoid - 0.5 * math.log(1.0 + 1.0 / math.exp(log_alpha)) - K1)


def test_constants_are_molchanov_2017():
    assert (K1, K2, K3) == (0.63576, 1.87320, 1.48695)


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 3.0, -8.0, 8.0])
def test_kl_matches_hand_computed(log_alpha):
    got = float(lrvd.kl_log_uniform(torch.tensor(log_alpha, dtype=torch.float64)))
    assert got == pytest.approx(kl_by_hand(log_alpha), rel=1e-10)


def test_kl_is_stable_and_decreasing_in_alpha():
    log_alpha = torch.linspace(-60.0, 60.0, 241)
    kl = kl_log_uniform(log_alpha)
    assert torch.isfinite(kl).all()
    assert (kl[1:] <= kl[:-1] + 1e-6).all()
    assert float(kl[-1]) == pytest.approx(0.0, abs=1e-6)  # KL -> 0 as alpha -> inf
    # small-alpha asymptote: KL ≈ -0.5 log alpha + const
    assert float(kl[0] - kl[1]) == pytest.approx(0.5 * 0.5, rel=1e-3)


def test_layer_kl_sums_every_factor_entry():
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(3, 2), r=2, scaling=1.0)
    with torch.no_grad():
        layer.rank_log_sigma2.copy_(torch.tensor([-4.0, 1.0]))
    expected = 0.0
    for k in range(2):
        s2 = float(layer.rank_log_sigma2[k].detach())
        for mu in layer.A_mu[k].tolist() + layer.B_mu[:, k].tolist():
            expected += kl_by_hand(s2 - math.log(mu**2 + 1e-8))
    assert float(layer.kl()) == pytest.approx(expected, rel=1e-5)


def test_total_kl_sums_layers():
    model = nn.Sequential(LRVDLinear(nn.Linear(4, 4), 2, 1.0), nn.ReLU(), LRVDLinear(nn.Linear(4, 3), 3, 1.0))
    assert float(total_kl(model)) == pytest.approx(float(model[0].kl() + model[2].kl()))
    assert float(total_kl(nn.Linear(2, 2))) == 0.0


def test_layer_kl_gradient_equals_autograd_through_the_formula():
    """The fused KL (gradient computed in the forward pass) gives the value and the gradients of
    autograd through kl_log_uniform: distinct per-rank variances, one below the clamp (its gradient
    is 0), a mean of exactly 0 and tiny B entries; in float64 so only the formula can differ."""
    torch.manual_seed(0)
    layer = LRVDLinear(nn.Linear(5, 4).double(), r=3, scaling=2.0)
    with torch.no_grad():
        layer.rank_log_sigma2.copy_(torch.tensor([-25.0, -3.0, 1.5]))
        layer.A_mu[1, 2] = 0.0
        layer.B_mu.mul_(torch.tensor([1.0, 1e-3, 10.0], dtype=torch.float64))
    params = [layer.A_mu, layer.B_mu, layer.rank_log_sigma2]
    ref = kl_log_uniform(layer.log_alpha_A()).sum() + kl_log_uniform(layer.log_alpha_B()).sum()
    ref_grads = torch.autograd.grad(ref, params)
    fused = layer.kl()
    grads = torch.autograd.grad(fused * 3.0, params)  # the upstream gradient is applied
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, 3.0 * r, rtol=1e-9, atol=1e-12)
    assert grads[2][0] == 0.0 and grads[2][1] != 0.0
    with torch.no_grad():  # the no-grad path (logging) gives the same number
        torch.testing.assert_close(layer.kl(), ref.detach(), rtol=1e-12, atol=1e-12)
