"""The sweep: every :class:`~lrvd_bench.config.TrialSpec` as one Ray Tune trial.

Scheduling lives here and only here; a trial is the plain function :func:`lrvd_bench.trial.run_trial`.
One module per job::

    stages.py     run_sweep / resume_sweep: the selection and final stages, each one Tune experiment
    resume.py     which trials are still to run (the trial folders, not Ray's state); specs.json
    checks.py     pre-flight: methods, selection grid, data and backbone, before Ray starts
    cluster.py    Ray start-up (local or --address), its log to ray.log, resources against the nodes
    lock.py       one driver per run directory: an OS file lock, bench.lock, and who holds it
    signals.py    SIGTERM stops the sweep as Ctrl+C does (exit 143 instead of 130)
    trainable.py  the Ray Tune function trainable that runs one spec, and the trial names
    progress.py   the console: live lines per running trial, one line per trial that ends
    trackers.py   Ray Tune logger callbacks (csv, json, tensorboard, mlflow, wandb)
    finalize.py   trials.csv, the leaderboard and the figures from the trial folders; the outcome

Run directory (``--output runs/NAME``)::

    bench.lock       held by the running driver (bench.lock.json: its host, pid, start time)
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
and the others go on (``max_failures=0``); Ctrl+C or SIGTERM stops the sweep after saving what
finished (signals.py). One driver at a time holds a run directory (lock.py).

Resume (``--resume runs/NAME``) reads the trial folders, not Ray's experiment state (which is
checkpointed periodically and can lag behind a trial that just finished): a folder whose
``result.json`` carries the spec's ``config_hash`` is finished and never runs again, failed ones only
with ``--retry-failed``; everything else runs in a fresh Ray Tune experiment. The trainable also
returns a stored row at once, so not even a duplicate can re-run a finished trial.

On a multi-node cluster the run directory must be on a filesystem every node mounts (NFS, …):
trials write their folders directly, and Ray Tune keeps its state there too.
"""

import os

# Under `uv run`, Ray by default copies the working directory and rebuilds the driver's uv
# environment for its workers (slow, and it needs the package index). Trials here run in the
# driver's own venv; on a multi-node cluster install the same locked environment on every node
# (README), or set RAY_ENABLE_UV_RUN_RUNTIME_ENV=1 to let Ray replicate it. Ray reads this when it
# is first imported, so it is set here, before any module of this package imports Ray.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from lrvd_bench.sweep.finalize import SweepOutcome, finalize  # noqa: E402
from lrvd_bench.sweep.stages import resume_sweep, run_sweep  # noqa: E402

__all__ = ["SweepOutcome", "finalize", "resume_sweep", "run_sweep"]
