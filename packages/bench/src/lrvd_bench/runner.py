"""The sweep: every :class:`~lrvd_bench.config.TrialSpec` as one Ray Tune trial.

Scheduling lives here and only here; a trial is the plain function :func:`lrvd_bench.trial.run_trial`.

Run directory (``--output runs/NAME``)::

    config.yaml      the validated ExperimentConfig
    specs.json       the expanded TrialSpecs (before random search-space sampling)
    trials/<id>/     one folder per trial, written by run_trial (result.json last, atomically)
    tune/            Ray Tune's experiment state (what ``--resume`` restores) and per-trial Ray logs
    trials.csv       every trial, one row per seed, failed ones with status + error
    leaderboard.csv, leaderboard.md, figures/

Ray: a local instance (``ray.init(num_cpus=..., include_dashboard=False)``) unless ``address`` names
a cluster; results are persisted as each trial finishes; a failing trial is recorded and the others
go on (``max_failures=0``); Ctrl+C stops the sweep with its state saved. ``--resume runs/NAME``
restores with ``Tuner.restore(resume_unfinished=True)``, so only unfinished trials run again.

On a multi-node cluster the run directory must be on a filesystem every node mounts (NFS, …):
trials write their folders directly, and Ray Tune keeps its state there too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Under `uv run`, Ray by default copies the working directory and rebuilds the driver's uv
# environment for its workers (slow, and it needs the package index). Trials here run in the
# driver's own venv; on a multi-node cluster install the same locked environment on every node
# (README), or set RAY_ENABLE_UV_RUN_RUNTIME_ENV=1 to let Ray replicate it. Ray reads this when it
# is first imported, so it is set here, before any `import ray` of this package.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from ray.tune import Callback

from lrvd_bench.config import ExperimentConfig, TrialSpec, config_from_dict, read_yaml
from lrvd_bench.errors import BenchError
from lrvd_bench.leaderboard import gather_rows, rows_frame, write_leaderboard

TrialFn = Callable[[TrialSpec, Path], dict[str, Any]]
TUNE_DIR = "tune"

@dataclass
class SweepOutcome:
    """What ``bench run`` prints at the end and turns into an exit code."""

    run_dir: Path
    n_trials: int
    n_ok: int
    n_failed: int
    n_unfinished: int
    interrupted: bool

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.n_failed == 0 and self.n_unfinished == 0 else 1


# -- the trainable -------------------------------------------------------------------------------
def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def make_trainable(run_dir: Path, trial_fn: TrialFn | None, threads: int) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable running one spec; ``trial_fn`` defaults to ``run_trial``."""
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
        spec = TrialSpec.from_dict(config["spec"])
        if config.get("space"):
            spec = spec.with_overrides(config["space"])
        fn = trial_fn
        if fn is None:
            from lrvd_bench.trial import run_trial as fn
        trial_dir = run_dir / "trials" / spec.trial_id
        trial_dir.mkdir(parents=True, exist_ok=True)
        # The trial's Python-level output (warnings, loading reports) goes to its own log file
        # rather than interleaving on the driver's console.
        with open(trial_dir / "output.log", "a", buffering=1) as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            row = fn(spec, trial_dir)
        tune.report({k: v for k, v in row.items() if _scalar(v)})

    return trainable


def trial_name(trial: Any) -> str:
    """Ray trial names and folders: ``<method>-<task>-s<seed>_<ray id>`` (the ray id keeps samples apart)."""
    spec = trial.config.get("spec", {})
    return f"{spec.get('method', 'trial')}-{spec.get('task', '')}-s{spec.get('seed', '')}_{trial.trial_id}"


def _tune_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, sampler in space.items():
        (kind, args), = sampler.items()
        fn = getattr(tune, kind)
        out[key] = fn(args) if kind == "choice" else fn(*args) if isinstance(args, list) else fn(args)
    return out


