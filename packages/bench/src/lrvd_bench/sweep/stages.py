"""The sweep's stages: expand the config, run the selection stage (with a ``selection:`` block) then
the final stage (its training stage, then the post-hoc stage of the trials that reuse a LoRA trial's
adapter: :mod:`lrvd_bench.stage_plan`), each as one Ray Tune experiment over the trials still
pending, then finalise.

``run_sweep`` starts a run directory, ``resume_sweep`` continues one; both then run
the same stages.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

from lrvd_bench import selection
from lrvd_bench.config import ExperimentConfig, TrialSpec
from lrvd_bench.ensembles import ENSEMBLES_FILE
from lrvd_bench.errors import BenchError
from lrvd_bench.posthoc_reuse import write_plan as write_posthoc_plan
from lrvd_bench.run_record import finish_record, start_record
from lrvd_bench.stage_plan import plan_final
from lrvd_bench.sweep.checks import absolute_paths, check_free_space, check_output_dir, preflight, run_dir_of
from lrvd_bench.sweep.cluster import check_resources, init_ray, ray_log_to_file, resolve_gpus
from lrvd_bench.sweep.finalize import SweepOutcome, finish
from lrvd_bench.sweep.lock import hold_run_dir
from lrvd_bench.sweep.progress import ProgressLines
from lrvd_bench.sweep.resume import SPECS_FILE, load_run_config, pending_specs, write_specs
from lrvd_bench.sweep.signals import StopSignals, sigterm_as_sigint
from lrvd_bench.sweep.trackers import tracker_callbacks
from lrvd_bench.sweep.trainable import TUNE_DIR, TrialFn, make_trainable, trial_name


def run_sweep(
    config: ExperimentConfig,
    *,
    config_path: str | Path | None = None,
    trial_fn: TrialFn | None = None,
    callbacks: list[Any] | None = None,
    check: bool = True,
    stream: Any = None,
    live: bool | None = None,
    command: list[str] | None = None,
) -> SweepOutcome:
    """Expand ``config``, run every trial under Ray Tune, then write trials.csv, leaderboard, figures."""
    run_dir = run_dir_of(config, config_path)
    _refuse_existing(run_dir)
    if check:
        preflight(config, run_dir)
    else:
        check_output_dir(run_dir)
    absolute_paths(config)
    config.output = str(run_dir)
    with hold_run_dir(run_dir), sigterm_as_sigint() as stop:
        _refuse_existing(run_dir)  # again under the lock: another driver may have started meanwhile
        return _sweep(
            run_dir,
            config,
            trial_fn=trial_fn,
            callbacks=callbacks,
            stream=stream,
            live=live,
            fresh=True,
            command=command,
            stop=stop,
        )


def _refuse_existing(run_dir: Path) -> None:
    if (run_dir / "config.yaml").exists() or (run_dir / TUNE_DIR).exists():
        raise BenchError(
            f"run directory {run_dir} already holds a sweep; continue it with --resume {run_dir} "
            "or choose another --output"
        )


def resume_sweep(
    run_dir: str | Path,
    *,
    trial_fn: TrialFn | None = None,
    callbacks: list[Any] | None = None,
    retry_failed: bool = False,
    address: str | None = None,
    stream: Any = None,
    live: bool | None = None,
    command: list[str] | None = None,
) -> SweepOutcome:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones run again."""
    run_dir = Path(run_dir).expanduser().resolve()
    config = load_run_config(run_dir)
    if not (run_dir / SPECS_FILE).is_file():
        raise BenchError(f"nothing to resume in {run_dir}: no specs.json (the sweep never started)")
    check_free_space(run_dir)
    if address:
        config.address = address
    with hold_run_dir(run_dir), sigterm_as_sigint() as stop:
        return _sweep(
            run_dir,
            config,
            trial_fn=trial_fn,
            callbacks=callbacks,
            stream=stream,
            live=live,
            fresh=False,
            retry_failed=retry_failed,
            command=command,
            stop=stop,
        )


