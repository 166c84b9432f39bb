"""One trial: one method on one task with one seed, start to finish, as a plain function.

``run_trial(spec, trial_dir)`` is the body of every Ray Tune trial (see :mod:`lrvd_bench.sweep`)
and can be called directly for debugging. Its steps::

    seed → get_task → load_backbone → make_loaders → method.attach → fit → after_training
         → predict → classification_metrics → result row + files

``make_loaders`` carves the sweep's one validation split (``validation_fraction`` of the training
rows, fixed by ``split_seed``, never the trial seed): every method of a sweep trains on the same
remaining rows and gets the same validation rows in ``after_training(..., val_loader)``.

Files written into ``trial_dir`` (``result.json`` last and atomically, so a folder without it is an
unfinished trial that ``--resume`` re-runs; a failure writes ``error.json`` instead):

    spec.json         the TrialSpec (re-run exactly with ``run_trial(json.load(...), dir)``)
    train_log.csv     loss every ``log_every`` steps, joined with the method's step logs (and, with
                      ``train.eval_every``, the validation scores of checkpoint selection)
    ranks.csv         long format: step, module, rank (the method's rank_report over training)
    log_alpha.csv     methods with the ``per_rank_log_alpha`` capability (BayesLoRA): step, module,
                      rank_index, log_alpha
    predictions.npz   probs [N, C], labels [N], question ids and, for a sampled predictive, the
                      per-sample probabilities on the evaluation split (lrvd_bench.predictions);
                      predictions-<task>.npz the same for each other task of ``eval_tasks``
    adapter/          method.save_adapter: a peft adapter + the lrvd sidecar (lrvd.adapter_io)
    log.txt           phase timings
    result.json       the row that goes into trials.csv and the leaderboard
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrvd.errors import LRVDError
from lrvd_bench.config import TrialSpec
from lrvd_bench.provenance import package_versions, suite_commit
from lrvd_bench.trial_folder import CHECKPOINT_DIR, ERROR_FILE, RESULT_FILE, atomic_write, identity, write_row

#: A progress hook: receives one record (see :data:`PROGRESS_KEYS`) every ``log_every`` steps.
Reporter = Callable[[dict[str, Any]], None]

#: What a progress record holds: the loop's loss record (its method logs: ``nll``, ``kl``, …, and
#: ``val_*`` metrics when the loop validates) completed with these keys.
PROGRESS_KEYS = ("step", "total_steps", "loss", "lr", "effective_rank", "step_time_s")

#: A run "learned" when its accuracy beats the majority class by ``LEARNED_SE_MARGIN`` binomial
#: standard errors √(m(1−m)/n) of a majority-level classifier on the n evaluation examples (the
#: statistical test) *and* the NLL part of its final training loss (without BayesLoRA's or BLoB's KL
#: term) is below the uniform-prediction loss ln(#choices) (the fit left chance at all). A margin
#: below ln k (0.985 · ln k before) marked a quickstart LoRA seed at 0.39 vs majority 0.28 whose
#: smoothed batch-of-4 NLL was 1.371: the training NLL is too noisy for a tighter rule.
LEARNED_LOSS_FRACTION = 1.0
LEARNED_SE_MARGIN = 2.0


def node_info() -> dict[str, Any]:
    """Where the trial ran: the Ray node IP (hostname outside Ray) and the GPU ids Ray assigned."""
    info: dict[str, Any] = {"hostname": socket.gethostname(), "node": socket.gethostname(), "gpu_ids": ""}
    try:
        import ray

        if ray.is_initialized():
            # The address the node registered with the cluster (``ray start --node-ip-address``),
            # which is what ``ray status`` shows; get_node_ip_address() guesses a routable one.
            node_id = ray.get_runtime_context().get_node_id()
            info["node"] = next(
                (n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), ray.util.get_node_ip_address()
            )
            info["node_id"] = node_id
            info["gpu_ids"] = ",".join(str(g) for g in ray.get_gpu_ids())
    except Exception:  # outside Ray, or Ray without a worker context
        pass
    if not info["gpu_ids"]:
        info["gpu_ids"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return info


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def write_ranks_csv(rank_history: list[dict[str, Any]], path: Path) -> None:
    """Long format, one line per (step, module): easy to plot and to read for any number of modules."""
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "module", "rank"])
        for record in rank_history:
            step = record.get("step", 0)
            for module, rank in record.items():
                if module != "step":
                    writer.writerow([step, module, rank])


def write_log_alpha_csv(history: list[dict[str, Any]], path: Path) -> None:
    """Long format, one line per (step, module, rank index): per-rank log α snapshots (``bench analyze``)."""
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "module", "rank_index", "log_alpha"])
        for record in history:
            step = record.get("step", 0)
            for module, values in record.items():
                if module != "step":
                    for k, value in enumerate(values):
                        writer.writerow([step, module, k, value])


def write_train_log_csv(loss_history: list[dict[str, Any]], step_logs: list[dict[str, Any]], path: Path) -> None:
    """Loss records joined on ``step`` with the method's per-step logs (pruning, budget, …)."""
    import pandas as pd

    frame = pd.concat([pd.DataFrame(loss_history), pd.DataFrame(step_logs)], ignore_index=True)
    if frame.empty:
        frame = pd.DataFrame(columns=["step", "loss"])
    else:  # one line per step: the loss record's values, completed by that step's method logs
        frame = frame.groupby("step", as_index=False, sort=True).first()
    frame.to_csv(path, index=False)


