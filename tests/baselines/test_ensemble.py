"""lora-ensemble: the predictive is the mean of its members, members differ, M x LoRA parameters."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyBertClassifier, make_toy_loader
from lrvd.protocol import AdapterConfig, TrainConfig, TrainPlan
from lrvd.registry import get_method, list_methods
from lrvd.training import fit
from lrvd_baselines.lora import LoRA
from lrvd_baselines.lora_ensemble import LoRAEnsemble, ensemble_from_trials, ensemble_probs

SPEC = AdapterConfig(r=2, alpha=4)


def plan(steps: int = 3) -> TrainPlan:
    return TrainPlan(total_steps=steps, n_train=32, train=TrainConfig(lr=1e-2, mixed_precision="no", warmup_ratio=0.0))


@pytest.fixture(scope="module")
def trained():
    method = LoRAEnsemble(n_members=3)
    model = method.attach(TinyBertClassifier(), SPEC, plan())
    fit(method, model, make_toy_loader(32), plan(), device="cpu", progress=False)
    return method, model


def test_registered():
    assert "lora-ensemble" in list_methods() and get_method("lora-ensemble") is LoRAEnsemble


def test_predictive_is_mean_of_members_computed_one_by_one(trained):
    method, model = trained
    model.eval()
    batch = next(iter(make_toy_loader(8, shuffle=False)))
    peft_model = model.backbone.backbone
    by_hand = []
    for k in range(3):
        peft_model.set_adapter(f"member{k}")
        with torch.no_grad():
            by_hand.append(torch.softmax(model.backbone(batch).float(), -1))
    probs = method.predict_proba(model, batch)
    assert torch.allclose(probs.double(), ensemble_probs(by_hand), atol=1e-6)
    assert not torch.allclose(by_hand[0], by_hand[1], atol=1e-4)  # members differ
    for k in range(3):  # every member was trained, not only the active one
        assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if f"lora_B.member{k}" in n)


def test_save_load_round_trip(trained, tmp_path):
    method, model = trained
    model.eval()
    batch = next(iter(make_toy_loader(8, shuffle=False)))
    method.save_adapter(model, tmp_path)
    again = LoRAEnsemble(n_members=3)
    fresh = again.attach(TinyBertClassifier(), SPEC, plan())
    again.load_adapter(fresh, tmp_path)
    fresh.eval()
    assert torch.allclose(again.predict_proba(fresh, batch), method.predict_proba(model, batch), atol=1e-6)


def test_members_have_different_init_and_m_times_lora_parameters():
    method = LoRAEnsemble(n_members=3)
    model = method.attach(TinyBertClassifier(), SPEC, plan())
    lora = LoRA()
    lora_count = lora.parameter_counts(lora.attach(TinyBertClassifier(), SPEC, plan()))["trainable"]
    assert method.parameter_counts(model)["trainable"] == 3 * lora_count  # own adapters + own head
    named = dict(model.named_parameters())
    a0 = [p for n, p in named.items() if "lora_A.member0" in n][0]
    a1 = [p for n, p in named.items() if "lora_A.member1" in n][0]
    assert not torch.equal(a0, a1)
    heads = list(model.head_parameters())
    assert len(heads) == 3 * len(list(TinyBertClassifier().head_parameters())) and all(p.requires_grad for p in heads)


def test_ensemble_from_trials_groups_by_config_and_takes_smallest_seeds():
    labels = torch.tensor([0, 1])
    preds = {f"t{s}": (torch.tensor([[0.2 + 0.1 * s, 0.8 - 0.1 * s]] * 2), labels) for s in range(4)}
    rows = [
        {
            "trial_id": f"t{s}",
            "method": "lora",
            "seed": s,
            "status": "ok",
            "task": "x",
            "model": "m",
            "search_point": "",
        }
        for s in range(4)
    ]
    rows.append({"trial_id": "other", "method": "blob", "seed": 0, "task": "x", "model": "m", "search_point": ""})
    (ens,) = ensemble_from_trials(rows, preds, m=3)
    assert ens["seeds"] == [0, 1, 2] and ens["task"] == "x"
    assert torch.allclose(ens["probs"], ensemble_probs([preds["t0"][0], preds["t1"][0], preds["t2"][0]]))
    assert ensemble_from_trials(rows, preds, m=5) == []
