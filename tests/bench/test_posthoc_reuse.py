"""Post-hoc methods on LoRA's saved adapter: the plan (which trials reuse which), the trial (reuse
predicts exactly what retraining predicts), and the sweep (a later stage, failure and resume).

Real trials run a 1-layer BERT built from a config with the MiniLM tokenizer; the sweep test uses a
cheap trial body that records whether it was handed an adapter to reuse.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import save_tiny_bert
from lrvd_bench.config import load_config
from lrvd_bench.posthoc_reuse import plan_posthoc, read_plan
from lrvd_bench.stage_plan import plan_final

POSTHOC = ["lora-temp-scaling", "laplace-lora"]


def _config(**overrides):
    base = {"methods": ["lora", *POSTHOC], "tasks": ["arc-e"], "seeds": [0, 1], "device": "cpu"}
    return load_config(None, {**base, **overrides})


def _ids(specs, method):
    return {s.seed: s.trial_id for s in specs if s.method == method}


def test_each_posthoc_trial_reuses_the_lora_trial_of_its_seed():
    specs = _config().expand()
    plan = plan_posthoc(specs)
    lora = _ids(specs, "lora")
    for method in POSTHOC:
        for seed, trial_id in _ids(specs, method).items():
            assert plan[trial_id] == lora[seed]
    assert len(plan) == 4


def test_a_differing_training_spec_or_no_lora_trial_retrains():
    # post-hoc-only parameters (temperature fit, Laplace prior) keep the match; explicit LoRA defaults too
    specs = _config(
        method_params={"lora-temp-scaling": {"max_iter": 7, "lora_dropout": 0.0}, "laplace-lora": {"prior_steps": 3}}
    ).expand()
    assert len(plan_posthoc(specs)) == 4
    # a training parameter LoRA shares (its dropout) differs: Laplace-LoRA trains its own adapter
    specs = _config(method_params={"laplace-lora": {"lora_dropout": 0.1}}).expand()
    assert {k.split("-arc")[0] for k in plan_posthoc(specs)} == {"lora-temp-scaling"}
    # another rank, learning rate or step count for one post-hoc trial: no match for that trial
    specs = _config().expand()
    changed = []
    for s in specs:
        if s.method == "lora-temp-scaling" and s.seed == 0:
            s = dataclasses.replace(s, adapter={**s.adapter, "r": s.adapter["r"] * 2})
        if s.method == "lora-temp-scaling" and s.seed == 1:
            s = dataclasses.replace(s, train={**s.train, "lr": s.train["lr"] * 2})
        if s.method == "laplace-lora" and s.seed == 0:
            s = dataclasses.replace(s, train={**s.train, "max_steps": 3})
        changed.append(s)
    assert list(plan_posthoc(changed)) == [_ids(specs, "laplace-lora")[1]]
    # LoRA not in the sweep, or not saving its adapter
    assert plan_posthoc(_config(methods=POSTHOC).expand()) == {}
    assert plan_posthoc(_config(save_adapter=False).expand()) == {}


def test_stages_put_reusing_trials_after_lora_and_random_search_reuses_nothing():
    config = _config()
    plan = plan_final(config, config.expand())
    (first, training), (second, later) = plan.stages
    assert (first, second) == ("training", "post-hoc")
    assert {s.method for s in training} == {"lora"} and {s.method for s in later} == set(POSTHOC)
    random = _config(search_space={"train.lr": {"loguniform": [1e-4, 1e-2]}})
    assert [name for name, _ in plan_final(random, random.expand()).stages] == ["training"]


def test_dry_run_prints_the_stages_the_run_plans(capsys):
    from lrvd_bench import cli

    assert cli.main(["run", "--methods", "lora,lora-temp-scaling", "--seeds", "0", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    lora = next(line for line in lines if " lora arc-e " in line)
    ts = next(line for line in lines if " lora-temp-scaling " in line)
    assert lora.endswith("[training stage]")
    assert ts.endswith(f"[post-hoc stage, on the adapter of {lora.split()[0]}]")


# -- real trials -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), "BertModel", layers=1)


@pytest.fixture(scope="module")
def trials(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """LoRA, then each post-hoc method retrained and on LoRA's adapter, all at seed 0."""
    from lrvd_bench.trial import run_trial

    config = _config(
        model=str(tiny_model),
        seeds=[0],
        limit_train=24,
        limit_eval=12,
        max_length=32,
        eval_batch_size=4,
        n_samples=3,
        **{"train.max_steps": 4, "train.batch_size": 4, "train.lr": 0.05, "adapter.target_modules": ["query", "value"]},
        # the sampled curvature and the sampled predictive: both must come out the same on reuse
        method_params={"laplace-lora": {"predictive": "nn", "curvature": "ggn-mc", "prior_steps": 5}},
    )
    root = tmp_path_factory.mktemp("posthoc")
    specs = {s.method: s for s in config.expand()}
    out = {"lora": root / "lora"}
    run_trial(specs["lora"], out["lora"])
    for method in POSTHOC:
        out[f"{method}/retrained"] = root / f"{method}-retrained"
        run_trial(specs[method], out[f"{method}/retrained"])
        out[f"{method}/reused"] = root / f"{method}-reused"
        run_trial(specs[method], out[f"{method}/reused"], reuse_from=out["lora"])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", POSTHOC)
