"""A trial's saved predictions: one ``.npz`` per evaluation task, everything the leaderboard re-scores.

``predictions.npz`` holds the training task's evaluation split (in-distribution); each other evaluation
task of ``eval_tasks`` gets ``predictions-<eval task>.npz``, scored by the same adapter, posterior and
predictive without retraining. Keys:

    probs         float   [N, C]     the predictive (MC-averaged for sampled methods), in the dtype it was
                                     computed in (float32; float64 for an ensemble's mean)
    labels        int64   [N]        gold indices
    ids           str     [N]        question ids, in evaluation order (pairing checks them)
    task          str     []         the training task
    eval_task     str     []         the evaluation task these rows come from
    sample_probs  float16 [S, N, C]  per-sample probabilities of a sampled predictive (absent otherwise)

The samples are stored as float16 (half of float32's bytes; their size per run is in docs/statistics.md).
Files written before question ids and samples were saved hold ``probs`` and ``labels`` only; reading
them gives empty ``ids`` and no samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PREDICTIONS_FILE = "predictions.npz"


def predictions_path(trial_dir: str | Path, task: str, eval_task: str | None = None) -> Path:
    """``predictions.npz`` for the training task's own evaluation split, ``predictions-<eval_task>.npz`` else."""
    trial_dir = Path(trial_dir)
    if eval_task is None or eval_task == task:
        return trial_dir / PREDICTIONS_FILE
    return trial_dir / f"predictions-{eval_task}.npz"


@dataclass(frozen=True)
class Predictions:
    """One evaluation set's saved predictions (see the module docstring for the fields)."""

    probs: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    task: str
    eval_task: str
    sample_probs: np.ndarray | None = None

    @property
    def shift(self) -> str:
        """``id`` for the training task's own evaluation split, ``ood`` for any other task."""
        return "id" if self.eval_task == self.task else "ood"


def write_predictions(
    trial_dir: str | Path,
    task: str,
    eval_task: str,
    probs: Any,
    labels: Any,
    ids: list[str],
    sample_probs: Any | None = None,
) -> Path:
    """Save one evaluation set (compressed); ``probs``/``labels``/``sample_probs`` may be tensors or arrays."""
    path = predictions_path(trial_dir, task, eval_task)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "probs": np.asarray(probs),  # as computed: float32, float64 for an ensemble's mean of members
        "labels": np.asarray(labels, dtype=np.int64),
        "ids": np.asarray(ids, dtype=str),
        "task": np.asarray(task),
        "eval_task": np.asarray(eval_task),
    }
    if sample_probs is not None:
        arrays["sample_probs"] = np.asarray(sample_probs, dtype=np.float16)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def read_predictions(trial_dir: str | Path, task: str, eval_task: str | None = None) -> Predictions | None:
    """The saved predictions of one evaluation set, ``None`` when the trial saved none for it."""
    path = predictions_path(trial_dir, task, eval_task)
    if not path.is_file():
        return None
    with np.load(path) as data:
        samples = data["sample_probs"].astype(np.float64) if "sample_probs" in data else None
        return Predictions(
            probs=data["probs"],
            labels=data["labels"],
            ids=data["ids"] if "ids" in data else np.asarray([], dtype=str),
            task=str(data["task"]) if "task" in data else task,
            eval_task=str(data["eval_task"]) if "eval_task" in data else (eval_task or task),
            sample_probs=samples,
        )
