"""Task examples -> tokenised PyTorch loaders for one backbone.

Every example is tokenised once, up front, with the fast tokenizer's batch call
(:func:`encode_examples`); batches are then padded dynamically to their longest sequence by
:class:`Collator`. A batch is a dict of tensors:

* ``encoder-mc``:  ``input_ids``/``attention_mask``/``token_type_ids`` ``[B, K, L]`` with ``K`` the
  batch's largest choice count, ``choice_mask [B, K]`` (False for padding choices, whose rows repeat
  choice 0 so no attention row is empty), ``labels [B]``;
* ``encoder-cls``: ``input_ids``/``attention_mask``/``token_type_ids`` ``[B, L]``, ``labels [B]``;
* ``causal-lm``:   right-padded ``input_ids``/``attention_mask`` ``[B, L]``, ``choice_mask [B, n_classes]``,
  ``labels [B]``.

Training order is shuffled by a generator seeded with ``seed`` (a fresh permutation each epoch,
reproducible); the eval order is the file order. ``limit_train`` / ``limit_eval`` take a subsample
fixed by ``split_seed`` (not by the trial seed, so every trial of a comparison sees the same examples),
kept in file order. ``validation_fraction`` of those training examples (again fixed by ``split_seed``
alone, :func:`lrvd.data_split.holdout_indices`) then become the validation split: the training loader
holds the rest, so every method of a sweep, at every seed, trains on the same rows and validates on
the same rows. Both come from the task's training file; the evaluation split is never read for them.

Truncation: encoder pairs use ``longest_first`` (long questions or passages lose their end, short
choices survive). Causal prompts must keep their ending ("… Answer:"), so an over-long prompt first
has its context passage shortened and is then cut from the left; use ``max_length`` >= 256 for LLMs.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lrvd.data_split import holdout_indices
from lrvd.errors import LRVDError
from lrvd_bench.backbones import Backbone
from lrvd_bench.tasks.base import Example, Task, with_context

_TRIM_MARGIN = 4  # tokens of slack when shortening a passage (re-tokenising at the cut can merge pieces)


@dataclass
class TaskData:
    """The loaders of one (task, backbone) pair and facts the leaderboard reports with the run."""

    train_loader: DataLoader
    eval_loader: DataLoader
    n_train: int
    n_eval: int
    split_note: str | None
    source: str = ""
    n_classes: int = 0
    tokenize_seconds: float = 0.0
    #: ``validation_fraction`` of the training split, held out for every method (temperature scaling,
    #: Laplace grid search, checkpoint and hyper-parameter selection); never overlaps the evaluation split
    val_loader: DataLoader | None = None
    n_val: int = 0
    #: question ids of the evaluation split, in ``eval_loader`` order (saved with the predictions)
    eval_ids: list[str] = field(default_factory=list)


class EncodedDataset(Dataset):
    """Pre-tokenised examples: each item holds token-id lists and its ``label``."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def encode_examples(
    task: Task, kind: str, tokenizer: Any, examples: Sequence[Example], max_length: int = 64
) -> list[dict[str, Any]]:
    """Tokenise ``examples`` for a backbone of ``kind`` ("encoder-mc" | "encoder-cls" | "causal-lm")."""
    if max_length < 8:
        raise LRVDError(f"max_length must be >= 8, got {max_length}")
    if kind == "causal-lm":
        return _encode_causal(task, tokenizer, examples, max_length)
    if kind not in ("encoder-mc", "encoder-cls"):
        raise LRVDError(f"unknown backbone kind {kind!r}; valid choices: causal-lm, encoder-cls, encoder-mc")
    groups = [task.encoder_inputs(ex) for ex in examples]
    firsts = [a for group in groups for a, _ in group]
    seconds = [b for group in groups for _, b in group]
    if all(b is None for b in seconds):
        enc = tokenizer(firsts, truncation=True, max_length=max_length)
    else:
        enc = tokenizer(firsts, [b or "" for b in seconds], truncation="longest_first", max_length=max_length)
    fields = [k for k in ("input_ids", "token_type_ids") if k in enc]
    items, start = [], 0
    for ex, group in zip(examples, groups, strict=True):
        stop = start + len(group)
        if kind == "encoder-mc":
            item = {k: enc[k][start:stop] for k in fields}
        else:
            item = {k: enc[k][start] for k in fields}
        item["label"] = ex.label
        item["n_choices"] = len(ex.choices)
        items.append(item)
        start = stop
    return items


