"""Reproducible predictions: a reloaded adapter predicts exactly what the trial wrote (CPU).

Real trials (``run_trial``, no Ray) of every method with a sampled predictive, on a 1-layer BERT
multiple-choice model saved like a checkpoint; then :func:`lrvd_bench.reload.repredict` rebuilds
each from its folder and must reproduce ``predictions.npz`` bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import save_tiny_bert

SAMPLED = ["bayeslora", "blob", "mc-dropout-lora", "adalora-ivon", "laplace-lora"]
N_SAMPLES = 3


@pytest.fixture(scope="module")
def tiny_mc_model(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-mc"), "BertModel", layers=1, hidden_dropout_prob=0.1)


def run_dir_with_trials(root: Path, model: Path, methods: list[str], seeds=(0,)) -> Path:
    """A run directory with finished trials of ``methods`` (as ``bench run`` lays it out)."""
    from lrvd_bench.config import load_config
    from lrvd_bench.trial import run_trial

    config = load_config(
        None,
        {
            "methods": methods,
            "tasks": ["arc-e"],
            "seeds": list(seeds),
            "model": str(model),
            "limit_train": 16,
            "limit_eval": 12,
            "max_length": 32,
            "eval_batch_size": 4,
            "n_samples": N_SAMPLES,
            "device": "cpu",
            "train.max_steps": 4,
            "train.batch_size": 4,
            "train.lr": 0.05,
            "method_params": {
                "laplace-lora": {"predictive": "nn", "fit_examples": 8},
                "adalora-ivon": {"tinit": 0, "tfinal": 0.25, "deltaT": 0.25, "predictive": "bma"},
            },
        },
    )
    run_dir = root / "run"
    (run_dir / "trials").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    for spec in config.expand():
        run_trial(spec, run_dir / "trials" / spec.trial_id)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_mc_model) -> Path:
    return run_dir_with_trials(tmp_path_factory.mktemp("repro"), tiny_mc_model, SAMPLED)


def trial_of(run_dir: Path, method: str) -> Path:
    return next(
        p for p in (run_dir / "trials").iterdir() if json.loads((p / "spec.json").read_text())["method"] == method
    )


@pytest.mark.parametrize("method", SAMPLED)
def test_reload_reproduces_predictions_exactly(run_dir, method):
    from lrvd_bench.reload import repredict

    trial = trial_of(run_dir, method)
    saved = np.load(trial / "predictions.npz")
    probs, labels = repredict(trial)
    assert np.array_equal(labels.numpy(), saved["labels"])
    assert np.array_equal(probs.numpy(), saved["probs"]), f"max diff {np.abs(probs.numpy() - saved['probs']).max()}"


@pytest.mark.parametrize("method", SAMPLED)
def test_predictions_are_sampled_and_the_seed_is_what_fixes_them(run_dir, method):
    """The predictive really samples (another seed gives other probabilities), so the test above
    checks the seeding and not a deterministic path."""
    from lrvd.training import predict
    from lrvd_bench.reload import evaluation_settings, rebuild

    trial = trial_of(run_dir, method)
    settings = evaluation_settings(trial)
    m, model, loader = rebuild(trial)
    other, _ = predict(
        m, model, loader, n_samples=settings["n_samples"], device="cpu", progress=False, seed=settings["seed"] + 1
    )
    assert not np.array_equal(other.numpy(), np.load(trial / "predictions.npz")["probs"])


@pytest.mark.parametrize("method", SAMPLED)
def test_the_adapter_records_the_n_samples_it_was_evaluated_with(run_dir, method):
    trial = trial_of(run_dir, method)
    sidecar = json.loads((trial / "adapter" / "lrvd_adapter.json").read_text())
    assert sidecar["evaluation"]["n_samples"] == N_SAMPLES
    assert sidecar["evaluation"]["seed"] == json.loads((trial / "spec.json").read_text())["seed"]
    assert sidecar["params"]["n_samples"] != N_SAMPLES  # the method default (10) is not what ran


# -- bench export -----------------------------------------------------------------------------------
EXPORT_LOADER = """
import json, sys
import numpy as np, torch
from transformers import BertForMultipleChoice
from peft import PeftModel
base = BertForMultipleChoice.from_pretrained(sys.argv[1])
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
batch = np.load(sys.argv[3])
with torch.no_grad():
    logits = model(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
np.save(sys.argv[4], logits.numpy())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("lrvd", "lrvd_baselines", "lrvd_bench")))
"""


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    from lrvd_bench import cli

    out = tmp_path_factory.mktemp("export") / "bayeslora-arc-e"
    assert cli.main(["export", str(run_dir), "--method", "bayeslora", "--seed", "0", "--out", str(out)]) == 0
    return out


def test_export_folder_is_self_contained(exported):
    names = {p.name for p in exported.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "task_head.safetensors",
        "lrvd_adapter.json",
        "lrvd_posterior.safetensors",
        "trial_spec.json",
        "result.json",
        "README.md",
    } <= names
    from safetensors.torch import load_file

    head, peft = (
        load_file(str(exported / "task_head.safetensors")),
        load_file(str(exported / "adapter_model.safetensors")),
    )
    assert sorted(head) == ["classifier.bias", "classifier.weight"]
    for k, v in head.items():
        assert np.array_equal(v.numpy(), peft["base_model.model." + k].numpy())


def test_model_card_names_method_model_task_metrics_with_intervals_config_and_version(exported, run_dir):
    import re
    from importlib import metadata

    card = (exported / "README.md").read_text()
    result = json.loads((exported / "result.json").read_text())
    assert "library_name: peft" in card and "# bayeslora adapter for arc-e" in card
    assert result["model"] in card and "arc-e" in card
    assert f"lrvd-bench {metadata.version('lrvd-bench')}" in card and "commit" in card
    assert result["suite_commit"] and result["suite_commit"] in card
    rows = dict(re.findall(r"^\| (accuracy|ece|nll|brier) \| (.*) \|$", card, flags=re.M))
    assert set(rows) == {"accuracy", "ece", "nll", "brier"}
    for metric, cell in rows.items():
        value, lo, hi = map(float, re.match(r"([\d.]+) \| \[([\d.]+), ([\d.]+)\]", cell).groups())
        assert lo <= value <= hi, metric
        assert value == pytest.approx(result[metric], abs=5e-5), metric
    _, lo, hi = map(float, re.match(r"([\d.]+) \| \[([\d.]+), ([\d.]+)\]", rows["accuracy"]).groups())
    assert hi - lo > 0.1, "12 evaluation examples: the accuracy interval is wide"
    assert '"kl_scale"' not in card or "method_params" in card
    assert '"train"' in card and '"adapter"' in card


def test_exported_bayeslora_loads_with_plain_peft_in_a_fresh_process(exported, run_dir, tiny_mc_model, tmp_path):
    import subprocess
    import sys

    import torch

    from lrvd.inject import sampling
    from lrvd_bench.reload import rebuild

    method, model, loader = rebuild(trial_of(run_dir, "bayeslora"))
    batch = next(iter(loader))
    model.eval()
    with torch.no_grad(), sampling(model, False):
        expected = model(batch).numpy()
    np.savez(tmp_path / "batch.npz", **{k: batch[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")})
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            EXPORT_LOADER,
            str(tiny_mc_model),
            str(exported),
            str(tmp_path / "batch.npz"),
            str(tmp_path / "logits.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    got = np.load(tmp_path / "logits.npy")
    # the suite pads the choice axis to the task's 5 classes; the plain model sees this batch's choices
    np.testing.assert_allclose(got, expected[:, : got.shape[1]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--method", "lora"], "no finished trial with a saved adapter for method 'lora'"),
        (["--method", "bayeslora", "--seed", "7"], "for method 'bayeslora' with seed 7"),
    ],
)
def test_export_bad_input_is_one_line_exit_2(run_dir, tmp_path, capsys, argv, fragment):
    from lrvd_bench import cli

    code = cli.main(["export", str(run_dir), *argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err and "bayeslora seed 0" in err
    assert not (tmp_path / "x").exists()


def test_export_of_a_folder_that_is_no_run_is_one_line_exit_2(tmp_path, capsys):
    from lrvd_bench import cli

    code = cli.main(["export", str(tmp_path), "--method", "bayeslora", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a bench run directory" in err


def test_not_learned_mark_reads_the_nll_without_the_kl(tmp_path, tiny_mc_model, monkeypatch):
    """trial.py hands learned_flag the training NLL (TrainResult.final_nll), not BayesLoRA's
    KL-including loss; the row carries both."""
    import lrvd_bench.trial as trial

    seen = []
    real = trial.learned_flag
    monkeypatch.setattr(trial, "learned_flag", lambda nll, *a: seen.append(nll) or real(nll, *a))
    run_dir = run_dir_with_trials(tmp_path, tiny_mc_model, ["bayeslora"])
    row = json.loads((trial_of(run_dir, "bayeslora") / "result.json").read_text())
    assert seen == [row["final_train_nll"]]
    assert row["final_train_nll"] < row["final_train_loss"]  # the KL term is left out
