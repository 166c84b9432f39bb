"""Fixtures of the bench tests: a tiny multiple-choice backbone saved to disk, for real ``bench run``s."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_mc_model(tmp_path_factory) -> Path:
    """A 2-layer BertForMultipleChoice (random weights) + the MiniLM tokenizer, saved like a checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMultipleChoice

    from lrvd_bench.backbones import resolve_model_path

    out = tmp_path_factory.mktemp("tiny-bert-mc")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMultipleChoice(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
