"""``bench cost``: the arithmetic against hand-computed numbers, and that every registered method
(including one registered in-process) gets a row on a tiny config-built model."""

from __future__ import annotations

import math

import pytest

from conftest import TinyBertClassifier, assert_same_gradients, make_toy_loader
from lrvd_bench import cost
from lrvd_bench.cli import main


# -- pure arithmetic -------------------------------------------------------------------------------
def test_median_iqr_hand_computed():
    # sorted 1 2 3 4 5 6 7 8: median 4.5; Q1 at pos 1.75 -> 2.75, Q3 at pos 5.25 -> 6.25; IQR 3.5
    assert cost.median_iqr([8, 1, 7, 2, 6, 3, 5, 4]) == (4.5, 3.5)
    # odd count 10 20 30 40 50: median 30, Q1 20, Q3 40
    assert cost.median_iqr([50, 10, 40, 20, 30]) == (30.0, 20.0)
    assert cost.median_iqr([7.0]) == (7.0, 0.0)
    assert all(math.isnan(v) for v in cost.median_iqr([]))


def test_ratios_to_the_lora_row():
    rows = [
        {"method": "lora", "step_ms": 40.0, "peak_mib": 100.0},
        {"method": "bayeslora", "step_ms": 42.0, "peak_mib": 101.0},
        {"method": "broken"},
    ]
    cost.add_ratios(rows, ["step_ms", "peak_mib"])
    assert rows[0]["step_ms_ratio"] == 1.0
    assert rows[1]["step_ms_ratio"] == pytest.approx(1.05)
    assert rows[1]["peak_mib_ratio"] == pytest.approx(1.01)
    assert math.isnan(rows[2]["step_ms_ratio"])
    no_ref = cost.add_ratios([{"method": "x", "step_ms": 1.0}], ["step_ms"])
    assert math.isnan(no_ref[0]["step_ms_ratio"])
    assert math.isnan(cost.ratio(1.0, 0.0))


def test_epoch_units():
    # 2 251 examples at batch 16 -> 141 steps; 0.2 s/step -> 28.2 s/epoch; 56.4 s = 2 epochs
    assert cost.steps_per_epoch(2251, 16) == 141
    assert cost.steps_per_epoch(64, 8) == 8
    assert cost.steps_per_epoch(64, 8, grad_accum=2) == 4
    assert cost.epoch_units(56.4, 0.2, 141) == pytest.approx(2.0)


def test_ray_overhead_hand_computed():
    rows = [
        {"train_time_s": "10", "posthoc_time_s": "0", "eval_time_s": "2", "wall_time_s": "15"},
        {"train_time_s": "20", "posthoc_time_s": "", "eval_time_s": "3"},  # no wall: 23 counts
    ]
    out = cost.ray_overhead(rows, sweep_wall_s=50.0)
    assert out["trial_s"] == 38.0 and out["compute_s"] == 35.0
    assert out["overhead_s"] == 12.0 and out["overhead_fraction"] == pytest.approx(0.24)
    assert cost.ray_overhead(rows, 50.0, concurrency=2)["overhead_s"] == 31.0
    # An ensemble assembled from those trials after the sweep did not run under Ray: left out.
    ensemble = {"train_time_s": "30", "eval_time_s": "5", "wall_time_s": "40", "reused_members": "a;b"}
    with_ensemble = cost.ray_overhead([*rows, ensemble], sweep_wall_s=50.0)
    assert with_ensemble["trial_s"] == 38.0 and with_ensemble["n_trials"] == 2.0
    # A post-hoc trial on a LoRA trial's adapter ran under Ray, but its train_time_s is LoRA's.
    posthoc = {"train_time_s": "20", "posthoc_time_s": "4", "eval_time_s": "1", "reused_from": "lora-x"}
    with_posthoc = cost.ray_overhead([*rows, posthoc], sweep_wall_s=50.0)
    assert with_posthoc["compute_s"] == 40.0 and with_posthoc["n_trials"] == 3.0


