"""Checkpoint selection on the validation split: score the model every ``eval_every`` steps, keep the best.

The BayesLoRA GLUE protocol keeps the checkpoint with the best validation accuracy; ``val_nll`` is the
proper-scoring alternative. Scores come from the method's own predictive (``predict_proba`` with its
default number of posterior samples), i.e. what the method would predict if training stopped there:
before ``after_training``, so Laplace-LoRA scores its MAP and temperature scaling T = 1.

A checkpoint is everything training changes that prediction reads: the model's trainable parameters,
its buffers, and the optimizer's state (IVON's posterior lives in the optimizer's parameter groups).
Restoring puts the parameters back by name; a parameter whose shape changed since (BayesLoRA's rank
pruning) is replaced by the saved one, and the optimizer, which then tracks tensors the model no
longer holds, is left as it is (training is over and no such method reads it at prediction).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Checkpoint metrics: name -> (primary key, tie-breaker), both oriented so that larger is better.
CHECKPOINT_METRICS = {
    "val_accuracy": lambda m: (m["val_accuracy"], -m["val_nll"]),
    "val_nll": lambda m: (-m["val_nll"], m["val_accuracy"]),
}


def snapshot_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Detached copies of the trainable parameters, the buffers and the optimizer state."""
    return {
        "params": {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad},
        "buffers": {k: b.detach().clone() for k, b in model.named_buffers()},
        "optimizer": copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None,
    }


@torch.no_grad()
def restore_state(model: nn.Module, state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Put ``state`` (from :func:`snapshot_state`) back into ``model`` (and ``optimizer``)."""
    reshaped = False
    for name, saved in state["params"].items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        current = getattr(module, attr)
        if current.shape == saved.shape:
            current.copy_(saved)
        else:
            setattr(module, attr, nn.Parameter(saved.clone(), requires_grad=current.requires_grad))
            reshaped = True
    buffers = dict(model.named_buffers())
    for name, saved in state["buffers"].items():
        if name in buffers and buffers[name].shape == saved.shape:
            buffers[name].copy_(saved)
    if optimizer is not None and state["optimizer"] is not None and not reshaped:
        optimizer.load_state_dict(state["optimizer"])


@dataclass
class BestCheckpoint:
    """The best validation scores seen so far and the state that produced them.

    Ties on ``metric`` go to the other metric (accuracy ↔ NLL), then to the earlier step.
    """

    metric: str = "val_accuracy"
    step: int | None = None
    scores: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] | None = None

    def offer(
        self, step: int, scores: dict[str, float], model: nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> bool:
        """Keep ``model``'s state if ``scores`` beat the best so far; returns whether it did."""
        key = CHECKPOINT_METRICS[self.metric]
        if self.step is not None and not key(scores) > key(self.scores):
            return False
        self.step, self.scores, self.state = step, dict(scores), snapshot_state(model, optimizer)
        return True

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        if self.state is not None:
            restore_state(model, self.state, optimizer)