class LiveTrainLog:
    """``train_log.csv`` written while the trial trains, each record also handed to ``report``.

    Completes the loop's loss record (step, loss, lr, the method's ``nll``/``kl``/…, ``val_*`` when
    the loop validates) with the total step count, the effective rank and the time per step since
    the previous record. The file is rewritten once more at the end, joined with the method's
    per-step logs (:func:`write_train_log_csv`).
    """

    def __init__(
        self, path: Path, total_steps: int, effective_rank: Callable[[], int | None], report: Reporter | None = None
    ) -> None:
        self.path, self.total_steps, self.effective_rank, self.report = path, total_steps, effective_rank, report
        self.records: list[dict[str, Any]] = []
        self.columns: list[str] = []
        self.last_step, self.last_time = 0, time.perf_counter()

    def __call__(self, record: dict[str, Any]) -> None:
        import csv

        now, step = time.perf_counter(), int(record["step"])
        full = {
            **record,
            "total_steps": self.total_steps,
            "effective_rank": self.effective_rank(),
            "step_time_s": (now - self.last_time) / max(1, step - self.last_step),
        }
        self.last_step, self.last_time = step, now
        self.records.append(full)
        if set(full) - set(self.columns):  # a new column (the first record, a first validation): rewrite
            self.columns = list(dict.fromkeys([*self.columns, *full]))
            rows, mode = self.records, "w"
        else:
            rows, mode = [full], "a"
        with self.path.open(mode, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)
        if self.report is not None:
            self.report(full)


def data_fingerprint(task: Any, data_dir: str | None) -> tuple[str, str]:
    """(where the rows came from without machine paths, sha256 of the train and eval files).

    ``bundled:arc_easy`` / ``data_dir:arc_easy`` / ``hub:allenai/ai2_arc/ARC-Easy``; the hash covers
    the local train file then the eval file (empty for the hub, whose files live in its cache).
    """
    src = task.resolve_source(data_dir)
    if src.kind == "hub":
        return src.describe(), ""
    digest = hashlib.sha256()
    for split in (s for s in ("train", "eval") if s in task.splits):  # an evaluation-only task has no train
        path = Path(src.location) / task.file_name(split)
        if path.is_file():
            digest.update(path.read_bytes())
    return f"{src.kind}:{Path(src.location).name}" + (" (carved)" if src.carved else ""), digest.hexdigest()


def evaluated_n_samples(method: Any, n_samples: int | None) -> int | None:
    """The number of posterior samples the trial's predictive drew: the sweep's ``n_samples`` or, when
    unset, the method's own default (None for a deterministic method)."""
    if n_samples is not None:
        return int(n_samples)
    default = getattr(method.params, "n_samples", None)
    return int(default) if default is not None else None