def test_ray_overhead_cli(tmp_path, capsys):
    (tmp_path / "trials.csv").write_text("method,train_time_s,posthoc_time_s,eval_time_s\nlora,10,0,2\n")
    assert (
        main(["cost", "--ray-overhead", str(tmp_path), "--sweep-seconds", "20", "--out", str(tmp_path / "ray.csv")])
        == 0
    )
    out = capsys.readouterr().out
    assert "overhead_s" in out and "| 8 |" in out.replace("8.0", "8")
    assert (tmp_path / "ray.csv").exists() and (tmp_path / "ray.md").exists()
    assert main(["cost", "--ray-overhead", str(tmp_path / "nope")]) == 2


def test_targets_and_markdown():
    rows = [
        {"method": "lora", "step_ms": 10.0, "peak_mib": 100.0},
        {
            "method": "bayeslora",
            "step_ms": 10.4,
            "peak_mib": 103.0,
            "pred_batched_ratio": 3.0,
            "pred_s_peak_ratio": 1.12,
        },
        {"method": "adalora", "step_ms": 20.0},
        {"method": "adalora-ivon", "step_ms": 17.0},
    ]
    cost.add_ratios(rows, ["step_ms", "peak_mib"])
    # 1.04 > 1.03 (step), 1.03 > 1.02 (memory), 0.85 <= 0.9 (IVON), 1.12 > 1.1 (predictive peak), 3 <= 4
    met = [c["met"] for c in cost.targets(rows)]
    assert met == [False, False, True, False, True]
    rows[1]["step_ms_ratio"], rows[1]["pred_s_peak_ratio"] = 1.03, 1.1
    assert [c["met"] for c in cost.targets(rows)] == [True, False, True, True, True]
    del rows[1]["pred_batched_ratio"]
    assert cost.targets(rows)[-1]["met"] is None  # not measured (e.g. no GPU run): neither met nor missed
    md = cost.to_markdown(rows)
    assert md.splitlines()[0].startswith("| method | step ms")
    assert "| bayeslora | 10.4 |" in md


# -- the measurement on a tiny model ---------------------------------------------------------------
def _tiny_rows(methods=None):
    cfg = cost.CostConfig(
        steps=2,
        warmup=1,
        pred_repeats=1,
        n_samples=2,
        r=4,
        alpha=8.0,
        lr=1e-2,
        batch_size=8,
        device="cpu",
        methods=methods,
    )
    loader = make_toy_loader(16, batch_size=8)
    return cost.measure(cfg, backbone=TinyBertClassifier(), train_loader=loader, n_train=16, log=lambda m: None)


def test_every_registered_method_and_a_fake_one_get_a_row(monkeypatch, tmp_path):
    from lrvd.registry import METHODS, list_methods
    from lrvd_baselines.lora import LoRA

    class FakeCostMethod(LoRA):
        name = "fake-cost-method"
        description = "LoRA under another name (test only)"

    monkeypatch.setitem(METHODS._local, "fake-cost-method", FakeCostMethod)
    rows, info = _tiny_rows()
    names = [r["method"] for r in rows]
    assert names == list_methods() and "fake-cost-method" in names
    for row in rows:
        assert "error" not in row, row
        assert row["n_steps"] == 2 and row["step_ms"] > 0 and row["trainable"] > 0
        assert row["pred_det_ms"] > 0
        assert row["peak_mib"] > 0  # resident tensors (IVON keeps its state in param groups) + step peak
    by = {r["method"]: r for r in rows}
    assert by["lora"]["step_ms_ratio"] == 1.0 and by["lora"]["step_ratio_iqr"] == 0.0
    assert by["lora"]["step_cpu_ratio"] == 1.0 and by["bayeslora"]["step_cpu_ms"] > 0
    assert by["bayeslora"]["variational"] > 0
    # default, batched and sequential MC, each timed and with its peak memory beside the deterministic pass
    assert {
        "pred_s_ms",
        "pred_batched_ms",
        "pred_seq_ms",
        "pred_seq_ratio",
        "pred_s_peak_ratio",
        "pred_batched_peak_mib",
        "pred_det_peak_mib",
    } <= set(by["bayeslora"])
    assert "pred_s_ms" in by["mc-dropout-lora"] and "pred_s_ms" not in by["lora"]
    assert by["laplace-lora"]["after_training_epochs"] > 0
    laplace = by["laplace-lora"]  # the fit in epochs of CPU time: fit CPU s / (step CPU s x 2 steps per epoch)
    assert laplace["after_training_cpu_epochs"] == pytest.approx(
        laplace["after_training_cpu_s"] / (laplace["step_cpu_ms"] / 1e3 * info["steps_per_epoch"]), rel=1e-9
    )
    assert "after_training_s" not in by["lora"]
    assert info["steps_per_epoch"] == 2
    paths = cost.write_rows(rows, tmp_path / "cost.csv")
    assert [p.name for p in paths] == ["cost.csv", "cost.md"]
    assert "fake-cost-method" in (tmp_path / "cost.md").read_text()