def test_reuse_predicts_exactly_what_retraining_predicts(trials, method):
    retrained, reused = trials[f"{method}/retrained"], trials[f"{method}/reused"]
    a, b = np.load(retrained / "predictions.npz"), np.load(reused / "predictions.npz")
    assert np.array_equal(a["labels"], b["labels"])
    # bit-identical logits (temperature scaling is exact); Laplace's KFAC linear algebra on separately
    # allocated (equal) tensors can round differently in float32 (seen: 3e-8), far below what a
    # different sampled curvature moves (an unseeded fit)
    np.testing.assert_allclose(b["probs"], a["probs"], rtol=0, atol=1e-6)
    assert not np.array_equal(a["probs"], np.load(trials["lora"] / "predictions.npz")["probs"])  # it did post-process
    lora = json.loads((trials["lora"] / "result.json").read_text())
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (retrained, reused))
    assert rb["reused_from"] == lora["trial_id"] and "reused_from" not in ra
    # the same adapter: retraining reaches LoRA's loss; the reused row reports LoRA's training
    assert ra["final_train_loss"] == lora["final_train_loss"] == rb["final_train_loss"]
    assert rb["train_time_s"] == lora["train_time_s"] and rb["steps"] == lora["steps"]
    for name in ("train_log.csv", "ranks.csv"):
        assert (reused / name).read_text() == (trials["lora"] / name).read_text()
    assert "its training is reused" in (reused / "log.txt").read_text()
    assert "fit" not in [line.split()[-1] for line in (reused / "log.txt").read_text().splitlines()]


@pytest.mark.slow
def test_an_adapter_of_another_method_is_refused(trials, tiny_model):
    from lrvd.errors import LRVDError
    from lrvd_bench.posthoc_reuse import load_trained_adapter

    with pytest.raises(LRVDError, match="saved by 'lora-temp-scaling', not 'lora'"):
        load_trained_adapter(None, trials["lora-temp-scaling/retrained"], "lora")


# -- the sweep ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        started = True
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    if started:
        ray.shutdown()


def recording_trial(spec, trial_dir, report=None, reuse_from=None, *, calls: str, fail_lora_seed: int | None):
    """A trial without training: records ``trial_id reuse_from``, LoRA leaves an adapter folder."""
    from lrvd_bench.trial import run_trial

    def body(spec, trial_dir, progress, report):
        with open(calls, "a") as fh:
            fh.write(f"{spec.trial_id} {Path(reuse_from).name if reuse_from else '-'}\n")
        if spec.method == "lora" and spec.seed == fail_lora_seed:
            raise RuntimeError("boom: deliberate failure")
        if spec.method == "lora":
            (Path(trial_dir) / "adapter").mkdir(exist_ok=True)
        metrics = {"accuracy": 0.5, "nll": 1.0, "ece": 0.1, "brier": 0.5, "mcc": 0.0, "n_eval": 10}
        return {"status": "ok", "error": "", **metrics, "learned": True, "effective_rank": 8, "train_time_s": 1.0}

    return run_trial(spec, trial_dir, body=body)


def _calls(path: Path) -> dict[str, str]:
    return dict(line.split() for line in path.read_text().splitlines()) if path.exists() else {}


@pytest.mark.slow
def test_sweep_runs_reusers_after_lora_falls_back_when_it_failed_and_resumes(ray_session, tmp_path):
    from lrvd_bench.sweep import resume_sweep, run_sweep

    calls = tmp_path / "calls.txt"
    config = _config(output=str(tmp_path / "run"), cpus_per_trial=1, gpus_per_trial=0)
    trial = functools.partial(recording_trial, calls=str(calls), fail_lora_seed=1)
    outcome = run_sweep(config, trial_fn=trial, check=False)
    assert (outcome.n_ok, outcome.n_failed) == (5, 1)
    lora = _ids(config.expand(), "lora")
    ran = _calls(calls)
    plan = read_plan(outcome.run_dir)
    for method in POSTHOC:
        ids = _ids(config.expand(), method)
        assert plan[ids[0]] == lora[0] and plan[ids[1]] == lora[1]
        assert ran[ids[0]] == lora[0]  # LoRA's seed 0 finished first: its adapter is reused
        assert ran[ids[1]] == "-"  # LoRA's seed 1 failed: the post-hoc trial trains its own
    # resume: a reusing trial that did not finish runs again, on the adapter, and nothing else runs
    redo = _ids(config.expand(), "lora-temp-scaling")[0]
    (outcome.run_dir / "trials" / redo / "result.json").unlink()
    calls.unlink()
    again = resume_sweep(outcome.run_dir, trial_fn=trial)
    assert (again.n_ok, again.n_failed) == (5, 1)
    assert _calls(calls) == {redo: lora[0]}
