"""Per-sample probabilities of a sampled predictive, kept when a caller asks for them.

A sampled method averages S posterior (or dropout, or ensemble-member) draws inside ``predict_proba``.
The uncertainty metrics need the draws themselves (expected entropy and mutual information,
:mod:`lrvd.uncertainty`), so the helpers that average them (:func:`lrvd.inject.mc_predict_proba`, the
baselines' ``mean_softmax``, the IVON, Laplace ``nn`` and ensemble predictives) hand each draw's
probabilities to :func:`record_samples`. :func:`lrvd.training.predict_with_samples` opens a
:func:`recording` around every batch and stacks what was recorded: the mean of those draws is the
predictive the method returned, computed from the same numbers. Outside a recording the call is a no-op,
so ``predict_proba`` costs the same as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_ACTIVE: ContextVar[list[torch.Tensor] | None] = ContextVar("lrvd_sample_record", default=None)


@contextmanager
def recording() -> Iterator[list[torch.Tensor]]:
    """Collect the draws recorded inside the block: a list of ``[s, B, C]`` tensors (CPU, float32)."""
    draws: list[torch.Tensor] = []
    token = _ACTIVE.set(draws)
    try:
        yield draws
    finally:
        _ACTIVE.reset(token)


def is_recording() -> bool:
    """Whether a caller collects draws (a predictive whose draws cost extra to expose checks this)."""
    return _ACTIVE.get() is not None


def record_samples(probs: torch.Tensor) -> None:
    """Hand one draw ``[B, C]`` or a chunk of draws ``[s, B, C]`` of probabilities to the open recording."""
    draws = _ACTIVE.get()
    if draws is not None:
        draws.append((probs if probs.dim() == 3 else probs.unsqueeze(0)).detach().float().cpu())


def stacked(draws: list[torch.Tensor]) -> torch.Tensor | None:
    """The recorded draws as one ``[S, B, C]`` tensor; ``None`` when nothing was recorded."""
    return torch.cat(draws) if draws else None