# -- whole runs (--whole-run) ----------------------------------------------------------------------
def test_whole_run_summary_hand_computed():
    from lrvd_bench.cost.stats import paired_ratio_iqr, quarter_medians
    from lrvd_bench.cost.whole_run import summarize

    # 8 steps: first quarter (2 steps) 0.10, 0.12 -> median 0.11; last quarter 0.06, 0.08 -> 0.07
    steps = [0.10, 0.12, 0.1, 0.1, 0.09, 0.09, 0.06, 0.08]
    assert quarter_medians(steps) == pytest.approx((0.11, 0.07))
    row = summarize("bayeslora", [steps, [s * 2 for s in steps]], params_start=16, params_end=9)
    # run totals 0.74 and 1.48 -> median 1.11; early medians 0.11, 0.22 -> 0.165 s; late 0.07, 0.14 -> 0.105
    assert row["run_s"] == pytest.approx(1.11)
    assert row["early_step_ms"] == pytest.approx(165.0) and row["late_step_ms"] == pytest.approx(105.0)
    assert row["late_over_early"] == pytest.approx(105 / 165)
    assert (row["params_start"], row["params_end"], row["repeats"]) == (16, 9, 2)
    # per-round ratios 2, 4, 3 (1 s vs 0.5, 2 vs 0.5, 3 vs 1): Q1 2.5, Q3 3.5 -> IQR 1
    assert paired_ratio_iqr([1.0, 2.0, 3.0], [0.5, 0.5, 1.0]) == pytest.approx(1.0)


def test_whole_run_prunes_bayeslora_and_reports_ratios_to_lora():
    from lrvd_bench.cost.whole_run import measure_whole_run

    # tau = -100: every rank's log α is above it, so the prune at step 4 removes all but min_ranks.
    cfg = cost.CostConfig(
        batch_size=4,
        r=4,
        alpha=8,
        device="cpu",
        methods=["lora", "bayeslora"],
        method_params={"bayeslora": {"tau": -100.0, "prune_every": 4, "prune_start": 0.5, "min_ranks": 1}},
    )
    rows = measure_whole_run(
        cfg,
        steps=8,
        repeats=1,
        backbone=TinyBertClassifier(),
        train_loader=make_toy_loader(16, batch_size=4),
        eval_loader=make_toy_loader(12, batch_size=4, shuffle=False),
        log=lambda m: None,
    )
    by = {r["method"]: r for r in rows}
    for row in rows:  # accuracy on 12 examples: a multiple of 1/12
        assert row["accuracy"] * 12 == pytest.approx(round(row["accuracy"] * 12))
    assert by["lora"]["params_start"] == by["lora"]["params_end"]
    # LoRA's adapter is r (d_in + d_out) per module; BayesLoRA adds one log σ² per rank: (d_in + d_out + 1) r.
    n_modules = (by["bayeslora"]["params_start"] - by["lora"]["params_start"]) // 4
    assert n_modules >= 2
    # Pruning to one rank per module quarters every module's (d_in + d_out + 1) r; the head H stays:
    # end = H + (start - H) / 4. H = LoRA's trainable count minus its lora_ factor entries.
    from lrvd import AdapterConfig, TrainConfig, TrainPlan, get_method

    lora_model = get_method("lora")().attach(
        TinyBertClassifier(),
        AdapterConfig(r=4, alpha=8),
        TrainPlan(total_steps=8, n_train=16, train=TrainConfig(max_steps=8)),
    )
    head = by["lora"]["params_start"] - sum(p.numel() for n, p in lora_model.named_parameters() if "lora_" in n)
    start, end = by["bayeslora"]["params_start"], by["bayeslora"]["params_end"]
    assert 4 * (end - head) == start - head
    # rank_report at the end: LoRA keeps r = 4 per module; every BayesLoRA rank has log α >= τ = -100
    # (one kept physically by min_ranks, but not effective)
    assert by["lora"]["ranks_end"] == 4 * n_modules and by["bayeslora"]["ranks_end"] == 0
    assert by["lora"]["run_s_ratio"] == 1.0
    assert by["bayeslora"]["run_s_ratio"] == pytest.approx(by["bayeslora"]["run_s"] / by["lora"]["run_s"])


