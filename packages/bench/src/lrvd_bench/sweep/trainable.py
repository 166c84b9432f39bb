"""The Ray Tune trainable: one :class:`~lrvd_bench.config.TrialSpec` per Ray trial, and the trials' names.

As Ray Tune wants it, the trainable is a plain function of its config dict (``{"spec": ..., "space":
...}``: the spec and the random search-space values sampled for it) that reports metrics; everything
about scheduling stays outside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrvd_bench.config import TrialSpec
from lrvd_bench.posthoc_reuse import ready_source
from lrvd_bench.trial_folder import CHECKPOINT_DIR, finished_row

#: ``trial_fn(spec, trial_dir, report=callable)`` -> result row; defaults to ``run_trial``.
TrialFn = Callable[..., dict[str, Any]]
#: Ray Tune's folder in the run directory: ``tune/<trial_name>/`` per trial (curves, Ray's error.txt)
TUNE_DIR = "tune"


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _scalars(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if _scalar(v)}


def spec_of(config: dict[str, Any]) -> TrialSpec:
    """The TrialSpec of a Ray trial config (random search-space values applied)."""
    spec = TrialSpec.from_dict(config["spec"])
    return spec.with_overrides(config["space"]) if config.get("space") else spec


def make_trainable(run_dir: Path, trial_fn: TrialFn | None, threads: int) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable running one spec; ``trial_fn`` defaults to ``run_trial``.

    Reports every progress record of the trial (curves, live console lines, ASHA) and at the end
    the result row with ``trial_done``; a finished trial's stored row is reported without running.
    """
    run_dir = Path(run_dir).resolve()

    def trainable(config: dict[str, Any]) -> None:
        import ray
        from ray import tune

        if not ray.get_gpu_ids():
            # Ray leaves CUDA_VISIBLE_DEVICES alone for a trial with 0 GPUs; hide the node's GPUs so
            # device=auto means CPU there instead of sharing a GPU nobody reserved. (CUDA reads the
            # variable at its first use, which comes later, inside the trial.)
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        spec = spec_of(config)
        trial_dir = run_dir / "trials" / spec.trial_id
        stored = finished_row(trial_dir, spec)
        if stored is not None:
            tune.report({**_scalars(stored), "trial_done": True, "kept": True})
            return
        fn = trial_fn
        if fn is None:
            from lrvd_bench.trial import run_trial as fn
        trial_dir.mkdir(parents=True, exist_ok=True)
        # a post-hoc method whose LoRA trial finished loads that adapter instead of training one
        source = ready_source(run_dir, spec)
        reuse = {"reuse_from": source} if source is not None else {}

        restore_ray_checkpoint(tune.get_checkpoint(), trial_dir / CHECKPOINT_DIR)
        last_step = {"timesteps_total": None}

        def report(record: dict[str, Any]) -> None:
            # ``timesteps_total`` is the x-axis Ray's TensorBoard and MLflow loggers plot against (else
            # their report counter): the optimizer step, so curves of runs that log at different
            # intervals line up.
            if isinstance(record.get("step"), (int, float)) and record["step"] > 0:
                last_step["timesteps_total"] = int(record["step"])
            tune.report({**_scalars(record), **{k: v for k, v in last_step.items() if v}})

        def checkpoint(folder: Path, step: int) -> None:
            # Ray Tune keeps a copy in the trial's folder under tune/ (one, CheckpointConfig): a trial Ray
            # restarts (FailureConfig, Tuner.restore) gets it back from tune.get_checkpoint()
            tune.report(
                {"checkpoint_step": step, **{k: v for k, v in last_step.items() if v}},
                checkpoint=tune.Checkpoint.from_directory(str(folder)),
            )

        # The trial's Python-level output (warnings, loading reports) goes to its own log file
        # rather than interleaving on the driver's console.
        with (
            open(trial_dir / "output.log", "a", buffering=1) as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            if spec.train.get("checkpoint_every"):
                reuse["on_checkpoint"] = checkpoint
            row = fn(spec, trial_dir, report=report, **reuse)
        tune.report({**_scalars(row), **{k: v for k, v in last_step.items() if v}, "trial_done": True})

    return trainable


def restore_ray_checkpoint(checkpoint: Any, folder: Path) -> None:
    """Put the checkpoint Ray hands a restarted trial in the trial folder, where the training loop looks,
    unless the folder already holds a later one (a ``bench run --resume`` after the driver died)."""
    from lrvd.resumable import checkpoint_step

    if checkpoint is None:
        return
    with checkpoint.as_directory() as source:
        if checkpoint_step(source) <= checkpoint_step(folder):
            return
        tmp = folder.with_name(folder.name + ".ray")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def trial_name(trial: Any) -> str:
    """Ray trial names and folders: ``<method>-<task>-s<seed>_<ray id>`` (the ray id keeps samples apart)."""
    spec = trial.config.get("spec", {})
    return f"{spec.get('method', 'trial')}-{spec.get('task', '')}-s{spec.get('seed', '')}_{trial.trial_id}"
