"""Ray for a sweep: start a local instance or join ``--address``, send Ray's own log to ``ray.log``,
and refuse, before any trial, a resource request no node can serve."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lrvd.errors import first_line
from lrvd_bench.config import ExperimentConfig
from lrvd_bench.errors import BenchError


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
    # ray.init installs SIGTERM handlers (Python: kill Ray's processes, exit 1; C++: a stack dump, then
    # abort) that end the driver under its running trials. Where the caller handles SIGTERM itself
    # (the sweep: lrvd_bench.sweep.signals) its handler is put back, and Ray's processes start with
    # SIGTERM blocked (they inherit the signal mask; Ray blocks SIGINT in them the same way), so a
    # SIGTERM sent to the whole process group (timeout, Slurm) stops the sweep through the driver
    # instead of killing Ray's GCS under it. The sweep then shuts Ray down.
    sigterm = signal.getsignal(signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if callable(sigterm) else None
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
        raise BenchError(f"cannot start or reach {where}: {first_line(err)}") from None
    finally:
        if callable(sigterm):  # always: the C++ handler is installed below Python, unseen by getsignal
            signal.signal(signal.SIGTERM, sigterm)
        if mask is not None:  # a SIGTERM that came meanwhile is delivered now, to that handler
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
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
