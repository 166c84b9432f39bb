"""Shared fixtures: tiny transformers built from a config (no download) and a learnable toy task.

``TinyBertClassifier`` is a :class:`lrvd.ClassifierModel` over a 2-layer BERT with a fresh
classification head; ``toy_loader`` yields a task whose label is whether token 5 appears in the
sequence, which a LoRA on query/value can learn in a few dozen steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray, for every test module that starts it, set before anything imports Ray: no usage report, no
# auth prompt, and (as lrvd_bench.sweep does) workers use this venv rather than one rebuilt from
# uv.lock by Ray's `uv run` hook, which would be slow and lack the optional extras.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
torch.set_num_threads(1)  # tiny models: threads only add sync cost on a shared 2-core box

from lrvd.classifier import ClassifierModel  # noqa: E402


class TinyBertClassifier(ClassifierModel):
    """BERT sequence classifier: batch {input_ids, attention_mask, labels} -> logits [B, C]."""

    def __init__(self, n_classes: int = 2, seed: int = 0, hidden: int = 32, layers: int = 2, dropout: float = 0.0):
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=64,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            max_position_embeddings=64,
            num_labels=n_classes,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        backbone = BertForSequenceClassification(config)
        super().__init__(backbone, n_classes, head_params=list(backbone.classifier.parameters()))

    def forward(self, batch):
        return self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


class ScaledLinear(nn.Linear):
    """A base layer with extra forward arguments (as quantised or peft-wrapped bases have): adapter
    layers must pass them through to it."""

    def forward(self, x, scale=1.0, *, shift=0.0):
        return super().forward(x) * scale + shift


def assert_same_gradients(got, expected, inputs, loss=lambda y: (y + y.square()).sum()) -> None:
    """Two formulations of one function give the same gradients w.r.t. ``inputs`` under a non-linear
    ``loss`` (float64 tolerances): a hand-written backward checked against autograd's."""
    for g, r in zip(torch.autograd.grad(loss(got), inputs), torch.autograd.grad(loss(expected), inputs)):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def make_toy_dataset(n: int = 64, seq_len: int = 12, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 64, (n, seq_len), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(1, seq_len, (n,), generator=g)
    ids[labels == 1, pos[labels == 1]] = 5
    ids[:, 0] = 1  # [CLS]-like
    return TensorDataset(ids, torch.ones_like(ids), labels)


def collate(rows):
    ids, mask, labels = zip(*rows)
    return {"input_ids": torch.stack(ids), "attention_mask": torch.stack(mask), "labels": torch.stack(labels)}


def make_toy_loader(n: int = 64, batch_size: int = 8, seed: int = 0, shuffle: bool = True) -> DataLoader:
    return DataLoader(
        make_toy_dataset(n, seed=seed),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.fixture
def tiny_model() -> TinyBertClassifier:
    return TinyBertClassifier()


@pytest.fixture
def toy_loader() -> DataLoader:
    return make_toy_loader()


def save_tiny_bert(out: Path, model_class: str = "BertForMultipleChoice", layers: int = 2, **config) -> Path:
    """A tiny BERT (random weights, seed 0) + the MiniLM tokenizer saved like a checkpoint in ``out``:
    ``model_class`` ``BertModel`` has no classifier, so the task head is new, as with MiniLM."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    from lrvd_bench.backbones import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        **config,
    )
    getattr(transformers, model_class)(bert).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_mc_model(tmp_path_factory) -> Path:
    """A 2-layer BertForMultipleChoice (random weights) + the MiniLM tokenizer, saved like a checkpoint."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-mc"))