def _sweep(
    run_dir: Path,
    config: ExperimentConfig,
    *,
    trial_fn: TrialFn | None,
    callbacks: list[Any] | None,
    stream: Any,
    live: bool | None,
    fresh: bool,
    retry_failed: bool = False,
    command: list[str] | None = None,
    stop: StopSignals | None = None,
) -> SweepOutcome:
    """Both entry points: Ray up, resources checked, then the pending trials, then the tables."""
    out = stream or sys.stderr
    started = init_ray(config)
    try:
        gpus = resolve_gpus(config)
        check_resources(config, gpus)
        trackers = tracker_callbacks(config, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            (run_dir / "config.yaml").write_text(config.to_yaml())
        record = start_record(run_dir, fresh, command)
        run = functools.partial(
            _run_stage, run_dir, config, gpus, trial_fn, [*trackers, *(callbacks or [])], stream, live, retry_failed
        )
        selection_specs: list[TrialSpec] = []
        interrupted = False
        if config.selection:
            selection_specs = selection.selection_specs(config)
            write_specs(run_dir, selection_specs)
            interrupted = run(selection_specs, "selection stage: ")
            if not interrupted:
                chosen = selection.choose(run_dir, config, selection_specs)
                selection.write_choice(run_dir, chosen)
                for line in selection.summary_lines(chosen):
                    print(f"bench: {line}", file=out, flush=True)
                specs = selection.final_specs(config, chosen)
        else:
            specs = config.expand()
        if not interrupted:
            plan = plan_final(config, specs)
            write_specs(run_dir, selection_specs + plan.specs)
            (run_dir / ENSEMBLES_FILE).write_text(json.dumps(plan.ensembles, indent=1))
            write_posthoc_plan(run_dir, plan.posthoc)
            stages = plan.stages
            for name, stage_specs in stages:
                parts = ["final stage"] if config.selection else []
                parts += [f"{name} stage"] if len(stages) > 1 else []
                label = ", ".join(parts) + ": " if parts else ""
                note = ""
                if name == "training" and plan.ensembles:
                    note += f", {len(plan.ensembles)} ensembles from lora trials"
                if name == "post-hoc":
                    note += ", each on its lora trial's adapter"
                interrupted = run(stage_specs, label, note)
                if interrupted:
                    break
        outcome = finish(run_dir, interrupted, stream, stop)
        finish_record(record, outcome)
        return outcome
    finally:
        if started:
            import ray

            ray.shutdown()


def _run_stage(
    run_dir: Path,
    config: ExperimentConfig,
    gpus: float,
    trial_fn: TrialFn | None,
    callbacks: list[Any],
    stream: Any,
    live: bool | None,
    retry_failed: bool,
    specs: list[TrialSpec],
    label: str,
    note: str = "",
) -> bool:
    """Run what is pending of ``specs``; True when the sweep was stopped with trials left."""
    random_keys = sorted(config.random_space())
    pending = pending_specs(run_dir, specs, random_keys, config.num_samples, retry_failed)
    methods = sorted({s.method for s in specs})
    seeds = sorted({s.seed for s in specs})
    print(
        f"bench: {label}{len(pending)} of {len(specs) * config.num_samples} trials to run "
        f"({len(methods)} methods × {len(config.tasks)} tasks × {len(seeds)} seeds"
        f"{' × search space' if config.search_space or label.startswith('selection') else ''}){note} → {run_dir}",
        file=stream or sys.stderr,
        flush=True,
    )
    if pending:
        _run_tuner(run_dir, config, pending, gpus, trial_fn, callbacks, stream, live)
    # Tuner.fit returns with trials left only when the sweep was stopped (Ctrl+C, SIGTERM, SIGUSR1)
    return bool(pending_specs(run_dir, specs, random_keys, config.num_samples, retry_failed))


def _run_tuner(
    run_dir: Path,
    config: ExperimentConfig,
    pending: list[TrialSpec],
    gpus: float,
    trial_fn: TrialFn | None,
    callbacks: list[Any],
    stream: Any,
    live: bool | None,
) -> bool:
    """One Ray Tune experiment over ``pending`` (a spec once per sample to draw); True if stopped early."""
    from ray import tune

    trainable = tune.with_resources(
        make_trainable(run_dir, trial_fn, max(1, int(config.cpus_per_trial))),
        {"cpu": config.cpus_per_trial, "gpu": gpus},
    )
    param_space: dict[str, Any] = {"spec": tune.grid_search([s.to_dict() for s in pending])}
    if config.random_space():
        param_space["space"] = _tune_space(config.random_space())
    # The scheduler metric appears only in the reports that carry a validation: ASHA skips the others.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # The legacy output engine honours verbose=0 (the new one still prints its banner): our
    # ProgressLines callback is the progress display.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=config.max_concurrent_trials,
            scheduler=make_scheduler(config),
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            # reuse: successive trials skip the ~8 s of torch/transformers imports; each trial
            # still resets its own peak-memory window (lrvd_bench.memory) and frees its model.
            reuse_actors=config.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(run_dir),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            # train.checkpoint_every: Ray keeps each trial's latest training checkpoint only
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[ProgressLines(len(pending), stream, run_dir, live=live), *callbacks],
            verbose=0,
        ),
    )
    with ray_log_to_file(run_dir / "ray.log"):
        results = tuner.fit()
    return any(r.error is None and not r.metrics for r in results)


def make_scheduler(config: ExperimentConfig) -> Any:
    """``asha``: stop trials whose validation metric trails at a rung (time = training step)."""
    if config.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    metric, mode = asha_metric(config)
    grace = max(1, int(getattr(config.train, "eval_every", None) or config.train.log_every))
    return ASHAScheduler(
        time_attr="step", metric=metric, mode=mode, grace_period=grace, max_t=max(grace, 10**9), stop_last_trials=False
    )


def asha_metric(config: ExperimentConfig) -> tuple[str, str]:
    """The validation metric ASHA ranks by: the selection metric when set, else ``val_nll``."""
    block = getattr(config, "selection", None) or {}
    metric = block.get("metric", "val_nll") if isinstance(block, dict) else "val_nll"
    return metric, "max" if metric.endswith("accuracy") else "min"


def _tune_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, sampler in space.items():
        ((kind, args),) = sampler.items()
        fn = getattr(tune, kind)
        out[key] = fn(args) if kind == "choice" else fn(*args) if isinstance(args, list) else fn(args)
    return out
