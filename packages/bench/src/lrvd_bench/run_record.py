"""``run.json``: what produced a run directory, so a number can be traced back to code and machine.

One record per run directory: the suite's git commit and dirty flag (when the installed package
sits in a git checkout), the exact command line, start and end times, the host, Python, torch, CUDA
and cuDNN versions, and the version of every library a method's number depends on. Each
``--resume`` appends an entry to ``attempts`` with its own command, times, host and outcome; the
top-level fields describe the first attempt.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from lrvd_bench.provenance import package_versions, suite_commit

RUN_FILE = "run.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def git_state() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout holding this package; empty outside a checkout."""
    commit = suite_commit()
    if commit == "unknown":
        return {}
    return {"commit": commit.removesuffix("+dirty"), "dirty": commit.endswith("+dirty")}


def environment() -> dict[str, Any]:
    """Host, interpreter, accelerator stack and library versions of this process."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info.update(
            torch=torch.__version__,
            cuda=torch.version.cuda or "",
            cuda_available=torch.cuda.is_available(),
            cudnn=str(torch.backends.cudnn.version() or ""),
            gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        )
    except Exception as err:  # noqa: BLE001 - the record must not stop the sweep
        info["torch_error"] = f"{type(err).__name__}: {err}"
    info["versions"] = package_versions()
    return info


def attempt(command: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv if command is None else command)
    return {"command": shlex.join(argv), "started": _now(), "ended": None, **environment(), "git": git_state()}


def start_record(run_dir: Path, fresh: bool, command: list[str] | None = None) -> dict[str, Any]:
    """Write (fresh run) or extend (resume) ``run.json``; returns the record to finish later."""
    path = Path(run_dir) / RUN_FILE
    entry = attempt(command)
    if fresh or not path.is_file():
        record = {**entry, "attempts": [entry]}
    else:
        record = json.loads(path.read_text())
        record.setdefault("attempts", []).append(entry)
    _write(path, record)
    return record


def finish_record(record: dict[str, Any], outcome: Any) -> None:
    """Stamp the end time and the outcome counts onto the current attempt."""
    path = Path(outcome.run_dir) / RUN_FILE
    entry = record["attempts"][-1]
    entry["ended"] = _now()
    entry["outcome"] = {
        "ok": outcome.n_ok,
        "failed": outcome.n_failed,
        "stopped": outcome.n_stopped,
        "unfinished": outcome.n_unfinished,
        "interrupted": outcome.interrupted,
    }
    if len(record["attempts"]) == 1:
        record.update(ended=entry["ended"], outcome=entry["outcome"])
    record["last_ended"] = entry["ended"]
    _write(path, record)


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)