def learned_flag(final_nll: float, probs: Any, labels: Any, accuracy: float) -> tuple[bool, float, float]:
    """(learned, uniform-prediction loss, majority-class accuracy) — see LEARNED_LOSS_FRACTION and
    LEARNED_SE_MARGIN; ``final_nll`` is the training NLL without KL terms.

    The uniform loss uses each example's real number of choices (padded choices get probability 0),
    so ARC questions with 4 of 5 slots used are measured against ln 4, not ln 5.
    """
    import torch

    n_valid = (probs > 1e-12).sum(-1).clamp(min=2).double()
    uniform_loss = float(torch.log(n_valid).mean())
    majority = float(torch.bincount(labels).max()) / max(1, len(labels))
    margin = LEARNED_SE_MARGIN * math.sqrt(majority * (1.0 - majority) / max(1, len(labels)))
    learned = bool(
        math.isfinite(final_nll) and final_nll < LEARNED_LOSS_FRACTION * uniform_loss and accuracy > majority + margin
    )
    return learned, uniform_loss, majority


def run_trial(
    spec: TrialSpec | dict[str, Any],
    trial_dir: str | Path,
    *,
    progress: bool = False,
    body: Callable[[TrialSpec, Path, bool, Reporter | None], dict[str, Any]] | None = None,
    report: Reporter | None = None,
    reuse_from: str | Path | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
) -> dict[str, Any]:
    """Run one trial and return its result row (also written to ``trial_dir/result.json``).

    ``report`` receives a progress record every ``train.log_every`` steps (:data:`PROGRESS_KEYS`);
    the sweep forwards them to Ray Tune, so curves, live console lines and early stopping work
    while the trial trains. On failure writes ``error.json`` (one-line message) and ``error.txt``
    (traceback), then re-raises, so Ray records the trial as errored and the sweep goes on.
    ``body(spec, trial_dir, progress, report)`` replaces the training flow (tests use a cheap one to
    exercise the sweep and the file protocol). ``reuse_from``: the finished trial folder of the method
    this one trains like, whose saved adapter replaces training (:mod:`lrvd_bench.posthoc_reuse`).
    With ``train.checkpoint_every`` > 0 training writes a resumable checkpoint to ``trial_dir/checkpoint``
    (``on_checkpoint(folder, step)`` follows each) and continues from one found there; it is removed
    once the result is written.
    """
    spec = spec if isinstance(spec, TrialSpec) else TrialSpec.from_dict(spec)
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_FILE, ERROR_FILE, "error.txt"):
        (trial_dir / stale).unlink(missing_ok=True)
    atomic_write(trial_dir / "spec.json", json.dumps(spec.to_dict(), indent=2))
    started = time.time()
    try:
        if body is not None:
            row = {**identity(spec), **body(spec, trial_dir, progress, report)}
        else:
            row = {**identity(spec), **_run(spec, trial_dir, progress, report, reuse_from, on_checkpoint)}
    except (KeyboardInterrupt, SystemExit):
        raise  # interrupted, not failed: the folder stays unfinished and --resume runs it again
    except BaseException as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        error = {
            **identity(spec),
            "status": "failed",
            "error": f"{type(err).__name__}: {message}"[:500],
            # LRVDError: bad input met inside the trial (a NaN loss, an unreachable hub, …)
            "user_error": isinstance(err, LRVDError),
            "wall_time_s": time.time() - started,
            **node_info(),
        }
        (trial_dir / "error.txt").write_text(traceback.format_exc())
        write_row(trial_dir / ERROR_FILE, error)
        raise
    write_row(trial_dir / RESULT_FILE, row)
    shutil.rmtree(trial_dir / CHECKPOINT_DIR, ignore_errors=True)
    return row


