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

SAMPLED = ["bayeslora", "blob", "mc-dropout-lora", "adalora-ivon", "laplace-lora"]
N_SAMPLES = 3


@pytest.fixture(scope="module")
def tiny_mc_model(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMultipleChoice

    from lrvd_bench.backbones import resolve_model_path

    out = tmp_path_factory.mktemp("tiny-bert-mc")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.1)
    BertForMultipleChoice(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_dir_with_trials(root: Path, model: Path, methods: list[str], seeds=(0,)) -> Path:
    """A run directory with finished trials of ``methods`` (as ``bench run`` lays it out)."""
    from lrvd_bench.config import load_config
    from lrvd_bench.trial import run_trial

    config = load_config(None, {
        "methods": methods, "tasks": ["arc-e"], "seeds": list(seeds), "model": str(model), "limit_train": 16,
        "limit_eval": 12, "max_length": 32, "eval_batch_size": 4, "n_samples": N_SAMPLES, "device": "cpu",
        "train.max_steps": 4, "train.batch_size": 4, "train.lr": 0.05,
        "method_params": {"laplace-lora": {"predictive": "nn", "fit_examples": 8},
                          "adalora-ivon": {"tinit": 0, "tfinal": 0.25, "deltaT": 0.25, "predictive": "bma"}},
    })
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
    return next(p for p in (run_dir / "trials").iterdir() if json.loads((p / "spec.json").read_text())["method"] == method)


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
    other, _ = predict(m, model, loader, n_samples=settings["n_samples"], device="cpu", progress=False,
                       seed=settings["seed"] + 1)
    assert not np.array_equal(other.numpy(), np.load(trial / "predictions.npz")["probs"])


@pytest.mark.parametrize("method", SAMPLED)
def test_the_adapter_records_the_n_samples_it_was_evaluated_with(run_dir, method):
    trial = trial_of(run_dir, method)
    sidecar = json.loads((trial / "adapter" / "lrvd_adapter.json").read_text())
    assert sidecar["evaluation"]["n_samples"] == N_SAMPLES
    assert sidecar["evaluation"]["seed"] == json.loads((trial / "spec.json").read_text())["seed"]
    assert sidecar["params"]["n_samples"] != N_SAMPLES  # the method default (10) is not what ran
