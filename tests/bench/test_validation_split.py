"""The sweep's one validation split: the same rows for every method and seed, disjoint from evaluation,
also the split checkpoint selection scores on.

Real trials (``run_trial``) of two methods × two seeds on a tiny BERT saved to disk: the loaders each
trial built are captured, and ``after_training`` records the validation loader it was handed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lrvd_bench.loaders as loaders
from conftest import save_tiny_bert
from lrvd.protocol import MethodBase
from lrvd_baselines.lora_temp_scaling import LoRATempScaling
from lrvd_bench.backbones import load_backbone
from lrvd_bench.config import load_config
from lrvd_bench.errors import BenchError
from lrvd_bench.tasks import get_task
from lrvd_bench.trial import run_trial


@pytest.fixture(scope="module")
def tiny_mc_model(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-mc"), layers=1)


def _rows(loader) -> list[tuple[int, ...]]:
    """Each example's (question, first choice) token ids: distinct questions give distinct rows."""
    return [
        tuple(row[0][mask[0].bool()].tolist())
        for batch in loader
        for row, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]


def test_every_method_and_seed_trains_and_validates_on_the_same_rows(tiny_mc_model, tmp_path, monkeypatch):
    built, handed = {}, {}
    make = loaders.make_loaders

    def capture(*args, **kwargs):
        data = make(*args, **kwargs)
        built[len(built)] = data
        return data

    def spy(original):
        def after_training(self, model, train_loader, val_loader=None):
            handed[len(handed)] = val_loader
            return original(self, model, train_loader, val_loader)

        return after_training

    monkeypatch.setattr(loaders, "make_loaders", capture)
    monkeypatch.setattr(MethodBase, "after_training", spy(MethodBase.after_training))
    monkeypatch.setattr(LoRATempScaling, "after_training", spy(LoRATempScaling.after_training))
    cfg = load_config(
        None,
        {
            "methods": "lora,lora-temp-scaling",
            "tasks": "arc-c",
            "seeds": [0, 1],
            "model": str(tiny_mc_model),
            "limit_train": 20,
            "limit_eval": 10,
            "validation_fraction": 0.25,
            "split_seed": 3,
            "max_length": 24,
            "device": "cpu",
            "train": {"max_steps": 2, "batch_size": 4, "eval_every": 1},
            "save_adapter": False,
        },
    )
    specs = cfg.expand()
    assert len(specs) == 4
    rows = [run_trial(spec, tmp_path / spec.trial_id) for spec in specs]

    assert [(r["n_train"], r["n_val"], r["n_eval"]) for r in rows] == [(15, 5, 10)] * 4
    # checkpoint selection scored on the same split: 5 questions, so accuracy is a multiple of 1/5
    assert all(r["best_step"] in (1, 2) and round(5 * r["checkpoint_val_accuracy"], 9) % 1 == 0 for r in rows)
    assert [handed[i] is built[i].val_loader for i in range(4)] == [True] * 4
    val = [_rows(data.val_loader) for data in built.values()]
    train = [sorted(_rows(data.train_loader)) for data in built.values()]
    evaluation = [_rows(data.eval_loader) for data in built.values()]
    assert all(v == val[0] for v in val) and len(set(val[0])) == 5
    assert all(t == train[0] for t in train) and len(set(train[0])) == 15
    assert not set(val[0]) & set(train[0])
    assert not set(val[0]) & set(evaluation[0]) and not set(train[0]) & set(evaluation[0])

    # split_seed, not the trial seed, chooses the rows: another split_seed holds out other questions
    task = get_task("arc-c")
    same = make(
        task,
        load_backbone(str(tiny_mc_model), task),
        batch_size=4,
        limit_train=20,
        limit_eval=10,
        seed=1,
        split_seed=3,
        validation_fraction=0.25,
        max_length=24,
    )
    assert _rows(same.val_loader) == val[0]
    other = make(
        task,
        load_backbone(str(tiny_mc_model), task),
        batch_size=4,
        limit_train=20,
        limit_eval=10,
        seed=0,
        split_seed=4,
        validation_fraction=0.25,
        max_length=24,
    )
    assert _rows(other.val_loader) != val[0]


def test_validation_fraction_is_validated_and_fixed_for_the_sweep():
    with pytest.raises(BenchError, match=r"validation_fraction must be in \[0, 1\), got 1.0"):
        load_config(None, {"methods": "lora", "validation_fraction": 1.0})
    with pytest.raises(BenchError, match="method 'lora-temp-scaling' fits on the validation split"):
        load_config(None, {"methods": "lora,lora-temp-scaling", "validation_fraction": 0})
    load_config(
        None,
        {
            "methods": "lora,laplace-lora",
            "validation_fraction": 0,
            "method_params": {"laplace-lora": {"prior_tuning": "marglik"}},
        },
    )
    with pytest.raises(BenchError, match="laplace-lora"):
        load_config(
            None,
            {
                "methods": "laplace-lora",
                "validation_fraction": 0,
                "method_params": {"laplace-lora": {"prior_tuning": "gridsearch"}},
            },
        )
    with pytest.raises(BenchError, match="train.eval_every=5 selects checkpoints on the validation split"):
        load_config(None, {"methods": "lora", "validation_fraction": 0, "train": {"eval_every": 5}})
    for key in ("validation_fraction", "split_seed"):
        with pytest.raises(BenchError, match=f"unknown search_space key '{key}'"):
            load_config(None, {"methods": "lora", "search_space": {key: {"grid_search": [0.1, 0.2]}}})
    cfg = load_config(None, {"methods": "lora,bayeslora", "seeds": [0, 1, 2]})
    assert cfg.validation_fraction == 0.1 and cfg.split_seed == 0
    assert {(s.validation_fraction, s.split_seed) for s in cfg.expand()} == {(0.1, 0)}
