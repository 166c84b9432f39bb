"""Experiment trackers: Ray Tune logger callbacks for ``config.loggers``, fed every progress record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lrvd_bench.config import ExperimentConfig
from lrvd_bench.errors import BenchError


def tracker_callbacks(config: ExperimentConfig, run_dir: Path) -> list[Any]:
    """Ray Tune logger callbacks for ``config.loggers`` (Ray's automatic set is switched off).

    ``mlflow`` logs to ``$MLFLOW_TRACKING_URI`` or a file store ``runs/NAME/mlruns``, one MLflow
    experiment per run directory; ``wandb`` to project ``$WANDB_PROJECT`` (default ``lrvd-bench``),
    grouped by run directory, honouring ``WANDB_MODE=offline`` (local files under ``runs/NAME/wandb``).
    """
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    out: list[Any] = []
    for name in config.loggers:
        if name == "csv":
            out.append(CSVLoggerCallback())
        elif name == "json":
            out.append(JsonLoggerCallback())
        elif name == "tensorboard":
            out.append(TBXLoggerCallback())
        elif name == "mlflow":
            _need_extra("mlflow")
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # MLflow ≥ 3.7 keeps its file store only on request (no server, no database)
                uri = (run_dir / "mlruns").as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            out.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=run_dir.name))
        elif name == "wandb":
            _need_extra("wandb")
            # WANDB_MODE is read here and passed on: Ray starts the logging actor with only the API key
            # of the driver's environment, so a cluster's workers would otherwise try to go online.
            mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
            out.append(
                wandb_callback_class()(
                    project=os.environ.get("WANDB_PROJECT", "lrvd-bench"),
                    group=run_dir.name,
                    log_config=False,
                    dir=str(run_dir),
                    **mode,
                )
            )
    return out


def wandb_callback_class() -> type:
    """Ray's W&B callback, logging each record at its optimizer step as TensorBoard and MLflow do.

    Ray's ``WandbLoggerCallback`` passes ``training_iteration`` (its report counter) to ``wandb.log`` as
    the step; the records of a trial carry the optimizer step in ``timesteps_total`` (see
    :mod:`lrvd_bench.sweep.trainable`), so each is logged there instead, with Ray's counter kept as
    ``report_index``. A record without a step (a finished trial's stored row) keeps Ray's counter.
    """
    from ray.air.integrations.wandb import WandbLoggerCallback

    class OptimizerStepWandb(WandbLoggerCallback):
        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            step = result.get("timesteps_total")
            if isinstance(step, int) and step > 0:
                result = {**result, "training_iteration": step, "report_index": result.get("training_iteration")}
            super().log_trial_result(iteration, trial, result)

    return OptimizerStepWandb


def _need_extra(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise BenchError(f"logger {module!r} needs the optional extra: uv sync --all-packages --extra {module}")
