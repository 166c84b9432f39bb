"""The validation split every method of a comparison shares, carved from the training set.

It serves post-hoc fits (temperature, Laplace prior grid search), checkpoint selection and
hyper-parameter selection. The split depends only on ``(n, fraction, seed)`` — not on the method, the
trial seed or the global RNG — so every method trains on the same remaining rows and validates on the
same held-out rows, and the evaluation set is never touched (it is a different file).
"""

from __future__ import annotations

import math

import torch

from lrvd.errors import LRVDError


def holdout_indices(n: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(train_idx, val_idx)``: a seeded random ``fraction`` of ``range(n)`` held out, both sorted.

    At least one example goes to each side when ``fraction`` > 0; ``fraction == 0`` holds out nothing.
    """
    if not 0.0 <= fraction < 1.0:
        raise LRVDError(f"validation fraction must be in [0, 1), got {fraction}")
    if n < 0:
        raise LRVDError(f"dataset size must be >= 0, got {n}")
    if fraction == 0.0 or n == 0:
        return list(range(n)), []
    if n < 2:
        raise LRVDError(f"cannot hold out a validation split from {n} training example(s)")
    n_val = min(n - 1, max(1, math.ceil(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])