def _encode_causal(task: Task, tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[dict[str, Any]]:
    examples = list(examples)
    ids = tokenizer([task.causal_prompt(ex) for ex in examples])["input_ids"]
    long = [i for i, row in enumerate(ids) if len(row) > max_length and examples[i].context]
    if long:
        contexts = tokenizer([examples[i].context for i in long], add_special_tokens=False)["input_ids"]
        trimmed = []
        for i, ctx in zip(long, contexts, strict=True):
            keep = max(0, len(ctx) - (len(ids[i]) - max_length) - _TRIM_MARGIN)
            trimmed.append(ctx[:keep])
        new_contexts = tokenizer.batch_decode(trimmed, skip_special_tokens=True)
        prompts = [task.causal_prompt(with_context(examples[i], c)) for i, c in zip(long, new_contexts, strict=True)]
        for i, row in zip(long, tokenizer(prompts)["input_ids"], strict=True):
            ids[i] = row
    bos = getattr(tokenizer, "bos_token_id", None)
    items = []
    for ex, row in zip(examples, ids, strict=True):
        if len(row) > max_length:  # keep the prompt's end; keep BOS if the tokenizer adds one
            row = ([bos] + row[-(max_length - 1) :]) if bos is not None and row[0] == bos else row[-max_length:]
        items.append({"input_ids": row, "label": ex.label, "n_choices": len(ex.choices)})
    return items


class Collator:
    """Pads a list of encoded items into a batch dict (see the module docstring for shapes)."""

    def __init__(self, kind: str, pad_token_id: int, n_classes: int):
        self.kind = kind
        self.pad_token_id = int(pad_token_id)
        self.n_classes = n_classes

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([it["label"] for it in items], dtype=torch.long)
        if self.kind == "encoder-mc":
            batch = self._pad_choices(items)
        else:
            batch = self._pad_flat(items, with_types=self.kind == "encoder-cls")
            if self.kind == "causal-lm":
                n = torch.tensor([it["n_choices"] for it in items])
                batch["choice_mask"] = torch.arange(self.n_classes)[None, :] < n[:, None]  # [B, n_classes]
        batch["labels"] = labels
        return batch

    def _pad_flat(self, items: list[dict[str, Any]], with_types: bool) -> dict[str, torch.Tensor]:
        length = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        types = torch.zeros((len(items), length), dtype=torch.long)
        for b, it in enumerate(items):
            n = len(it["input_ids"])
            ids[b, :n] = torch.tensor(it["input_ids"])
            mask[b, :n] = 1
            if with_types and "token_type_ids" in it:
                types[b, :n] = torch.tensor(it["token_type_ids"])
        batch = {"input_ids": ids, "attention_mask": mask}
        if with_types and "token_type_ids" in items[0]:
            batch["token_type_ids"] = types
        return batch

    def _pad_choices(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n_choices = max(len(it["input_ids"]) for it in items)
        length = max(len(seq) for it in items for seq in it["input_ids"])
        shape = (len(items), n_choices, length)
        ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(shape, dtype=torch.long)
        types = torch.zeros(shape, dtype=torch.long)
        choice_mask = torch.zeros((len(items), n_choices), dtype=torch.bool)
        has_types = "token_type_ids" in items[0]
        for b, it in enumerate(items):
            k_real = len(it["input_ids"])
            choice_mask[b, :k_real] = True
            for k in range(n_choices):
                src = k if k < k_real else 0  # padding choices repeat choice 0; their logits are masked
                seq = it["input_ids"][src]
                ids[b, k, : len(seq)] = torch.tensor(seq)
                mask[b, k, : len(seq)] = 1
                if has_types:
                    types[b, k, : len(seq)] = torch.tensor(it["token_type_ids"][src])
        batch = {"input_ids": ids, "attention_mask": mask, "choice_mask": choice_mask}
        if has_types:
            batch["token_type_ids"] = types
        return batch


def subsample(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """At most ``limit`` examples, chosen by ``seed``, in their original order."""
    if limit is None or limit >= len(examples):
        return examples
    if limit < 1:
        raise LRVDError(f"example limits must be >= 1, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def loaders_for_trial(task: Task, backbone: Backbone, spec: Any, *, with_eval: bool = True) -> TaskData:
    """:func:`make_loaders` with a :class:`~lrvd_bench.config.TrialSpec`'s data settings.

    The one place a trial's rows are chosen from its spec: the trial itself, a reloaded adapter
    (:mod:`lrvd_bench.reload`) and the measurement tools must see exactly the same split.
    """
    return make_loaders(
        task,
        backbone,
        data_dir=spec.data_dir,
        batch_size=spec.build_train().batch_size,
        eval_batch_size=spec.eval_batch_size,
        max_length=spec.max_length,
        limit_train=spec.limit_train,
        limit_eval=spec.limit_eval,
        seed=spec.seed,
        split_seed=spec.split_seed,
        validation_fraction=spec.validation_fraction,
        with_eval=with_eval,
    )


def make_loaders(
    task: Task,
    backbone: Backbone,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    eval_batch_size: int = 16,
    max_length: int = 64,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    seed: int = 0,
    source: str = "auto",
    split_seed: int = 0,
    num_workers: int = 0,
    validation_fraction: float = 0.0,
    with_eval: bool = True,
) -> TaskData:
    """Train and eval loaders for ``task`` tokenised for ``backbone`` (see the module docstring).

    ``with_eval=False`` never loads the evaluation split (hyper-parameter selection scores on the
    validation split only); ``eval_loader`` is then None.
    """
    if batch_size < 1 or eval_batch_size < 1:
        raise LRVDError("batch sizes must be >= 1")
    src = task.resolve_source(data_dir, source)
    train = subsample(task.load("train", data_dir, split_seed, source), limit_train, split_seed)
    eval_ = subsample(task.load("eval", data_dir, split_seed, source), limit_eval, split_seed) if with_eval else [None]
    if not train or not eval_:
        raise LRVDError(f"task {task.name!r}: empty {'train' if not train else 'eval'} split from {src.describe()}")
    val: list = []
    if validation_fraction > 0:
        train_idx, val_idx = holdout_indices(len(train), validation_fraction, split_seed)
        train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
    start = time.perf_counter()
    train_items = encode_examples(task, backbone.kind, backbone.tokenizer, train, max_length)
    val_items = encode_examples(task, backbone.kind, backbone.tokenizer, val, max_length) if val else []
    eval_items = encode_examples(task, backbone.kind, backbone.tokenizer, eval_, max_length) if with_eval else []
    seconds = time.perf_counter() - start
    pad_id = backbone.tokenizer.pad_token_id
    collate = Collator(backbone.kind, 0 if pad_id is None else pad_id, task.n_classes)
    train_loader = DataLoader(
        EncodedDataset(train_items),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
    )
    eval_loader = (
        DataLoader(
            EncodedDataset(eval_items),
            batch_size=eval_batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=num_workers,
        )
        if with_eval
        else None
    )
    val_loader = None
    if val_items:
        val_loader = DataLoader(
            EncodedDataset(val_items),
            batch_size=eval_batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=num_workers,
        )
    return TaskData(
        train_loader=train_loader,
        eval_loader=eval_loader,
        n_train=len(train_items),
        n_eval=len(eval_items),
        split_note=task.split_note(data_dir, source, split_seed),
        source=src.describe(),
        n_classes=task.n_classes,
        tokenize_seconds=seconds,
        val_loader=val_loader,
        n_val=len(val_items),
        eval_ids=[ex.id for ex in eval_] if with_eval else [],
    )


def evaluation_split(task: Task, backbone: Backbone, spec: Any) -> tuple[DataLoader, list[str]]:
    """The evaluation split of another task than the trial trained on (``eval_tasks``), tokenised for the
    trial's backbone with the trial's ``max_length``, ``limit_eval`` and ``split_seed``: the loader and the
    question ids in its order. No training rows are read, so an evaluation-only task works."""
    examples = subsample(task.load("eval", spec.data_dir, spec.split_seed), spec.limit_eval, spec.split_seed)
    if not examples:
        raise LRVDError(f"task {task.name!r}: empty evaluation split")
    items = encode_examples(task, backbone.kind, backbone.tokenizer, examples, spec.max_length)
    pad_id = backbone.tokenizer.pad_token_id
    loader = DataLoader(
        EncodedDataset(items),
        batch_size=spec.eval_batch_size,
        shuffle=False,
        collate_fn=Collator(backbone.kind, 0 if pad_id is None else pad_id, task.n_classes),
    )
    return loader, [ex.id for ex in examples]
