"""The model contract every method and the training loop rely on.

A :class:`ClassifierModel` maps a batch dict (tensors, including ``labels``) to class logits
``[batch, n_classes]``. Hiding the task format here (multiple-choice head, sequence classification,
causal-LM letter logits) is what lets methods, metrics and plots stay task-agnostic: every method
returns probabilities over the same classes.

Trainable-parameter rule (the same for every method, see README): adapter parameters plus the
*newly initialised* task head (``head_parameters()``); the pretrained backbone stays frozen.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class ClassifierModel(nn.Module):
    """Base class: wraps a backbone (usually a transformers model) under ``self.backbone``.

    Subclasses implement :meth:`forward`. ``head_params`` holds the parameter *objects* of a freshly
    initialised task head; identity survives peft wrapping, names do not.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, head_params: list[nn.Parameter] | None = None):
        super().__init__()
        self.backbone = backbone
        self.n_classes = n_classes
        self._head_param_ids = {id(p) for p in (head_params or [])}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # [batch, n_classes]
        raise NotImplementedError

    def __deepcopy__(self, memo: dict[int, Any]) -> ClassifierModel:
        """A copy whose head is the *copy's* head parameters (the ids are remapped through ``memo``).

        Without this the copy's head set names the original's objects, so ``head_parameters()`` of the
        copy is empty and its head is silently frozen (``bench cost`` builds every model this way).
        """
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        new._head_param_ids = {id(memo[i]) for i in self._head_param_ids if i in memo}
        return new

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the newly initialised task head (trained by every method)."""
        for p in self.parameters():
            if id(p) in self._head_param_ids:
                yield p

    def set_head_parameters(self, params: list[nn.Parameter]) -> None:
        self._head_param_ids = {id(p) for p in params}

    def is_head_parameter(self, p: nn.Parameter) -> bool:
        return id(p) in self._head_param_ids


def freeze_all_but(model: nn.Module, keep: set[int]) -> None:
    """Set ``requires_grad`` to True exactly for the parameters whose ``id`` is in ``keep``."""
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