class ProgressLines(Callback):
    """Prints one line per finished trial: ``[3/12  95s] ok  lora arc-e seed 0  accuracy 0.43 ...``."""

    def __init__(self, total: int, stream: Any = None, run_dir: Path | None = None) -> None:
        self.total = total
        self.run_dir = run_dir
        self.stream = stream
        self.done = 0
        self.start = time.time()

    def _line(self, trial: Any, status: str, extra: str) -> None:
        self.done += 1
        spec = trial.config.get("spec", {})
        elapsed = time.time() - self.start
        print(f"[{self.done}/{self.total} {elapsed:5.0f}s] {status:6s} {spec.get('method')} {spec.get('task')} "
              f"seed {spec.get('seed')}  {extra}", file=self.stream or sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        extra = "  ".join(f"{k} {r[k]:.4f}" for k in ("accuracy", "ece", "nll") if isinstance(r.get(k), float))
        if isinstance(r.get("train_time_s"), float):
            extra += f"  train {r['train_time_s']:.0f}s"
        if r.get("learned") is False:
            extra += "  (not learned)"
        self._line(trial, "ok", extra)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        where = trial.local_path or ""
        try:
            spec = TrialSpec.from_dict(trial.config["spec"])
            spec = spec.with_overrides(trial.config["space"]) if trial.config.get("space") else spec
            if self.run_dir is not None:
                where = str(self.run_dir / "trials" / spec.trial_id / "error.txt")
        except Exception:  # the progress line must never break the sweep
            pass
        self._line(trial, "FAILED", f"see {where}")


# -- Ray -----------------------------------------------------------------------------------------
def init_ray(config: ExperimentConfig) -> bool:
    """Start local Ray or connect to ``config.address``; True when this call started/connected Ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    try:
        if config.address:
            ray.init(address=config.address, log_to_driver=True)
        else:
            # address="local": always a fresh instance, even when a `ray start` cluster (or
            # RAY_ADDRESS) exists on this machine; joining one is what --address is for.
            ray.init(address="local", num_cpus=config.num_cpus or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError) as err:
        where = config.address or "a local Ray instance"
        raise BenchError(f"cannot start or reach {where}: {str(err).strip().splitlines()[0]}") from None
    return True


def resolve_gpus(config: ExperimentConfig) -> float:
    """``gpus_per_trial``: as given, else 1 when the cluster has GPUs and 0 otherwise."""
    import ray

    if config.gpus_per_trial is not None:
        return float(config.gpus_per_trial)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _absolute_paths(config: ExperimentConfig) -> None:
    """Trials run in their own working directory (and maybe on another node): make paths absolute."""
    if config.data_dir:
        config.data_dir = str(Path(config.data_dir).expanduser().resolve())
    model = Path(config.model).expanduser()
    if model.exists():
        config.model = str(model.resolve())


def check_methods(config: ExperimentConfig) -> None:
    """Build each method once in the driver so a bad hyper-parameter fails before any trial starts."""
    from lrvd.registry import get_method

    for name in config.methods:
        try:
            cls = get_method(name)
        except ImportError as err:  # a registered entry point whose module is missing or broken
            raise BenchError(f"method {name!r} is registered but cannot be imported: "
                             f"{type(err).__name__}: {err}") from None
        cls(**config.method_params.get(name, {}))


def default_run_dir(config_path: str | Path | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


#: ensemble trials built from the sweep's own LoRA trials (lrvd_bench.ensembles)
ENSEMBLES_FILE = "ensembles.json"


# -- run / resume --------------------------------------------------------------------------------
def run_sweep(
    config: ExperimentConfig,
    *,
    config_path: str | Path | None = None,
    trial_fn: TrialFn | None = None,
    callbacks: list[Any] | None = None,
    check: bool = True,
    stream: Any = None,
) -> SweepOutcome:
    """Expand ``config``, run every trial under Ray Tune, then write trials.csv, leaderboard, figures."""
    run_dir = Path(config.output) if config.output else default_run_dir(config_path)
    run_dir = run_dir.expanduser().resolve()
    if (run_dir / TUNE_DIR).exists():
        raise BenchError(f"run directory {run_dir} already holds a sweep; continue it with --resume {run_dir} "
                         "or choose another --output")
    _absolute_paths(config)
    if check:
        check_methods(config)
    from lrvd_bench.ensembles import plan_reuse

    specs, reused = config.expand(), {}
    if not config.random_space():  # sampled points differ per trial: no two trials share a config
        specs, reused = plan_reuse(specs)
    ray_specs = [s for s in specs if s.trial_id not in reused]
    config.output = str(run_dir)

    from ray import tune

    started = init_ray(config)
    try:
        gpus = resolve_gpus(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config.to_yaml())
        (run_dir / "specs.json").write_text(json.dumps([s.to_dict() for s in specs], indent=1))
        (run_dir / ENSEMBLES_FILE).write_text(json.dumps(reused, indent=1))
        trainable = tune.with_resources(
            make_trainable(run_dir, trial_fn, max(1, int(config.cpus_per_trial))),
            {"cpu": config.cpus_per_trial, "gpu": gpus},
        )
        param_space: dict[str, Any] = {"spec": tune.grid_search([s.to_dict() for s in ray_specs])}
        if config.random_space():
            param_space["space"] = _tune_space(config.random_space())
        scheduler = None
        if config.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(metric="accuracy", mode="max")
        n_total = len(ray_specs) * config.num_samples
        print(f"bench: {n_total} trials ({len(config.methods)} methods × {len(config.tasks)} tasks × "
              f"{len(config.seeds)} seeds{' × search space' if config.search_space else ''})"
              f"{f', {len(reused)} ensembles from lora trials' if reused else ''} → {run_dir}",
              file=stream or sys.stderr, flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=config.num_samples, max_concurrent_trials=config.max_concurrent_trials,
                scheduler=scheduler, trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                # reuse: successive trials skip the ~8 s of torch/transformers imports; each trial
                # still resets its own peak-memory window (lrvd_bench.memory) and frees its model.
                reuse_actors=config.reuse_actors,
            ),
            run_config=_run_config(run_dir, n_total, callbacks, stream),
        )
        results = tuner.fit()
        return _finish(run_dir, results, stream)
    finally:
        if started:
            import ray

            ray.shutdown()


def resume_sweep(
    run_dir: str | Path,
    *,
    trial_fn: TrialFn | None = None,
    callbacks: list[Any] | None = None,
    retry_failed: bool = False,
    address: str | None = None,
    stream: Any = None,
) -> SweepOutcome:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones run again."""
    from ray import tune

    run_dir = Path(run_dir).expanduser().resolve()
    config = load_run_config(run_dir)
    if address:
        config.address = address
    tune_path = run_dir / TUNE_DIR
    if not tune.Tuner.can_restore(str(tune_path)):
        raise BenchError(f"nothing to resume in {run_dir}: no Ray Tune state under {tune_path}")
    reused_file = run_dir / ENSEMBLES_FILE
    n_reused = len(json.loads(reused_file.read_text())) if reused_file.is_file() else 0
    n_total = (len(json.loads((run_dir / "specs.json").read_text())) - n_reused) * config.num_samples
    started = init_ray(config)
    try:
        gpus = resolve_gpus(config)
        trainable = tune.with_resources(
            make_trainable(run_dir, trial_fn, max(1, int(config.cpus_per_trial))),
            {"cpu": config.cpus_per_trial, "gpu": gpus},
        )
        print(f"bench: resuming {run_dir}", file=stream or sys.stderr, flush=True)
        tuner = tune.Tuner.restore(
            str(tune_path), trainable=trainable, resume_unfinished=True, resume_errored=False,
            restart_errored=retry_failed,
        )
        # Restore unpickles the old run's callbacks (stale counters, test hooks): install fresh ones.
        tuner._local_tuner.get_run_config().callbacks = _run_config(run_dir, n_total, callbacks, stream).callbacks
        results = tuner.fit()
        return _finish(run_dir, results, stream)
    finally:
        if started:
            import ray

            ray.shutdown()


def _run_config(run_dir: Path, n_total: int, callbacks: list[Any] | None, stream: Any) -> Any:
    from ray import tune

    # The legacy output engine honours verbose=0 (the new one still prints its banner): our
    # ProgressLines callback is the progress display.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(run_dir),
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        callbacks=[ProgressLines(n_total, stream, run_dir), *(callbacks or [])],
        verbose=0,
    )


