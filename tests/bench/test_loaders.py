"""Loaders: pre-tokenised batches, seeded shuffling, fixed subsamples, prompt truncation, one loop end to end."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, LlamaConfig

from lrvd.classifier import freeze_all_but
from lrvd.errors import LRVDError
from lrvd.protocol import MethodBase, TrainConfig, TrainPlan
from lrvd.training import fit, predict
from lrvd_bench.backbones import MASKED_LOGIT, build_backbone_from_config, resolve_model_path
from lrvd_bench.loaders import Collator, TaskData, encode_examples, make_loaders, subsample
from lrvd_bench.tasks import get_task
from lrvd_bench.tasks.base import Example


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


@pytest.fixture(scope="module")
def bert_mc(tokenizer):
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return build_backbone_from_config(config, get_task("arc-c"), tokenizer)


@pytest.fixture(scope="module")
def llama_boolq(tokenizer):
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    return build_backbone_from_config(config, get_task("boolq"), tokenizer)


def test_make_loaders_returns_padded_mc_batches_with_labels(bert_mc):
    data = make_loaders(get_task("arc-c"), bert_mc, batch_size=4, eval_batch_size=8, limit_train=20, limit_eval=10)
    assert isinstance(data, TaskData)
    assert (data.n_train, data.n_eval, data.split_note, data.n_classes) == (20, 10, None, 5)
    assert data.source.startswith("bundled:") and data.tokenize_seconds > 0
    assert len(data.train_loader) == 5 and len(data.eval_loader) == 2
    batch = next(iter(data.train_loader))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "choice_mask", "labels"}
    b, k, length = batch["input_ids"].shape
    assert b == 4 and k >= 4 and length <= 64
    assert batch["labels"].dtype == torch.long and (batch["labels"] < batch["choice_mask"].sum(1)).all()
    assert length == int(batch["attention_mask"].sum(-1).max())  # dynamic padding to the batch's longest


def _rows(loader):
    """Each example's real (unpadded) token ids, in loader order."""
    return [
        tuple(row[mask.bool()].tolist())
        for batch in loader
        for row, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]


def test_train_order_is_seeded_and_reshuffled_each_epoch_eval_order_is_fixed(bert_mc):
    task = get_task("arc-e")
    kwargs = dict(batch_size=4, limit_train=24, limit_eval=12, max_length=32)
    a, b, c = (make_loaders(task, bert_mc, seed=s, **kwargs) for s in (0, 0, 1))
    first_epoch = _rows(a.train_loader)
    assert first_epoch == _rows(b.train_loader)
    assert first_epoch != _rows(c.train_loader)
    assert sorted(first_epoch) == sorted(_rows(c.train_loader))  # limits are fixed by split_seed, not the seed
    assert _rows(a.train_loader) != first_epoch  # next epoch: new permutation
    assert _rows(a.eval_loader) == _rows(c.eval_loader) == _rows(a.eval_loader)


def test_eval_batches_follow_file_order(bert_mc):
    task = get_task("obqa")
    data = make_loaders(task, bert_mc, limit_train=8, eval_batch_size=5, max_length=48)
    labels = torch.cat([batch["labels"] for batch in data.eval_loader])
    assert labels.tolist() == [ex.label for ex in task.load("eval")]


def test_carved_task_reports_its_split_note(bert_mc, tokenizer):
    mc = build_backbone_from_config(bert_mc.model.backbone.config, get_task("wg-s"), tokenizer)
    data = make_loaders(get_task("wg-s"), mc, limit_train=8, limit_eval=8)
    assert data.split_note == "carved from dev: 640 train / 507 eval (seed 0)"
    assert next(iter(data.eval_loader))["input_ids"].shape[1] == 2


