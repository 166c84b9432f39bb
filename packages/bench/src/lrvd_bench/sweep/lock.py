"""One driver per run directory: ``bench run --output X`` and ``bench run --resume X`` hold an OS file
lock on ``X/bench.lock`` (the ``filelock`` library) from before the "already holds a sweep" check to
the end of the sweep, so two drivers can never train the same trials or mix two configs in one folder.

The lock is the operating system's (``flock``), so the kernel releases it when its process dies, even
by SIGKILL: a killed driver never blocks the ``--resume`` that follows. Who holds it (host, pid, start
time) is written beside it in ``bench.lock.json``, for the one-line message the second driver prints;
that file is only read while the lock is held by someone else, so a stale copy is harmless.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from lrvd_bench.errors import BenchError
from lrvd_bench.trial_folder import atomic_write

LOCK_FILE = "bench.lock"
OWNER_FILE = "bench.lock.json"


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; a second holder is a one-line :class:`BenchError` (exit 2).

    A folder this call created and the sweep left empty (a check after Ray's start-up refused the run)
    is removed again, so a refused run writes nothing.
    """
    from filelock import FileLock, Timeout

    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create run directory {run_dir}: {err.strerror or err}") from None
    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BenchError(
            f"run directory {run_dir} is in use by another bench run ({holder(run_dir)}); "
            "wait for it to end, stop it, or choose another --output"
        ) from None
    owner = run_dir / OWNER_FILE
    try:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write(owner, json.dumps(record))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
        if created and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            run_dir.rmdir()


def holder(run_dir: Path, wait_s: float = 2.0) -> str:
    """``host H, pid P, since T`` of the driver holding ``run_dir``'s lock.

    The holder writes its record right after taking the lock; a contender that arrives in between
    (and may still see the record of a killed predecessor) waits up to ``wait_s`` for it.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            record = json.loads((Path(run_dir) / OWNER_FILE).read_text())
            if record["host"] != socket.gethostname() or _alive(int(record["pid"])):
                return f"host {record['host']}, pid {record['pid']}, since {record['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return "holder unknown"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