def _finish(run_dir: Path, results: Any, stream: Any) -> SweepOutcome:
    rows = finalize(run_dir)
    n_unfinished = sum(r.get("status") not in ("ok", "failed") for r in rows)
    # Tuner.fit only returns with trials left over when the sweep was stopped (Ctrl+C, SIGUSR1).
    interrupted = n_unfinished > 0 or any(r.error is None and not r.metrics for r in results)
    outcome = SweepOutcome(run_dir, len(rows), sum(r.get("status") == "ok" for r in rows),
                           sum(r.get("status") == "failed" for r in rows), n_unfinished, interrupted)
    out = stream or sys.stderr
    for row in rows:
        if row.get("status") == "failed":
            print(f"FAILED {row['trial_id']}: {row.get('error', '')}", file=out)
    print(f"bench: {outcome.n_ok} ok, {outcome.n_failed} failed, {outcome.n_unfinished} unfinished; "
          f"results in {run_dir}", file=out, flush=True)
    if interrupted:
        print(f"bench: interrupted; continue with: bench run --resume {run_dir}", file=out, flush=True)
    return outcome


# -- gathering -----------------------------------------------------------------------------------
def load_run_config(run_dir: Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise BenchError(f"{run_dir} is not a bench run directory (no config.yaml)")
    return config_from_dict(read_yaml(path), str(path))


def finalize(run_dir: str | Path) -> list[dict[str, Any]]:
    """Write trials.csv, the leaderboard (CSV + Markdown) and the figures from the trial folders."""
    run_dir = Path(run_dir)
    reused_file = run_dir / ENSEMBLES_FILE
    if reused_file.is_file() and (run_dir / "specs.json").is_file():
        from lrvd_bench.config import TrialSpec
        from lrvd_bench.ensembles import materialize

        specs = [TrialSpec.from_dict(d) for d in json.loads((run_dir / "specs.json").read_text())]
        materialize(run_dir, specs, json.loads(reused_file.read_text()))
    rows = gather_rows(run_dir)
    tmp = run_dir / "trials.csv.tmp"
    rows_frame(rows).to_csv(tmp, index=False)
    os.replace(tmp, run_dir / "trials.csv")
    write_leaderboard(rows, run_dir)
    try:
        from lrvd_bench.plots import make_figures

        make_figures(run_dir, rows)
    except Exception as err:  # figures are a convenience: never lose the tables over a plot
        print(f"bench: figures skipped ({type(err).__name__}: {err})", file=sys.stderr)
    return rows
