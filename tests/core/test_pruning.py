"""Rank log α, effective rank, gauge fixing and physical pruning (with a live optimizer)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn

import lrvd
from lrvd.pruning import fix_gauge, prune_layer, prune_ranks, rank_log_alphas, rank_report


def small_layer() -> lrvd.LRVDLinear:
    """d_in = 3, d_out = 5, r = 2 with hand-set values (odd sizes: the median is unambiguous)."""
    layer = lrvd.LRVDLinear(nn.Linear(3, 5), r=2, scaling=1.0)
    with torch.no_grad():
        layer.A_mu.copy_(torch.tensor([[0.5, -1.0, 2.0], [0.01, 0.02, -0.03]]))
        layer.B_mu.copy_(torch.tensor([[0.1, 1e-3], [-0.2, 2e-3], [0.3, -1e-3], [0.4, 5e-4], [-0.5, 3e-3]]))
        layer.rank_log_sigma2.copy_(torch.tensor([-6.0, -1.0]))
    return layer


def test_rank_log_alpha_matches_hand_computation():
    layer = small_layer()
    A, B = layer.A_mu.detach().tolist(), layer.B_mu.detach().tolist()
    s2 = [-6.0, -1.0]
    expected = []
    for k in range(2):
        med_a = statistics.median([s2[k] - math.log(a**2 + 1e-8) for a in A[k]])
        med_b = statistics.median([s2[k] - math.log(row[k] ** 2 + 1e-8) for row in B])
        expected.append(0.5 * (med_a + med_b))
    assert layer.rank_log_alpha().tolist() == pytest.approx(expected, rel=1e-5)
    # rank 0: strong signal; rank 1: noise dominates (log α ≈ 9)
    assert expected[0] < 3.0 < expected[1]
    assert lrvd.effective_rank(layer) == 1
    assert lrvd.effective_rank(layer, tau=20.0) == 2


def test_effective_rank_sums_over_modules():
    model = nn.Sequential(small_layer(), nn.ReLU(), nn.Linear(5, 5))
    model[2] = small_layer().base_layer.__class__(5, 5)
    model.append(small_layer())
    report = rank_report(model)
    assert report == {"0": 1, "3": 1}
    assert lrvd.effective_rank(model) == 2
    stats = lrvd.rank_statistics(model)
    assert set(stats) == {"0", "3"} and len(stats["0"]) == 2


def test_fix_gauge_keeps_outputs_and_log_alpha():
    layer = small_layer().eval()
    with torch.no_grad():
        layer.A_mu.mul_(torch.tensor([[7.0], [0.2]]))
    x = torch.randn(4, 3)
    before, log_alpha = layer(x), layer.rank_log_alpha()
    fix_gauge(layer)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.A_mu.norm(dim=1), layer.B_mu.norm(dim=0))
    # exact up to the log(μ² + 1e-8) floor, which matters only for rank 1's μ ≈ 1e-3 entries
    torch.testing.assert_close(layer.rank_log_alpha(), log_alpha, rtol=0, atol=1e-2)


def test_pruned_model_equals_unpruned_with_ranks_zeroed():
    torch.manual_seed(0)
    layer = lrvd.LRVDLinear(nn.Linear(6, 4), r=4, scaling=2.0)
    with torch.no_grad():
        layer.B_mu.normal_()
        layer.A_mu[[1, 3]] *= 1e-2
        layer.B_mu[:, [1, 3]] *= 1e-2
        layer.rank_log_sigma2.copy_(torch.tensor([-8.0, 30.0, -8.0, 30.0]))  # clamped to 2
    assert (rank_log_alphas(layer)[""] > 3).tolist() == [False, True, False, True]
    x = torch.randn(5, 6)
    zeroed = lrvd.LRVDLinear(nn.Linear(6, 4), r=4, scaling=2.0)
    zeroed.load_state_dict(layer.state_dict())
    with torch.no_grad():
        zeroed.B_mu[:, [1, 3]] = 0.0
    removed = prune_ranks(layer)
    assert removed == {"": 2} and layer.r == 2
    assert layer.A_mu.shape == (2, 6) and layer.B_mu.shape == (4, 2) and layer.rank_log_sigma2.shape == (2,)
    torch.testing.assert_close(layer.eval()(x), zeroed.eval()(x))


def test_min_ranks_keeps_the_lowest_log_alpha():
    layer = small_layer()
    with torch.no_grad():
        layer.rank_log_sigma2.fill_(2.0)  # rank 0 log α ≈ 3.3, rank 1 ≈ 12 -> both above τ
    assert lrvd.effective_rank(layer) == 0
    prune_ranks(layer, min_ranks=1)
    assert layer.r == 1
    torch.testing.assert_close(layer.A_mu[0], torch.tensor([0.5, -1.0, 2.0]))


def test_prune_to_zero_rank_is_a_no_op_adapter():
    layer = small_layer().eval()
    prune_ranks(layer, tau=-100.0)
    assert layer.r == 0 and float(layer.kl().detach()) == 0.0 and lrvd.effective_rank(layer) == 0
    x = torch.randn(2, 3)
    torch.testing.assert_close(layer(x), layer.base_layer(x))


def test_optimizer_keeps_stepping_after_pruning():
    torch.manual_seed(0)
    layer = lrvd.LRVDLinear(nn.Linear(6, 4), r=4, scaling=1.0, init_log_sigma2=-4.0).train()
    head = nn.Linear(4, 2)
    opt = torch.optim.AdamW(
        [
            {"params": [layer.A_mu, layer.B_mu] + list(head.parameters()), "lr": 1e-2},
            {"params": [layer.rank_log_sigma2], "lr": 1e-3, "weight_decay": 0.0},
        ]
    )
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(layer(x)), y) + 1e-3 * layer.kl()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    old_avg = opt.state[layer.A_mu]["exp_avg"].clone()
    old_step = opt.state[layer.A_mu]["step"].clone()
    n_before = sum(p.numel() for g in opt.param_groups for p in g["params"])
    prune_layer(layer, torch.tensor([True, False, True, False]), opt)
    n_after = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_before - n_after == 2 * (6 + 4 + 1)
    state = opt.state[layer.A_mu]
    torch.testing.assert_close(state["exp_avg"], old_avg[[0, 2]])
    assert float(state["step"]) == float(old_step)
    assert opt.state[layer.B_mu]["exp_avg_sq"].shape == (4, 2)
    assert opt.state[layer.rank_log_sigma2]["exp_avg"].shape == (2,)
    assert len(opt.state) == 5  # A, B, log σ², head weight, head bias: no stale entries
    before = layer.A_mu.detach().clone()
    for _ in range(2):
        step()
    assert not torch.equal(before, layer.A_mu)
    assert float(opt.state[layer.A_mu]["step"]) == float(old_step) + 2


# -- written against surviving mutants (docs/testing.md) -------------------------------------------
def test_a_rank_exactly_at_tau_is_off_and_tau_defaults_to_3():
    layer = small_layer()
    log_alpha = layer.rank_log_alpha().detach()
    at = float(log_alpha[0])  # rank 0 sits exactly at τ: log α_k ≥ τ is "off"
    assert lrvd.effective_rank(layer, tau=at) == 0 and rank_report(layer, tau=at) == {"": 0}
    assert lrvd.effective_rank(layer, tau=at + 1e-4) == 1
    assert prune_ranks(small_layer(), tau=at) == {"": 2}
    with torch.no_grad():  # rank 0 at log α ≈ 3.5: above the default τ = 3, below 4
        layer.rank_log_sigma2[0] += 3.5 - at
    assert 3.0 < float(layer.rank_log_alpha()[0]) < 4.0
    assert rank_report(layer) == {"": 0} and lrvd.effective_rank(layer) == 0
    assert prune_ranks(layer) == {"": 2} and layer.r == 0


def test_prune_ranks_passes_the_optimizer_on_even_before_its_first_step():
    layer = small_layer()
    opt = torch.optim.AdamW([layer.A_mu, layer.B_mu, layer.rank_log_sigma2], lr=1e-2)
    assert prune_ranks(layer, optimizer=opt) == {"": 1}  # no optimizer state yet: nothing to slice
    assert [p.shape for p in opt.param_groups[0]["params"]] == [(1, 3), (5, 1), (1,)]
    assert all(any(p is q for q in opt.param_groups[0]["params"]) for p in (layer.A_mu, layer.B_mu))