def test_whole_run_methods_of_a_repeat_see_the_same_batches_and_head(monkeypatch):
    """A paired comparison: within a repeat both methods train on the same batch order, and the head
    (initialised when the backbone loads) is the same whatever the process's RNG state was."""
    from types import SimpleNamespace

    import torch

    from lrvd_bench.cost import whole_run

    runs: list[tuple[str, list[tuple[int, ...]]]] = []  # (method, batch fingerprints), in run order
    heads: list[torch.Tensor] = []
    loader = make_toy_loader(16, batch_size=4)

    def fake_load_backbone(model, task):
        heads.append(torch.randn(8))  # a hub backbone's task head is drawn at random when it loads
        return TinyBertClassifier()

    def fake_make_loaders(task, backbone, **kwargs):
        return SimpleNamespace(train_loader=loader, n_train=16, eval_loader=None)

    def fake_run_step(entry, batch, step, device, plan):
        if step == 0:
            runs.append((entry.name, []))
        runs[-1][1].append(tuple(batch["labels"].tolist()) + tuple(batch["input_ids"][:, 1].tolist()))
        return 0.0

    monkeypatch.setattr("lrvd_bench.backbones.load_backbone", fake_load_backbone)
    monkeypatch.setattr("lrvd_bench.loaders.make_loaders", fake_make_loaders)
    monkeypatch.setattr(whole_run, "run_step", fake_run_step)
    cfg = cost.CostConfig(batch_size=4, r=2, alpha=4, device="cpu", methods=["lora", "bayeslora"])
    for rng in (1, 2):  # two processes in different RNG states
        torch.manual_seed(rng)
        runs.clear()
        whole_run.measure_whole_run(cfg, steps=6, repeats=2, log=lambda m: None, progress=False)
        assert [name for name, _ in runs] == ["lora", "bayeslora", "lora", "bayeslora"]
        assert runs[0][1] == runs[1][1] and runs[2][1] == runs[3][1]  # same batches within a repeat
        assert runs[0][1] != runs[2][1]  # each repeat its own order
    assert torch.equal(heads[0], heads[1])