def _selection_row(
    spec: TrialSpec,
    method: Any,
    model: Any,
    data: Any,
    fitted: Any,
    posthoc_time: float,
    device: Any,
    phase: Callable[[str], None],
) -> dict[str, Any]:
    """A selection-stage trial's row: the method's predictive scored on the validation split only
    (``val_accuracy``, ``val_nll``, ``val_ece``, ``val_brier``); it has no evaluation metrics."""
    from lrvd.metrics import classification_metrics
    from lrvd.training import predict

    if data.val_loader is None:
        raise LRVDError("a selection trial needs the validation split: set validation_fraction > 0")
    phase("predict (validation split)")
    probs, labels = predict(
        method, model, data.val_loader, n_samples=spec.n_samples, device=device, progress=False, seed=spec.seed
    )
    metrics = classification_metrics(probs, labels)
    phase("done")
    return {
        **identity(spec),
        "status": "ok",
        "error": "",
        **{f"val_{k}": metrics[k] for k in ("accuracy", "nll", "ece", "brier")},
        "final_train_loss": fitted.final_loss,
        "steps": fitted.steps,
        "train_time_s": fitted.wall_time_s,
        "time_per_step_s": fitted.time_per_step_s,
        "resumed_from_step": fitted.resumed_from,
        "posthoc_time_s": posthoc_time,
        "n_train": data.n_train,
        "n_val": data.n_val,
        "n_eval": 0,
        "device": str(device),
        **node_info(),
    }


