"""A small sweep for the interruption tests: ``python sweep_child.py RUN_DIR CALLS [--resume]``.

Four cheap trials, one at a time, each sleeping ~1.5 s while it reports progress; every call of a
trial body is appended to CALLS, so the parent can tell which trials ran in which attempt.
"""

from __future__ import annotations

import functools
import os
import sys
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def body(spec, trial_dir, progress, report=None, *, calls: str):
    for step in range(1, 4):
        time.sleep(0.5)
        if report is not None:
            report({"step": step, "total_steps": 3, "loss": 1.0 / step})
    with open(calls, "a") as fh:
        fh.write(f"{spec.trial_id} {os.getpid()}\n")
    return {
        "status": "ok",
        "error": "",
        "accuracy": 0.25 + 0.1 * spec.seed,
        "ece": 0.1,
        "nll": 1.3,
        "n_eval": 10,
        "finished_at": time.time(),
    }


def main() -> int:
    from lrvd_bench.config import load_config
    from lrvd_bench.sweep import resume_sweep, run_sweep
    from lrvd_bench.trial import run_trial

    run_dir, calls = sys.argv[1], sys.argv[2]
    trial_fn = functools.partial(run_trial, body=functools.partial(body, calls=calls))
    if "--resume" in sys.argv:
        return resume_sweep(run_dir, trial_fn=trial_fn).exit_code
    config = load_config(
        None,
        {
            "methods": "lora,bayeslora",
            "tasks": "arc-e",
            "seeds": [0, 1],
            "cpus_per_trial": 1,
            "gpus_per_trial": 0,
            "device": "cpu",
            "num_cpus": 1,
            "max_concurrent_trials": 1,
            "output": run_dir,
        },
    )
    return run_sweep(config, trial_fn=trial_fn, check=False).exit_code


if __name__ == "__main__":
    sys.exit(main())