def test_padding_choices_repeat_choice_zero_and_are_masked(bert_mc, tokenizer):
    task = get_task("arc-c")
    examples = [Example("q one", ["a", "b", "c"], 1), Example("q two", ["a", "b", "c", "d", "e"], 4)]
    items = encode_examples(task, "encoder-mc", tokenizer, examples, 32)
    batch = Collator("encoder-mc", tokenizer.pad_token_id, task.n_classes)(items)
    assert batch["choice_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert torch.equal(batch["input_ids"][0, 3], batch["input_ids"][0, 0])
    assert batch["attention_mask"][0, 4].sum() > 0  # no fully masked attention row
    logits = bert_mc.model(batch)
    assert (logits[0, 3:] == MASKED_LOGIT).all() and (logits[1] > -100).all()


def test_causal_prompts_keep_their_ending_and_trim_the_passage(llama_boolq, tokenizer):
    task = get_task("boolq")
    data = make_loaders(task, llama_boolq, limit_train=4, limit_eval=16, max_length=48)
    batch = next(iter(data.eval_loader))
    assert set(batch) == {"input_ids", "attention_mask", "choice_mask", "labels"}
    assert batch["choice_mask"].all() and batch["input_ids"].shape[1] <= 48
    answer = tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        row = ids[: int(mask.sum())].tolist()
        assert row[-1] == tokenizer.sep_token_id and row[-1 - len(answer) : -1] == answer
        assert tokenizer.decode(row[:12], skip_special_tokens=True).startswith("answer the question with only true")
    assert llama_boolq.model(batch).shape == (16, 2)


def test_causal_mc_batches_mask_missing_letters(tokenizer, llama_boolq):
    task = get_task("arc-c")
    items = encode_examples(task, "causal-lm", tokenizer, [Example("q", ["x", "y", "z"], 2)], 64)
    batch = Collator("causal-lm", tokenizer.pad_token_id, task.n_classes)(items)
    assert batch["choice_mask"].tolist() == [[True, True, True, False, False]]


def test_subsample_and_argument_checks():
    examples = [Example(str(i), ["a", "b"], 0) for i in range(10)]
    picked = subsample(examples, 4, seed=0)
    assert len(picked) == 4 and picked == sorted(picked, key=lambda e: int(e.question))
    assert subsample(examples, None) is examples and subsample(examples, 50) is examples
    with pytest.raises(LRVDError, match=">= 1"):
        subsample(examples, 0)
    with pytest.raises(LRVDError, match="max_length"):
        encode_examples(get_task("cola"), "encoder-cls", None, examples, 4)


class HeadOnly(MethodBase):
    """Trains only the task head: enough to drive the shared loop end to end."""

    name = "head-only"

    def attach(self, model, spec, plan):
        freeze_all_but(model, {id(p) for p in model.head_parameters()})
        return model


def test_loaders_drive_the_shared_training_and_prediction_loop(bert_mc):
    task = get_task("arc-c")
    data = make_loaders(task, bert_mc, batch_size=4, eval_batch_size=4, limit_train=12, limit_eval=9, max_length=32)
    plan = TrainPlan.from_loader_length(len(data.train_loader), data.n_train, TrainConfig(max_steps=3, lr=1e-2))
    method = HeadOnly()
    model = method.attach(bert_mc.model, None, plan)
    fit(method, model, data.train_loader, plan, device="cpu", progress=False)
    probs, labels = predict(method, model, data.eval_loader, device="cpu", progress=False)
    assert probs.shape == (9, 5) and labels.shape == (9,)
    torch.testing.assert_close(probs.sum(1), torch.ones(9))
    assert probs[:, 4].max() < 1e-6 or (labels == 4).any()


def test_validation_fraction_holds_out_part_of_train_not_eval(bert_mc):
    full = make_loaders(get_task("arc-c"), bert_mc, batch_size=4, limit_train=20, limit_eval=10)
    data = make_loaders(
        get_task("arc-c"), bert_mc, batch_size=4, limit_train=20, limit_eval=10, validation_fraction=0.25
    )
    assert (data.n_train, data.n_val, data.n_eval) == (15, 5, 10)
    train, val, evl = _rows(data.train_loader), _rows(data.val_loader), _rows(data.eval_loader)
    assert not set(val) & set(train) and not set(val) & set(evl)
    assert sorted(train + val) == sorted(_rows(full.train_loader))
    assert full.val_loader is None and full.n_val == 0
