"""The sweep: every :class:`~lrvd_bench.config.TrialSpec` as one Ray Tune trial.

Scheduling lives here and only here; a trial is the plain function :func:`lrvd_bench.trial.run_trial`.

Run directory (``--output runs/NAME``)::

    config.yaml      the validated ExperimentConfig
    run.json         the run record: git commit, command line, times, host, library versions
    specs.json       the expanded TrialSpecs (before random search-space sampling)
    trials/<id>/     one folder per trial, written by run_trial (result.json last, atomically)
    tune/            Ray Tune's per-trial curves (CSV, TensorBoard: ``tensorboard --logdir runs/NAME/tune``)
    ray.log          Ray's own log lines (tracebacks of failed trials included); the console gets one line each
    trials.csv       every trial, one row per seed, failed ones with status + error
    leaderboard.csv, leaderboard.md, figures/

Ray: a local instance (``ray.init(num_cpus=..., include_dashboard=False)``) unless ``address`` names
a cluster. A request no node can serve (``cpus_per_trial``/``gpus_per_trial`` above the largest
node, ``device: cuda`` without GPUs) is refused before any trial starts. A failing trial is recorded
and the others go on (``max_failures=0``); Ctrl+C stops the sweep after saving what finished.

Resume (``--resume runs/NAME``) reads the trial folders, not Ray's experiment state (which is
checkpointed periodically and can lag behind a trial that just finished): a folder whose
``result.json`` carries the spec's ``config_hash`` is finished and never runs again, failed ones only
with ``--retry-failed``; everything else runs in a fresh Ray Tune experiment. The trainable also
returns a stored row at once, so not even a duplicate can re-run a finished trial.

On a multi-node cluster the run directory must be on a filesystem every node mounts (NFS, …):
trials write their folders directly, and Ray Tune keeps its state there too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
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
from lrvd_bench.preflight import check_inputs, check_output_dir, run_dir_of

#: ``trial_fn(spec, trial_dir, report=callable)`` -> result row; defaults to ``run_trial``.
TrialFn = Callable[..., dict[str, Any]]
TUNE_DIR = "tune"
#: written by the driver into the folder of a trial the scheduler (ASHA) stopped early
STOPPED_FILE = "stopped.json"


@dataclass
class SweepOutcome:
    """What ``bench run`` prints at the end and turns into an exit code."""

    run_dir: Path
    n_trials: int
    n_ok: int
    n_failed: int
    n_unfinished: int
    interrupted: bool
    n_stopped: int = 0
    board: Any = None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.n_failed == 0 and self.n_unfinished == 0 else 1


# -- which trials are finished -------------------------------------------------------------------
def finished_row(trial_dir: Path, spec: TrialSpec) -> dict[str, Any] | None:
    """The stored result of ``spec`` when ``trial_dir/result.json`` exists and carries its hash."""
    path = Path(trial_dir) / "result.json"
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return row if row.get("config_hash") == spec.config_hash else None


def trial_status(trial_dir: Path, spec: TrialSpec) -> str | None:
    """``ok`` / ``failed`` / ``stopped`` for a trial that ended, ``None`` for one to (re-)run."""
    if finished_row(trial_dir, spec) is not None:
        return "ok"
    for name, status in ((STOPPED_FILE, "stopped"), ("error.json", "failed")):
        try:
            if json.loads((Path(trial_dir) / name).read_text()).get("config_hash") == spec.config_hash:
                return status
        except (OSError, ValueError):
            continue
    return None


def pending_specs(
    run_dir: Path, specs: list[TrialSpec], random_keys: list[str], num_samples: int, retry_failed: bool = False
) -> list[TrialSpec]:
    """The specs still to run, a spec listed once per missing sample.

    Without random search a spec is done when its own folder ended. With random search (trial ids
    known only once sampled) a finished folder counts for the spec that, given the folder's sampled
    values, hashes to that folder.
    """
    done = {"ok", "stopped"} if retry_failed else {"ok", "stopped", "failed"}
    trials = Path(run_dir) / "trials"
    if not random_keys:
        return [s for s in specs for _ in range(num_samples) if trial_status(trials / s.trial_id, s) not in done]
    counts = {s.trial_id: 0 for s in specs}
    for spec_file in sorted(trials.glob("*/spec.json")):
        try:
            ran = TrialSpec.from_dict(json.loads(spec_file.read_text()))
        except (OSError, ValueError, BenchError):
            continue
        if trial_status(spec_file.parent, ran) not in done:
            continue
        sampled = {k: ran.search_point[k] for k in random_keys if k in ran.search_point}
        for spec in specs:
            if len(sampled) == len(random_keys) and spec.with_overrides(sampled).trial_id == ran.trial_id:
                counts[spec.trial_id] += 1
                break
    return [s for s in specs for _ in range(max(0, num_samples - counts[s.trial_id]))]


# -- the trainable -------------------------------------------------------------------------------
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

        def report(record: dict[str, Any]) -> None:
            tune.report(_scalars(record))

        # The trial's Python-level output (warnings, loading reports) goes to its own log file
        # rather than interleaving on the driver's console.
        with (
            open(trial_dir / "output.log", "a", buffering=1) as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            row = fn(spec, trial_dir, report=report)
        tune.report({**_scalars(row), "trial_done": True})

    return trainable


def trial_name(trial: Any) -> str:
    """Ray trial names and folders: ``<method>-<task>-s<seed>_<ray id>`` (the ray id keeps samples apart)."""
    spec = trial.config.get("spec", {})
    return f"{spec.get('method', 'trial')}-{spec.get('task', '')}-s{spec.get('seed', '')}_{trial.trial_id}"


def _tune_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, sampler in space.items():
        ((kind, args),) = sampler.items()
        fn = getattr(tune, kind)
        out[key] = fn(args) if kind == "choice" else fn(*args) if isinstance(args, list) else fn(args)
    return out


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
        if seconds >= 60
        else f"{seconds}s"
    )


class ProgressLines(Callback):
    """The console during a sweep.

    A live status line per running trial (``method task seed  step 40/100  loss 1.21  ETA 1m05s``),
    redrawn in place on a terminal (printed at most every ``every_s`` seconds per trial otherwise),
    then one permanent line per trial that ends: ``[3/12  95s] ok  lora arc-e seed 0  accuracy …``
    or ``FAILED … : <first line of the error> (traceback: trials/<id>/error.txt)``. The driver also
    records trials that did not write their own file: ``stopped.json`` for a trial the scheduler
    stopped, ``error.json`` for one whose worker died.
    """

    def __init__(
        self,
        total: int,
        stream: Any = None,
        run_dir: Path | None = None,
        *,
        live: bool | None = None,
        every_s: float = 30.0,
    ) -> None:
        self.total = total
        self.run_dir = run_dir
        self.stream = stream
        self.live = live
        self.every_s = every_s
        self.done = 0
        self.start = time.time()
        self.status: dict[str, str] = {}
        self.first: dict[str, tuple[float, int]] = {}
        self.printed: dict[str, float] = {}
        self.drawn = 0

    # -- output ----------------------------------------------------------------------------------
    @property
    def out(self) -> Any:
        return self.stream or sys.stderr

    def _is_live(self) -> bool:
        if self.live is None:
            isatty = getattr(self.out, "isatty", None)
            self.live = bool(isatty and isatty())
        return self.live

    def _redraw(self, permanent: str | None = None) -> None:
        out = self.out
        if self.drawn:
            out.write(f"\x1b[{self.drawn}F\x1b[J")  # back to the first live line, clear below
        if permanent is not None:
            out.write(permanent + "\n")
        lines = list(self.status.values()) if self._is_live() else []
        for line in lines:
            out.write(line + "\n")
        self.drawn = len(lines)
        out.flush()

    def _line(self, trial: Any, status: str, extra: str) -> None:
        self.done += 1
        self.status.pop(trial.trial_id, None)
        spec = trial.config.get("spec", {})
        elapsed = time.time() - self.start
        self._redraw(
            f"[{self.done}/{self.total} {elapsed:5.0f}s] {status:6s} {spec.get('method')} {spec.get('task')} "
            f"seed {spec.get('seed')}  {extra}"
        )

    def _trial_dir(self, trial: Any) -> Path | None:
        if self.run_dir is None:
            return None
        try:
            return self.run_dir / "trials" / spec_of(trial.config).trial_id
        except Exception:  # the console must never break the sweep
            return None

    # -- Ray Tune hooks ----------------------------------------------------------------------------
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "step" not in result or result.get("trial_done"):
            return
        step, total = int(result["step"]), int(result.get("total_steps") or 0)
        now = time.time()
        t0, step0 = self.first.setdefault(trial.trial_id, (now - float(result.get("step_time_s") or 0) * step, 0))
        eta = (now - t0) / max(1, step - step0) * max(0, total - step)
        spec = trial.config.get("spec", {})
        parts = [f"  … {spec.get('method')} {spec.get('task')} seed {spec.get('seed')}", f"step {step}/{total}"]
        if isinstance(result.get("loss"), (int, float)):
            parts.append(f"loss {result['loss']:.4f}")
        for key in ("val_accuracy", "val_nll"):
            if isinstance(result.get(key), (int, float)):
                parts.append(f"{key} {result[key]:.4f}")
        parts.append(f"ETA {_duration(eta)}")
        self.status[trial.trial_id] = "  ".join(parts)
        if self._is_live():
            self._redraw()
        elif now - self.printed.get(trial.trial_id, 0.0) >= self.every_s:
            self.printed[trial.trial_id] = now
            self._redraw(self.status[trial.trial_id])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        if not r.get("trial_done"):
            self._stopped(trial, r)
            return
        extra = "  ".join(
            f"{k} {r[k]:.4f}"
            for k in ("accuracy", "ece", "nll", "val_accuracy", "val_nll")
            if isinstance(r.get(k), float)
        )
        if isinstance(r.get("train_time_s"), float):
            extra += f"  train {r['train_time_s']:.0f}s"
        if r.get("learned") is False:
            extra += "  (not learned)"
        if r.get("kept"):
            extra += "  (kept from an earlier attempt)"
        self._line(trial, "ok", extra)

    def _stopped(self, trial: Any, result: dict) -> None:
        """A trial that ended without its final report: the scheduler stopped it early."""
        folder = self._trial_dir(trial)
        step = result.get("step")
        metric = "  ".join(
            f"{k} {result[k]:.4f}" for k in ("val_accuracy", "val_nll") if isinstance(result.get(k), float)
        )
        if folder is not None:
            from lrvd_bench.trial import _identity, _jsonable

            spec = spec_of(trial.config)
            folder.mkdir(parents=True, exist_ok=True)
            record = {
                **_identity(spec),
                "status": "stopped",
                "error": f"stopped early by the scheduler at step {step}",
                "steps": step,
                **{k: v for k, v in result.items() if k.startswith("val_")},
            }
            (folder / STOPPED_FILE).write_text(json.dumps(_jsonable(record), indent=2))
        self._line(trial, "stopped", f"early at step {step}  {metric}".rstrip())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        folder = self._trial_dir(trial)
        message, where = "", ""
        if folder is not None:
            error_json = folder / "error.json"
            try:
                message = json.loads(error_json.read_text()).get("error", "")
                where = str(folder / "error.txt")
            except (OSError, ValueError):  # the worker died before run_trial could write its files
                ray_error = Path(self.run_dir or "") / TUNE_DIR / trial_name(trial) / "error.txt"
                message = _ray_error_line(ray_error)
                with contextlib.suppress(Exception):
                    from lrvd_bench.trial import _identity

                    record = {**_identity(spec_of(trial.config)), "status": "failed", "error": message}
                    folder.mkdir(parents=True, exist_ok=True)
                    error_json.write_text(json.dumps(record, indent=2))
                where = str(ray_error)
        self._line(trial, "FAILED", f"{message}  (traceback: {where})")


def _ray_error_line(path: Path) -> str:
    """The exception line of the error Ray recorded for a trial whose worker died (its ``error.txt``),
    e.g. ``ray.exceptions.OutOfMemoryError: 1 worker(s) were killed due to the node running low on memory``."""
    import re

    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        lines = []
    found = next((ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln)), None)
    return (found or "the trial's worker process died (see ray.log)")[:200]


# -- Ray -----------------------------------------------------------------------------------------
def init_ray(config: ExperimentConfig) -> bool:
    """Start local Ray or connect to ``config.address``; True when this call started/connected Ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return False
    # log_to_driver=False: trial processes write their own log files; what Ray itself prints goes
    # to ray.log (see ray_log_to_file), never as a traceback on the console.
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        with _quiet_stderr():
            if config.address:
                ray.init(address=config.address, log_to_driver=False, configure_logging=False)
            else:
                # address="local": always a fresh instance, even when a `ray start` cluster (or
                # RAY_ADDRESS) exists on this machine; joining one is what --address is for.
                ray.init(address="local", num_cpus=config.num_cpus or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as err:
        where = config.address or "a local Ray instance"
        raise BenchError(f"cannot start or reach {where}: {str(err).strip().splitlines()[0]}") from None
    return True


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's start-up banner ("Started a local Ray instance") is noise on the bench console."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


@contextlib.contextmanager
def ray_log_to_file(path: Path) -> Iterator[None]:
    """Send the ``ray`` loggers (errored-trial tracebacks, warnings) to ``path`` for the sweep."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("ray", "ray.tune", "ray.train", "ray.air")]
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler] if lg.name == "ray" else []
        lg.propagate = lg.name != "ray"
    try:
        yield
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()


def resolve_gpus(config: ExperimentConfig) -> float:
    """``gpus_per_trial``: as given, else 1 when the cluster has GPUs and 0 otherwise."""
    import ray

    if config.gpus_per_trial is not None:
        return float(config.gpus_per_trial)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def check_resources(config: ExperimentConfig, gpus: float) -> None:
    """Refuse, before any trial, a request no node of the cluster can serve (Ray would wait forever)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    where = "this machine" if not config.address else f"the cluster at {config.address} ({len(nodes)} nodes)"
    for key, asked, flag in (("CPU", float(config.cpus_per_trial), "cpus_per_trial"), ("GPU", gpus, "gpus_per_trial")):
        largest = max((float(n.get(key, 0)) for n in nodes), default=0.0)
        if asked > largest:
            unit = f"{key}s"
            raise BenchError(
                f"{flag} {asked:g} asks for more than {where} has: the largest node has "
                f"{largest:g} {unit} (cluster total {ray.cluster_resources().get(key, 0):g})"
            )
    if config.device.startswith("cuda") and gpus <= 0:
        has = ray.cluster_resources().get("GPU", 0)
        why = "CUDA is not available on " + where if has == 0 else "gpus_per_trial is 0"
        raise BenchError(f"device {config.device!r} requested but {why}; use --device cpu or auto")


def _absolute_paths(config: ExperimentConfig) -> None:
    """Trials run in their own working directory (and maybe on another node): make paths absolute."""
    if config.data_dir:
        config.data_dir = str(Path(config.data_dir).expanduser().resolve())
    model = Path(config.model).expanduser()
    if model.exists():
        config.model = str(model.resolve())


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
            from ray.air.integrations.wandb import WandbLoggerCallback

            # WANDB_MODE is read here and passed on: Ray starts the logging actor with only the API key
            # of the driver's environment, so a cluster's workers would otherwise try to go online.
            mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
            out.append(
                WandbLoggerCallback(
                    project=os.environ.get("WANDB_PROJECT", "lrvd-bench"),
                    group=run_dir.name,
                    log_config=False,
                    dir=str(run_dir),
                    **mode,
                )
            )
    return out


def _need_extra(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise BenchError(f"logger {module!r} needs the optional extra: uv sync --all-packages --extra {module}")


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
    live: bool | None = None,
    command: list[str] | None = None,
) -> SweepOutcome:
    """Expand ``config``, run every trial under Ray Tune, then write trials.csv, leaderboard, figures."""
    run_dir = run_dir_of(config, config_path)
    if (run_dir / "config.yaml").exists() or (run_dir / TUNE_DIR).exists():
        raise BenchError(
            f"run directory {run_dir} already holds a sweep; continue it with --resume {run_dir} "
            "or choose another --output"
        )
    check_output_dir(run_dir)
    _absolute_paths(config)
    if check:  # the config itself, method hyper-parameters included, was validated when it was built
        check_inputs(config)
    config.output = str(run_dir)
    return _sweep(
        run_dir, config, trial_fn=trial_fn, callbacks=callbacks, stream=stream, live=live, fresh=True, command=command
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
    if not (run_dir / "specs.json").is_file():
        raise BenchError(f"nothing to resume in {run_dir}: no specs.json (the sweep never started)")
    if address:
        config.address = address
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
) -> SweepOutcome:
    """Both entry points: Ray up, resources checked, then the pending trials, then the tables."""
    from lrvd_bench.ensembles import plan_reuse
    from lrvd_bench.run_record import finish_record, start_record

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
            from lrvd_bench import selection

            selection_specs = selection.selection_specs(config)
            _write_specs(run_dir, selection_specs)
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
            reused: dict[str, list[str]] = {}
            if not config.random_space():  # sampled points differ per trial: no two trials share a config
                specs, reused = plan_reuse(specs)
            _write_specs(run_dir, selection_specs + specs)
            (run_dir / ENSEMBLES_FILE).write_text(json.dumps(reused, indent=1))
            note = f", {len(reused)} ensembles from lora trials" if reused else ""
            interrupted = run(
                [s for s in specs if s.trial_id not in reused], "final stage: " if config.selection else "", note
            )
        outcome = _finish(run_dir, interrupted, stream)
        finish_record(record, outcome)
        return outcome
    finally:
        if started:
            import ray

            ray.shutdown()


def _write_specs(run_dir: Path, specs: list[TrialSpec]) -> None:
    (run_dir / "specs.json").write_text(json.dumps([s.to_dict() for s in specs], indent=1))


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
    # Tuner.fit returns with trials left only when the sweep was stopped (Ctrl+C, SIGUSR1)
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
    selection = getattr(config, "selection", None) or {}
    metric = selection.get("metric", "val_nll") if isinstance(selection, dict) else "val_nll"
    return metric, "max" if metric.endswith("accuracy") else "min"


def _finish(run_dir: Path, interrupted: bool, stream: Any) -> SweepOutcome:
    rows, board = finalize(run_dir)
    n_unfinished = sum(r.get("status") not in ("ok", "failed", "stopped") for r in rows)
    interrupted = interrupted and n_unfinished > 0
    outcome = SweepOutcome(
        run_dir,
        len(rows),
        sum(r.get("status") == "ok" for r in rows),
        sum(r.get("status") == "failed" for r in rows),
        n_unfinished,
        interrupted,
        n_stopped=sum(r.get("status") == "stopped" for r in rows),
        board=board,
    )
    out = stream or sys.stderr
    stopped = f", {outcome.n_stopped} stopped early" if outcome.n_stopped else ""
    print(
        f"bench: {outcome.n_ok} ok, {outcome.n_failed} failed{stopped}, {outcome.n_unfinished} unfinished; "
        f"results in {run_dir}",
        file=out,
        flush=True,
    )
    if outcome.n_failed:
        print(
            f"bench: failed trials are listed in {run_dir / 'trials.csv'} (column error); rerun them with "
            f"bench run --resume {run_dir} --retry-failed",
            file=out,
            flush=True,
        )
    if interrupted:
        print(f"bench: interrupted; continue with: bench run --resume {run_dir}", file=out, flush=True)
    return outcome


# -- gathering -----------------------------------------------------------------------------------
def mark_stages(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row its ``stage`` (rows of trials that never ran get it from specs.json)."""
    specs_file = Path(run_dir) / "specs.json"
    selection_ids = (
        {TrialSpec.from_dict(d).trial_id for d in json.loads(specs_file.read_text()) if d.get("stage") == "selection"}
        if specs_file.is_file()
        else set()
    )
    for row in rows:
        row.setdefault("stage", "selection" if row.get("trial_id") in selection_ids else "final")
    return rows


def board_rows(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the leaderboard aggregates: the final stage's (selection trials have no eval metrics)."""
    return [r for r in mark_stages(run_dir, rows) if r["stage"] != "selection"]


def append_selection(run_dir: Path, md: Path | None = None) -> None:
    """Under the Markdown leaderboard (``md``, default ``RUN_DIR/leaderboard.md``): each method's
    selected values and its validation score, so a rebuilt leaderboard keeps them too."""
    from lrvd_bench.selection import SELECTION_FILE, summary_lines

    chosen_file, md = Path(run_dir) / SELECTION_FILE, Path(md or Path(run_dir) / "leaderboard.md")
    if chosen_file.is_file() and md.is_file():
        lines = summary_lines(json.loads(chosen_file.read_text()))
        md.write_text(
            md.read_text().rstrip("\n") + "\n\nHyper-parameters selected on the validation split "
            "(the final rows' search_point):\n\n" + "".join(f"- {ln}\n" for ln in lines)
        )


def load_run_config(run_dir: Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise BenchError(f"{run_dir} is not a bench run directory (no config.yaml)")
    return config_from_dict(read_yaml(path), str(path))


def finalize(run_dir: str | Path) -> tuple[list[dict[str, Any]], Any]:
    """Write trials.csv, the leaderboard (CSV + Markdown) and the figures from the trial folders."""
    run_dir = Path(run_dir)
    reused_file = run_dir / ENSEMBLES_FILE
    if reused_file.is_file() and (run_dir / "specs.json").is_file():
        from lrvd_bench.ensembles import materialize

        specs = [TrialSpec.from_dict(d) for d in json.loads((run_dir / "specs.json").read_text())]
        materialize(run_dir, specs, json.loads(reused_file.read_text()))
    rows = gather_rows(run_dir)
    tmp = run_dir / "trials.csv.tmp"
    rows_frame(mark_stages(run_dir, rows)).to_csv(tmp, index=False)
    os.replace(tmp, run_dir / "trials.csv")
    final = board_rows(run_dir, rows)
    board = write_leaderboard(final, run_dir)
    append_selection(run_dir)
    try:
        from lrvd_bench.plots import make_figures

        make_figures(run_dir, final)
    except Exception as err:  # figures are a convenience: never lose the tables over a plot
        print(f"bench: figures skipped ({type(err).__name__}: {err})", file=sys.stderr)
    return rows, board