def test_cost_flags_share_bench_runs_names():
    """--rank (old --r), --lr, --batch-size, --target-modules, repeatable --param reach the CostConfig."""
    from lrvd_bench.cli import build_parser
    from lrvd_bench.cost.cli import config_from_args

    args = build_parser().parse_args(
        [
            "cost",
            "--rank",
            "64",
            "--lr",
            "2e-3",
            "--batch-size",
            "4",
            "--target-modules",
            "query,key",
            "--param",
            "bayeslora.tau=2",
            "--param",
            "bayeslora.prune_every=10",
            "lora.x=1",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.r, cfg.lr, cfg.batch_size, cfg.target_modules) == (64, 2e-3, 4, ["query", "key"])
    assert cfg.method_params == {"bayeslora": {"tau": 2, "prune_every": 10}, "lora": {"x": 1}}
    assert config_from_args(build_parser().parse_args(["cost", "--r", "16"])).r == 16


def test_cost_package_has_no_import_cycle_and_no_private_imports():
    """Modules of lrvd_bench.cost import each other one way only, and never a private (_name) name."""
    import ast
    from pathlib import Path

    pkg = Path(cost.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in pkg.glob("*.py"):
        deps = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lrvd_bench.cost."):
                assert not any(a.name.startswith("_") for a in node.names), (path.name, node.module)
                deps.add(node.module.rsplit(".", 1)[1])
    assert {"measure", "whole_run", "report", "cli"} <= set(graph)

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(d == target or (d not in seen and reaches(d, target, seen | {d})) for d in graph.get(start, ()))

    assert not [m for m in graph if m != "__init__" and reaches(m, m, set())]


# -- bench cost --layers: the authors' formulations equal the suite's layers -------------------------
def test_layer_rows_reference_equals_the_lrvd_layer_draw_for_draw():
    """lrvd_bench.cost's re-derivation of the authors' local reparameterisation (variance matrices,
    a matmul through B_mu², sqrt under autograd) gives the LRVD layer's sample and gradients under the
    same seed, in float64 with distinct per-rank variances."""
    import torch

    from lrvd_bench.cost import layer_ops

    layer = layer_ops.make_lrvd(6, 3, "cpu", seed=0, dtype=torch.float64)
    assert len(set(layer.rank_log_sigma2.tolist())) == 3 and layer.scaling == 2.0
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    got = layer(x)
    torch.manual_seed(1)
    expected = layer_ops.authors_local_reparam(layer, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert_same_gradients(got, expected, [x, layer.A_mu, layer.B_mu, layer.rank_log_sigma2])
    with torch.no_grad():  # the noise matters: another seed gives another sample
        torch.manual_seed(2)
        assert not torch.allclose(layer_ops.authors_local_reparam(layer, x), expected)


def test_layer_rows_reference_predictive_equals_the_suites_loop():
    """The authors' loop of S sampled passes equals mc_predict_proba with one sample per pass (and the
    CPU default, which is that loop) under the same seed."""
    import torch

    from lrvd_bench.cost import layer_ops

    layer = layer_ops.make_lrvd(8, 2, "cpu", seed=0, dtype=torch.float64)
    with torch.no_grad():
        layer.rank_log_sigma2.fill_(0.0)  # large noise: a wrong loop shows
    model = layer_ops.one_layer_model(layer)
    x = torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(3)
        ref = layer_ops.authors_predictive(layer, x, 4)
    for chunk in (1, 0):
        torch.manual_seed(3)
        torch.testing.assert_close(layer_ops.suite_predictive(model, x, 4, chunk), ref)
    torch.manual_seed(3)
    one = layer_ops.suite_predictive(model, x, 1, 1)
    assert not torch.allclose(one, ref)


def test_layer_rows_reference_equals_blob_draw_for_draw():
    """The authors' BLoB forward (mean and noise paths through B apart, signs as uniform(−1, 1) signs,
    then ε) gives BLoBLinear's output and gradients under the same seed."""
    import torch

    from lrvd_bench.cost import layer_ops

    layer = layer_ops.make_blob(6, 3, "cpu", seed=0, dtype=torch.float64)
    with torch.no_grad():
        layer.lora_A_std_sqrt.fill_(0.7)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    got = layer(x)
    torch.manual_seed(1)
    expected = layer_ops.authors_blob(layer, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert_same_gradients(
        got, expected, [x, layer.lora_A, layer.lora_A_std_sqrt, layer.lora_B], lambda y: y.square().sum()
    )
    layer.sampling = False
    assert not torch.allclose(layer(x), expected)


def test_layer_verdict_hand_computed():
    from lrvd_bench.cost.layer_ops import verdict

    assert verdict([0.9, 1.0, 1.1], 1.0) == "yes"  # median 1.0
    assert verdict([0.95, 1.02, 1.05, 1.1], 1.0) == "within IQR"  # median 1.035, 1 of 4 rounds meets it
    assert verdict([1.01, 1.02, 1.05, 1.1, 1.2], 1.0) == "no"
    assert verdict([0.95, 1.02, 1.05, 1.1, 1.2], 1.0) == "no"  # 1 of 5 rounds: below a quarter
    assert verdict([2.0], math.nan) == "–"


def test_layers_cli_prints_every_row_with_its_target(capsys):
    """``bench cost --layers`` on a tiny shape: six rows per shape, the ≤ 1 targets on the four
    rows against the authors' ops, and a one-line error for a malformed shape."""
    assert (
        main(
            [
                "cost",
                "--layers",
                "--layer-shapes",
                "16x2",
                "--layer-tokens",
                "8",
                "--steps",
                "2",
                "--warmup",
                "0",
                "--n-samples",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "16 × 16, r = 2" in line]
    assert len(table) == 6
    assert sum("| ≤ 1 |" in line for line in table) == 4
    assert any("default mc_chunk (here 1)" in line for line in table)  # CPU: the loop
    with pytest.raises(SystemExit, match="--layer-shapes entry '16x0' is not DxR"):
        main(["cost", "--layers", "--layer-shapes", "16x0"])
