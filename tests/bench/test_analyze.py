"""``bench analyze`` on small hand-made run directories with known answers (no training, no download)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lrvd_bench.analyze import analyze_run, calibration, gauge, rank_dynamics, snr, tau_sweep
from lrvd_bench.analyze.common import layer_index, load_trials, module_type

Q = "bert.encoder.layer.{}.attention.self.query"
V = "bert.encoder.layer.{}.attention.self.value"
MLP = "bert.encoder.layer.{}.intermediate.dense"


def make_trial(
    run: Path,
    method: str,
    seed: int,
    task: str = "toy",
    *,
    ranks=None,
    preds=None,
    adapter=None,
    extra=None,
    config=None,
) -> Path:
    d = run / "trials" / f"{method}-{task}-s{seed}-0000000{seed}"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"method": method, "task": task, "seed": seed, "status": "ok"}))
    if ranks is not None:
        (d / "ranks.csv").write_text("step,module,rank\n" + "".join(f"{s},{m},{r}\n" for s, m, r in ranks))
    if preds is not None:
        np.savez_compressed(d / "predictions.npz", probs=preds[0], labels=preds[1])
    if adapter is not None:
        from safetensors.torch import save_file

        (d / "adapter").mkdir()
        save_file(
            {k: torch.as_tensor(v).float().contiguous() for k, v in adapter.items()},
            str(d / "adapter" / "adapter.safetensors"),
        )
        (d / "adapter" / "adapter_config.json").write_text(json.dumps(config or {"method": method, "params": {}}))
        if extra is not None:
            save_file(
                {k: torch.as_tensor(v).float().contiguous() for k, v in extra.items()},
                str(d / "adapter" / "method_state.safetensors"),
            )
    return d


# -- common ----------------------------------------------------------------------------------------
def test_module_names_parse():
    assert [module_type(n.format(0)) for n in (Q, V, MLP)] == ["q", "v", "mlp"]
    assert module_type("bert.encoder.layer.0.attention.output.dense") == "o"
    assert module_type("bert.encoder.layer.0.output.dense") == "mlp"
    assert module_type("model.layers.3.self_attn.k_proj") == "k"
    assert module_type("model.layers.3.mlp.down_proj") == "mlp"
    assert module_type("transformer.h.2.attn.c_attn") == "other"
    assert layer_index(Q.format(3)) == 3 and layer_index("transformer.h.11.mlp.c_fc") == 11
    assert layer_index("classifier") == -1


# -- 1. rank dynamics ------------------------------------------------------------------------------
def test_rank_dynamics_sums_and_seed_statistics(tmp_path):
    for seed, late in ((0, 1), (1, 3)):
        rows = [
            (0, Q.format(0), 4),
            (0, V.format(0), 4),
            (0, Q.format(1), 4),
            (0, MLP.format(1), 4),
            (10, Q.format(0), late),
            (10, V.format(0), 2),
            (10, Q.format(1), 0),
            (10, MLP.format(1), 4),
            (10, MLP.format(1), 4),
        ]  # a duplicated final record is counted once
        make_trial(tmp_path, "bayeslora", seed, ranks=rows)
    make_trial(tmp_path, "lora", 0, ranks=[(0, Q.format(0), 4), (10, Q.format(0), 4)])
    make_trial(tmp_path, "adalora", 0, ranks=[(0, Q.format(0), 4), (10, Q.format(0), 4)])
    la = "step,module,rank_index,log_alpha\n" + "".join(
        f"10,{Q.format(0)},{k},{v}\n" for k, v in enumerate([1, 2, 3, 4, 5])
    )
    (tmp_path / "trials" / "bayeslora-toy-s0-00000000" / "log_alpha.csv").write_text(la)
    out = tmp_path / "out"
    files = rank_dynamics.run(load_trials(tmp_path), out)
    names = {f.name for f in files}
    assert {"heatmap_layer_bayeslora_toy.png", "heatmap_type_bayeslora_toy.png", "effective_rank_toy.png"} <= names
    assert "heatmap_layer_lora_toy.png" not in names  # fixed-rank method: curve only
    assert "heatmap_layer_adalora_toy.png" in names  # adaptive_rank capability, even where the rank stayed put
    assert "log_alpha_bayeslora_toy.png" in names
    import pandas as pd

    layer = pd.read_csv(out / "rank_by_layer.csv")
    got = layer[(layer.method == "bayeslora") & (layer.seed == 0) & (layer.step == 10)].set_index("layer")["rank"]
    assert got.to_dict() == {0: 1 + 2, 1: 0 + 4}
    types = pd.read_csv(out / "rank_by_type.csv")
    got = types[(types.method == "bayeslora") & (types.seed == 1) & (types.step == 10)].set_index("type")["rank"]
    assert got.to_dict() == {"q": 3 + 0, "v": 2, "mlp": 4}
    q = pd.read_csv(out / "log_alpha_quantiles.csv")
    assert len(q) == 1 and q.loc[0, "q50"] == 3.0 and q.loc[0, "q10"] == pytest.approx(1.4)
    eff = pd.read_csv(out / "effective_rank.csv").set_index(["method", "step"])
    assert eff.loc[("bayeslora", 0), "mean"] == 16 and eff.loc[("bayeslora", 0), "std"] == 0
    assert eff.loc[("bayeslora", 10), "mean"] == pytest.approx(8.0)  # totals 7 and 9
    assert eff.loc[("bayeslora", 10), "std"] == pytest.approx(math.sqrt(2.0))  # sample std over seeds
    assert eff.loc[("bayeslora", 10), "n_seeds"] == 2


# -- 3. gauge / SVD alignment ----------------------------------------------------------------------
def known_factors(d_in: int = 7, d_out: int = 5, s=(4.0, 2.0, 1.0), seed: int = 0):
    g = np.random.default_rng(seed)
    qa, _ = np.linalg.qr(g.normal(size=(d_in, 3)))
    qb, _ = np.linalg.qr(g.normal(size=(d_out, 3)))
    return qa.T, qb * np.asarray(s)[None, :]  # A [3, d_in] orthonormal rows, B [d_out, 3] orthogonal columns


def test_gauge_curves_on_a_known_spectrum():
    A, B = known_factors()
    np.testing.assert_allclose(gauge.svd_curve(A, B), [16 / 21, 20 / 21, 1.0])
    # ascending log α visits components (σ=1, σ=4, σ=2)
    res = gauge.alignment(A, B, log_alpha=[0.0, 5.0, -3.0], n_perm=300, seed=0)
    np.testing.assert_allclose(res["bayes"], [1 / 21, 17 / 21, 1.0])
    np.testing.assert_allclose(gauge.order_curve(A, B, [0, 1, 2]), res["svd"])  # SVD order: upper bound reached
    np.testing.assert_allclose(res["random_mean"], [7 / 21, 14 / 21, 1.0], atol=0.05)  # E = k/3 of the energy
    assert res["random_std"][-1] == pytest.approx(0.0)
    assert res["auc_svd"] == pytest.approx((16 + 20 + 21) / 63)
    assert res["auc_improvement"] == pytest.approx(res["auc_bayes"] - res["auc_random"])
    assert res["auc_improvement"] < 0  # this order keeps the weakest component first
    good = gauge.alignment(A, B, log_alpha=[-3.0, 0.0, 5.0], n_perm=100)
    assert good["auc_bayes"] == pytest.approx(good["auc_svd"]) and good["auc_improvement"] > 0.1
    # a batch of orders gives one curve per order; non-orthogonal factors: energy of the full set is 1
    A2, B2 = np.random.default_rng(1).normal(size=(4, 6)), np.random.default_rng(2).normal(size=(5, 4))
    curves = gauge.order_curve(A2, B2, np.stack([np.arange(4), np.arange(4)[::-1]]))
    assert curves.shape == (2, 4) and np.allclose(curves[:, -1], 1.0)
    sub = B2[:, [3, 2]] @ A2[[3, 2]]
    assert curves[1, 1] == pytest.approx((sub**2).sum() / ((B2 @ A2) ** 2).sum())


def test_gauge_run_reads_a_bayeslora_adapter(tmp_path):
    A, B = known_factors()
    # log σ² 8+ nats apart dominates the μ² terms of log α: ascending order is components 2, 0, 1
    ls2 = np.array([-8.0, 2.0, -18.0])
    prefix = "backbone." + Q.format(0)
    make_trial(
        tmp_path, "bayeslora", 0, adapter={f"{prefix}.A_mu": A, f"{prefix}.B_mu": B, f"{prefix}.rank_log_sigma2": ls2}
    )
    files = gauge.run(load_trials(tmp_path), tmp_path / "g", n_perm=50)
    assert {f.name for f in files} == {
        "gauge_curves.csv",
        "gauge_auc.csv",
        "gauge_curves_toy.png",
        "gauge_auc_hist.png",
    }
    import pandas as pd

    curves = pd.read_csv(tmp_path / "g" / "gauge_curves.csv")
    assert list(curves["module"].unique()) == [Q.format(0)]
    np.testing.assert_allclose(curves["svd"], [16 / 21, 20 / 21, 1.0], rtol=1e-5)
    np.testing.assert_allclose(curves["bayes"], [1 / 21, 17 / 21, 1.0], rtol=1e-5)  # σ = 1, 4, 2


# -- 4. calibration --------------------------------------------------------------------------------
def binary_probs(conf: np.ndarray) -> np.ndarray:
    return np.stack([conf, 1 - conf], 1)


def test_ece_bootstrap_is_zero_when_calibrated_with_an_upward_biased_mean():
    # 100 examples at each of confidences 0.6, 0.8, 1.0 with exactly 60, 80, 100 correct (class 0 predicted)
    conf = np.repeat([0.6, 0.8, 1.0], 100)
    labels = np.concatenate([np.r_[np.zeros(c, int), np.ones(100 - c, int)] for c in (60, 80, 100)])
    bins = calibration.reliability_bins(binary_probs(conf), labels)
    assert {i: c for i, c in enumerate(bins["count"]) if c} == {9: 100, 12: 100, 14: 100}  # ⌊15·conf⌋, 1.0 → last
    np.testing.assert_allclose(bins["accuracy"][[9, 12, 14]], [0.6, 0.8, 1.0])
    point, lo, hi, mean = calibration.ece_bootstrap(binary_probs(conf), labels, n_boot=200, return_mean=True)
    assert point == pytest.approx(0.0, abs=1e-12) and 0 <= lo <= hi and mean > point  # binned ECE's upward bias


def test_ece_bootstrap_is_the_percentile_interval_of_resampled_lrvd_ece():
    """Independent reference: the same resampling by hand with lrvd.metrics' ECE (scipy draws the
    indices in one ``rng.integers(0, n, (B, n))`` call, so the same seed gives the same resamples)."""
    from lrvd.metrics import expected_calibration_error

    g = np.random.default_rng(2)
    probs, labels = g.dirichlet(np.ones(3), size=60), g.integers(0, 3, 60)
    point, lo, hi, mean = calibration.ece_bootstrap(probs, labels, n_boot=200, seed=5, return_mean=True)
    assert point == pytest.approx(expected_calibration_error(torch.tensor(probs), torch.tensor(labels)))
    idx = np.random.default_rng(5).integers(0, 60, (200, 60))
    values = [expected_calibration_error(torch.tensor(probs[i]), torch.tensor(labels[i])) for i in idx]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert mean == pytest.approx(np.mean(values))


def test_ece_bootstrap_ci_contains_point_shrinks_and_is_seeded():
    g = np.random.default_rng(1)

    def sample(n):
        conf = g.uniform(0.5, 1.0, n)
        labels = (g.uniform(size=n) > conf * 0.8).astype(int)  # overconfident: true acc 0.8·conf
        return binary_probs(conf), labels

    small, large = sample(100), sample(3000)
    p1, lo1, hi1 = calibration.ece_bootstrap(*small, n_boot=300, seed=0)
    p2, lo2, hi2 = calibration.ece_bootstrap(*large, n_boot=300, seed=0)
    assert lo1 <= p1 <= hi1 and lo2 <= p2 <= hi2
    assert hi2 - lo2 < 0.6 * (hi1 - lo1)
    assert calibration.ece_bootstrap(*small, n_boot=300, seed=0) == (p1, lo1, hi1)


def test_calibration_run_writes_tables_and_figures(tmp_path):
    g = np.random.default_rng(0)
    for method in ("lora", "bayeslora"):
        for seed in (0, 1):
            make_trial(tmp_path, method, seed, preds=(g.dirichlet(np.ones(3), size=40), g.integers(0, 3, 40)))
    files = calibration.run(load_trials(tmp_path), tmp_path / "c", n_boot=50)
    assert {f.name for f in files} == {"ece_bootstrap.csv", "reliability_bins.csv", "reliability_toy.png"}
    import pandas as pd

    table = pd.read_csv(tmp_path / "c" / "ece_bootstrap.csv")
    assert len(table) == 2 * 3 and set(table[table.seed == "pooled"]["n"]) == {80}
    assert (table.ci_low <= table.ci_high).all() and {"boot_mean"} <= set(table.columns)


# -- 5. SNR vs magnitude / sensitivity -------------------------------------------------------------
def test_spearman_by_hand():
    assert snr.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 − 6·2 / (4·15)
    assert snr.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))  # ties averaged
    assert snr.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert snr.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)  # ranks, not values
    assert math.isnan(snr.spearman([1, 1, 1], [1, 2, 3])) and math.isnan(snr.spearman([1], [2]))


def test_ema_sensitivity_by_hand():
    # β = 0.5: Ī = 0.5, Ū = 0.25 after |wg| = 1; then Ī = 1.75, Ū = 0.125 + 0.5·|3 − 1.75| = 0.75
    assert snr.ema_sensitivity([np.array(1.0), np.array(3.0)], 0.5, 0.5) == pytest.approx(1.75 * 0.75)


def test_triplet_scores_follow_peft():
    E = np.array([[1.0], [2.0]])
    A = np.array([[1.0, 3.0], [0.0, 0.0]])  # [r=2, d_in=2]
    B = np.array([[2.0, 0.0], [4.0, 2.0], [0.0, 1.0]])  # [d_out=3, r=2]
    np.testing.assert_allclose(snr.triplet_scores(E, A, B), [1 + 2 + 2, 2 + 0 + 1])


def test_snr_run_on_an_adalora_ivon_adapter(tmp_path):
    g = np.random.default_rng(0)
    r, d_in, d_out = 6, 5, 4
    mu, std = {}, {}
    for layer in (0, 1):
        p = f"backbone.base_model.model.{Q.format(layer)}"
        for f, shape in (("E", (r, 1)), ("A", (r, d_in)), ("B", (d_out, r))):
            mu[f"{p}.lora_{f}.default"] = g.normal(size=shape)
            std[f"ivon_std.{p}.lora_{f}.default"] = np.full(shape, 0.5)  # constant σ: SNR ∝ |μ|
    config = {"method": "adalora-ivon", "params": {"criterion": "snr"}}
    make_trial(tmp_path, "adalora-ivon", 0, adapter=mu, extra=std, config=config)
    make_trial(tmp_path, "adalora", 0, adapter=mu, config={"method": "adalora", "params": {}})
    files, notes = snr.run(load_trials(tmp_path), tmp_path / "s")
    assert {f.name for f in files} == {"snr_scores.csv", "snr_spearman.csv", "snr_spearman.png"}
    import pandas as pd

    rho = pd.read_csv(tmp_path / "s" / "snr_spearman.csv")
    ivon = rho[rho.method == "adalora-ivon"]
    assert list(ivon["module"]) == [Q.format(0), Q.format(1)]
    np.testing.assert_allclose(ivon["rho_snr_magnitude"], 1.0)
    assert rho[rho.method == "adalora"]["rho_snr_magnitude"].isna().all()
    assert any("posterior std" in n for n in notes) and any("sensitivity" in n for n in notes)


# -- 2. τ sweep ------------------------------------------------------------------------------------
def test_tau_sweep_known_effective_rank_and_unpruned_outputs():
    from conftest import TinyBertClassifier, make_toy_loader
    from lrvd import AdapterConfig, TrainConfig, TrainPlan
    from lrvd.inject import lrvd_modules
    from lrvd.methods.bayeslora import BayesLoRA
    from lrvd.pruning import prune_ranks
    from lrvd.training import predict

    method = BayesLoRA(n_samples=3)
    model = method.attach(
        TinyBertClassifier(),
        AdapterConfig(target_modules=["query", "value"], r=4, alpha=8.0),
        TrainPlan(10, 16, TrainConfig()),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lrvd_modules(model).values():
            # |A| = |B| = 0.1 entrywise, so log α_k = log σ²_k − log(0.01): targets −5, −1, 1, 4
            layer.A_mu.copy_(0.1 * torch.sign(torch.randn(layer.A_mu.shape, generator=g)))
            layer.B_mu.copy_(0.1 * torch.sign(torch.randn(layer.B_mu.shape, generator=g)))
            layer.rank_log_sigma2.copy_(torch.tensor([-5.0, -1.0, 1.0, 4.0]) + math.log(0.01))
    loader = make_toy_loader(n=16, batch_size=8, shuffle=False)
    rows = tau_sweep.sweep_model(method, model, loader, taus=(-10.0, 0.0, 2.0, 4.5, math.inf))
    assert [r["effective_rank"] for r in rows] == [0, 8, 12, 16, 16]  # 4 modules × #{log α < τ}
    assert all(r["full_rank"] == 16 for r in rows)
    unpruned, labels = predict(method, model, loader, n_samples=0, progress=False)
    full = rows[-1]
    from lrvd.metrics import classification_metrics

    assert full["accuracy"] == classification_metrics(unpruned, labels)["accuracy"]
    assert full["nll"] == pytest.approx(classification_metrics(unpruned, labels)["nll"], abs=0)
    # the model is restored after the sweep, and zeroing equals physical pruning at τ = 0
    after, _ = predict(method, model, loader, n_samples=0, progress=False)
    assert torch.equal(after, unpruned)
    prune_ranks(model, tau=0.0)
    pruned, _ = predict(method, model, loader, n_samples=0, progress=False)
    assert classification_metrics(pruned, labels)["nll"] == pytest.approx(rows[1]["nll"], rel=1e-5)


# -- the whole command -----------------------------------------------------------------------------
def test_analyze_run_skips_missing_inputs_and_never_crashes(tmp_path, capsys):
    notes = analyze_run(tmp_path / "empty", tmp_path / "o1", log=print)
    assert all(isinstance(v, str) for v in notes.values())
    g = np.random.default_rng(0)
    make_trial(
        tmp_path / "run",
        "bayeslora",
        0,
        ranks=[(0, Q.format(0), 4), (5, Q.format(0), 2)],
        preds=(g.dirichlet(np.ones(2), size=20), g.integers(0, 2, 20)),
    )
    (tmp_path / "run" / "trials" / "broken").mkdir()  # no result.json / spec.json: ignored
    results = analyze_run(tmp_path / "run", tmp_path / "o2", n_boot=20)
    assert isinstance(results["rank_dynamics"], list) and isinstance(results["calibration"], list)
    for name in ("tau_sweep", "gauge", "snr"):
        assert isinstance(results[name], str)  # skipped: no adapter
    out = capsys.readouterr().out
    assert "gauge: skipped:" in out and "snr: skipped:" in out and "tau_sweep: skipped:" in out
    assert all(Path(f).exists() for files in results.values() if isinstance(files, list) for f in files)


def test_cli_analyze(tmp_path, capsys):
    from lrvd_bench.cli import main

    g = np.random.default_rng(0)
    make_trial(tmp_path, "lora", 0, preds=(g.dirichlet(np.ones(2), size=20), g.integers(0, 2, 20)))
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "a"), "--only", "calibration,gauge"]) == 0
    assert (tmp_path / "a" / "calibration" / "reliability_toy.png").exists()
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert main(["analyze", str(tmp_path), "--taus", "x"]) == 2
    capsys.readouterr()
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "b"), "--only", "calibration,gauges"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "bench: error: unknown analysis 'gauges'; valid choices: calibration, gauge, rank_dynamics, snr, tau_sweep\n"
    )
    assert not (tmp_path / "b").exists()  # refused before any analysis ran
