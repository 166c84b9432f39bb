"""A trial's folder on disk: the files that say how the trial ended, and the columns naming it in every row.

``run_trial`` writes ``result.json`` (ok) or ``error.json`` (failed); the sweep's driver writes
``stopped.json`` for a trial the scheduler stopped early and ``error.json`` for one whose worker died
before it could. Each file carries the spec's ``config_hash``, so a folder counts as ended for *that*
spec only: a changed spec (other settings, same folder name) runs again. Readers: ``--resume``
(:mod:`lrvd_bench.sweep.resume`), selection, the ensembles built from finished trials, the leaderboard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lrvd_bench.trial_spec import TrialSpec, portable_model_name

RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
#: the resumable training checkpoint (``train.checkpoint_every``), removed once the trial has its result
CHECKPOINT_DIR = "checkpoint"
#: written by the driver into the folder of a trial the scheduler (ASHA) stopped early
STOPPED_FILE = "stopped.json"


def identity(spec: TrialSpec) -> dict[str, Any]:
    """The columns that name a trial, first in its result, error and stopped records."""
    return {
        "trial_id": spec.trial_id,
        "method": spec.method,
        "task": spec.task,
        "model": portable_model_name(spec.model),
        "seed": spec.seed,
        "config_hash": spec.config_hash,
        "search_point": json.dumps(spec.search_point, sort_keys=True) if spec.search_point else "",
        "stage": spec.stage,
    }


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data: numbers that are not Python floats (numpy, 0-dim tensors) as floats,
    anything else unknown as its string."""
    return json.loads(json.dumps(obj, default=lambda o: float(o) if hasattr(o, "__float__") else str(o)))


def atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file and rename: a reader never sees half a file, and a trial killed
    mid-write leaves no ``result.json`` (so ``--resume`` runs it again)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_row(path: Path, row: dict[str, Any]) -> None:
    """A trial record (result, error) as indented JSON, written atomically, values made JSON-safe."""
    atomic_write(path, json.dumps(jsonable(row), indent=2))


def finished_row(trial_dir: Path, spec: TrialSpec) -> dict[str, Any] | None:
    """The stored result of ``spec`` when ``trial_dir/result.json`` exists and carries its hash."""
    path = Path(trial_dir) / RESULT_FILE
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return row if row.get("config_hash") == spec.config_hash else None


def trial_status(trial_dir: Path, spec: TrialSpec) -> str | None:
    """``ok`` / ``failed`` / ``stopped`` for a trial that ended, ``None`` for one to (re-)run."""
    if finished_row(trial_dir, spec) is not None:
        return "ok"
    for name, status in ((STOPPED_FILE, "stopped"), (ERROR_FILE, "failed")):
        try:
            if json.loads((Path(trial_dir) / name).read_text()).get("config_hash") == spec.config_hash:
                return status
        except (OSError, ValueError):
            continue
    return None
