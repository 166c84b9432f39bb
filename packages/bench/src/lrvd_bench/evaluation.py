"""A finished trial scored on other tasks than the one it trained on (``eval_tasks``): BLoB's shift design.

After a trial trains on ``task`` (and ``after_training`` fitted its Laplace posterior, temperature or
selected checkpoint there), the same model, posterior and predictive score the evaluation split of every
other task in ``eval_tasks``: no retraining, nothing refitted. Each set's predictions are saved like the
training task's (:mod:`lrvd_bench.predictions`), with the per-sample probabilities of a sampled
predictive, and its metrics go into the trial's row under ``evaluations``; the leaderboard turns each
into a row with ``shift = ood`` and adds the uncertainty and OOD-detection columns from the files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lrvd_bench.trial_spec import TrialSpec

#: What ``predictive`` says about a predictive's mutual information: ``sampled`` (from its saved draws),
#: ``deterministic`` (no draws: MI is 0), ``closed-form`` (a Bayesian predictive without draws, such as
#: Laplace's probit: MI is not defined from the saved files and left empty).
PREDICTIVES = ("sampled", "deterministic", "closed-form")


def check_eval_tasks(tasks: list[str], eval_tasks: list[str]) -> None:
    """Every evaluation task can be scored by a model trained on each training task, else one line (exit 2).

    A multiple-choice model scores any multiple-choice task: an encoder scores each (question, choice) pair
    and a causal LM reads the evaluation task's option letters, so ARC's five options work after training on
    OBQA's four. A classification head has one output per class of its training task: it can only score a
    classification task with the same classes.
    """
    from lrvd_bench.errors import BenchError
    from lrvd_bench.tasks import get_task

    for train_name in tasks:
        train = get_task(train_name)
        for name in eval_tasks:
            other = get_task(name)
            if other.kind != train.kind:
                raise BenchError(
                    f"evaluation task {name!r} is {other.kind.replace('_', '-')} but {train_name!r} trains a "
                    f"{train.kind.replace('_', '-')} head; evaluate on tasks of the same kind"
                )
            if train.kind == "classification" and (other.n_classes, other.option_words()) != (
                train.n_classes,
                train.option_words(),
            ):
                raise BenchError(
                    f"evaluation task {name!r} has {other.n_classes} classes {other.option_words()} but the head "
                    f"trained on {train_name!r} has {train.n_classes} {train.option_words()}"
                )


def other_eval_tasks(spec: TrialSpec) -> list[str]:
    """``eval_tasks`` without the training task (always scored) and without repeats, in the given order."""
    return [name for name in dict.fromkeys(spec.eval_tasks or []) if name != spec.task]


def predictive_kind(method: Any, n_samples: int | None, samples: Any) -> str:
    """One of :data:`PREDICTIVES` for the predictions just made (``n_samples``: the draws evaluated)."""
    if samples is not None:
        return "sampled"
    return "closed-form" if method.sampled_predictive and (n_samples or 0) > 0 else "deterministic"


def score_task(
    method: Any,
    model: Any,
    backbone: Any,
    spec: TrialSpec,
    eval_task: str,
    n_samples: int | None,
    device: Any,
    trial_dir: Path,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``eval_task``'s evaluation split, save its predictions, return its metrics for the row."""
    from lrvd.metrics import classification_metrics
    from lrvd.training import predict_with_samples
    from lrvd_bench.backbones import scoring_task
    from lrvd_bench.loaders import evaluation_split
    from lrvd_bench.predictions import write_predictions
    from lrvd_bench.tasks import get_task

    task = get_task(eval_task)
    loader, ids = evaluation_split(task, backbone, spec)
    start = time.perf_counter()
    with scoring_task(model, task, backbone.tokenizer, backbone.kind):
        probs, labels, samples = predict_with_samples(
            method, model, loader, n_samples=spec.n_samples, device=device, progress=progress, seed=spec.seed
        )
    seconds = time.perf_counter() - start
    if spec.save_predictions:
        write_predictions(trial_dir, spec.task, eval_task, probs, labels, ids, samples)
    return {
        **classification_metrics(probs, labels),
        "n_eval": len(ids),
        "eval_time_s": seconds,
        "predictive": predictive_kind(method, n_samples, samples),
    }