def _run(
    spec: TrialSpec,
    trial_dir: Path,
    progress: bool,
    report: Reporter | None = None,
    reuse_from: str | Path | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
) -> dict[str, Any]:
    import torch

    from lrvd.metrics import classification_metrics
    from lrvd.registry import get_method
    from lrvd.training import fit, predict_with_samples, resolve_device, seed_everything
    from lrvd_bench.evaluation import other_eval_tasks, predictive_kind, score_task
    from lrvd_bench.memory import peak_memory_mb, reset_peak_memory
    from lrvd_bench.predictions import write_predictions
    from lrvd_bench.trial_inputs import trial_inputs

    log = (trial_dir / "log.txt").open("w")
    clock = time.perf_counter()

    def phase(name: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} +{time.perf_counter() - clock:7.1f}s {name}\n")
        log.flush()

    device = resolve_device(spec.device)
    method = get_method(spec.method)(**spec.method_params)
    # Imported before the memory window opens: module code is not trial memory, and a reused worker
    # process (reuse_actors) would otherwise charge it to its first trial only.
    import pandas  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    reset_peak_memory(device)  # CPU: RSS above this point (lrvd_bench.memory)
    inputs = trial_inputs(
        spec,
        with_eval=spec.stage != "selection",  # selection never loads the evaluation split
        load_in_8bit=spec.load_in_8bit,
        phase=phase,
    )
    backbone, data, plan = inputs.backbone, inputs.data, inputs.plan
    source, source_sha256 = data_fingerprint(inputs.task, spec.data_dir)
    model = None
    try:
        phase(
            f"attach {spec.method} ({data.n_train} train / {data.n_val} validation / {data.n_eval} eval examples, "
            f"{plan.total_steps} steps)"
        )
        seed_everything(spec.seed)
        model = method.attach(backbone.model, inputs.adapter, plan)
        counts = method.parameter_counts(model)
        fitted = None
        if reuse_from is not None:
            from lrvd_bench.posthoc_reuse import base_method, load_trained_adapter, reused_training

            phase(f"load the adapter of {Path(reuse_from).name} (its training is reused)")
            load_trained_adapter(model, Path(reuse_from), base_method(spec.method) or spec.method)
            model.to(device)
            model.train()  # the state fit leaves the model in
            training = reused_training(Path(reuse_from), trial_dir)
        else:
            phase("fit")
            live = LiveTrainLog(
                trial_dir / "train_log.csv",
                plan.total_steps,
                lambda: sum(method.rank_report(model).values()) or None,  # noqa: F821 (del'd after fit)
                report,
            )
            fitted = fit(
                method,
                model,
                data.train_loader,
                plan,
                device=device,
                progress=progress,
                val_loader=data.val_loader,
                on_log=live,
                checkpoint_dir=trial_dir / CHECKPOINT_DIR,
                on_checkpoint=(lambda step: on_checkpoint(trial_dir / CHECKPOINT_DIR, step)) if on_checkpoint else None,
            )
            if fitted.resumed_from is not None:
                phase(f"fit resumed from the checkpoint at step {fitted.resumed_from}")
            training = {
                "final_train_loss": fitted.final_loss,
                "final_train_nll": fitted.final_nll,
                "steps": fitted.steps,
                "best_step": fitted.best_step,  # checkpoint selection (train.eval_every > 0); else empty
                **{f"checkpoint_{k}": v for k, v in fitted.best_scores.items()},
                "train_time_s": fitted.wall_time_s,
                "time_per_step_s": fitted.time_per_step_s,
                "resumed_from_step": fitted.resumed_from,  # train.checkpoint_every: where a restart picked up
            }
        phase("after_training")
        # The same RNG state whether the adapter was trained here or reused (a sampled curvature,
        # e.g. Laplace's ggn-mc, draws from it), so both paths give the same predictions.
        seed_everything(spec.seed)
        posthoc_start = time.perf_counter()
        method.after_training(model, data.train_loader, val_loader=data.val_loader)
        posthoc_time = time.perf_counter() - posthoc_start
        if spec.stage == "selection":
            return _selection_row(spec, method, model, data, fitted, posthoc_time, device, phase)
        phase("predict")
        eval_start = time.perf_counter()
        # Seeded from the trial seed: a reloaded adapter reproduces these predictions (lrvd_bench.reload).
        probs, labels, samples = predict_with_samples(
            method, model, data.eval_loader, n_samples=spec.n_samples, device=device, progress=progress, seed=spec.seed
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        eval_time = time.perf_counter() - eval_start
        n_evaluated = evaluated_n_samples(method, spec.n_samples)
        evaluations = {}
        for name in other_eval_tasks(spec):  # the same adapter and posterior on other tasks (no refitting)
            phase(f"predict {name}")
            evaluations[name] = score_task(method, model, backbone, spec, name, n_evaluated, device, trial_dir)
        metrics = classification_metrics(probs, labels)
        ranks = {k: int(v) for k, v in method.rank_report(model).items()}
        learned, uniform_loss, majority = learned_flag(training["final_train_nll"], probs, labels, metrics["accuracy"])
        phase("write files")
        if fitted is not None:  # a reused adapter's training record was copied with it
            write_ranks_csv(fitted.rank_history, trial_dir / "ranks.csv")
            write_train_log_csv(fitted.loss_history, fitted.step_logs, trial_dir / "train_log.csv")
        if method.per_rank_log_alpha:  # BayesLoRA: per-rank log α at every rank_report
            write_log_alpha_csv(method.log_alpha_history, trial_dir / "log_alpha.csv")
        if spec.save_predictions:
            write_predictions(trial_dir, spec.task, spec.task, probs, labels, data.eval_ids, samples)
        if spec.save_adapter:
            from lrvd.adapter_io import record_evaluation

            method.save_adapter(model, trial_dir / "adapter")
            record_evaluation(
                trial_dir / "adapter",
                n_samples=n_evaluated,
                seed=spec.seed,
                eval_batch_size=spec.eval_batch_size,
                device=str(device),
            )
        row = {
            **identity(spec),
            "status": "ok",
            "error": "",
            **metrics,
            "learned": learned,
            "uniform_loss": uniform_loss,
            "majority_accuracy": majority,
            "effective_rank": sum(ranks.values()) if ranks else None,
            "rank_per_module": ranks,
            "trainable_params": int(counts.get("trainable", 0)),
            "variational_params": int(counts.get("variational", 0)),
            **training,
            "posthoc_time_s": posthoc_time,
            "eval_time_s": eval_time,
            "peak_memory_mb": peak_memory_mb(device),
            "n_train": data.n_train,
            "n_val": data.n_val,
            "n_eval": data.n_eval,
            "split_note": data.split_note,
            "data_source": source,
            "data_sha256": source_sha256,
            "n_samples": spec.n_samples,
            "predictive": predictive_kind(method, n_evaluated, samples),
            "eval_tasks": list(evaluations),
            "evaluations": evaluations,
            "device": str(device),
            "device_name": device_name(device),
            **node_info(),
            "versions": package_versions(),
            "suite_commit": suite_commit(),
        }
        phase("done")
        return row
    finally:
        log.close()
        del model, method, backbone, data
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
