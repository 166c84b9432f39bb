"""Resume state: which specs of a run directory still have to run, read from the trial folders.

Ray Tune's own experiment state is checkpointed periodically and can lag behind a trial that just
finished, so the folders decide (:func:`lrvd_bench.trial_folder.trial_status`): a finished or stopped
trial never runs again, a failed one only with ``--retry-failed``. ``specs.json`` lists every spec a
run expanded, so trials that never started still appear as ``not run``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lrvd_bench.config import ExperimentConfig, TrialSpec, config_from_dict, read_yaml
from lrvd_bench.errors import BenchError
from lrvd_bench.trial_folder import trial_status

#: the expanded specs of a run (before random search-space sampling), selection stage first
SPECS_FILE = "specs.json"


def write_specs(run_dir: Path, specs: list[TrialSpec]) -> None:
    (run_dir / SPECS_FILE).write_text(json.dumps([s.to_dict() for s in specs], indent=1))


def read_specs(run_dir: Path) -> list[TrialSpec]:
    """The specs in ``run_dir/specs.json`` (none when the file is missing)."""
    path = Path(run_dir) / SPECS_FILE
    return [TrialSpec.from_dict(d) for d in json.loads(path.read_text())] if path.is_file() else []


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


def load_run_config(run_dir: Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise BenchError(f"{run_dir} is not a bench run directory (no config.yaml)")
    return config_from_dict(read_yaml(path), str(path))
