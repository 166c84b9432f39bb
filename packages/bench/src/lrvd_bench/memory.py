"""Peak-memory probes shared by trials (``bench run``) and ``bench cost``.

CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` (the trial's tensors, not the CUDA
context). CPU on Linux, the same idea: the process's peak RSS (``VmHWM``) during the trial *minus*
the RSS at its start, after the libraries are imported and the freed heap is returned to the OS
(``gc.collect`` + ``malloc_trim``). So the number is what the trial's backbone, data, adapter,
optimizer and activations needed, and it does not depend on whether the Ray worker process is fresh
or reused (``reuse_actors``): imported modules and earlier trials' leftovers are in the baseline.
Writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS. Elsewhere (macOS)
the fallback is ``ru_maxrss`` minus the baseline, the peak over the process's whole life.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import resource
import sys
from pathlib import Path
from typing import Any

_baseline_mib = 0.0


def proc_status_kib(field_name: str) -> float:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), NaN where there is no procfs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return math.nan


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """glibc: give freed heap pages back to the OS, so RSS tracks live memory (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _max_rss_mib() -> float:
    hwm = proc_status_kib("VmHWM")
    if not math.isnan(hwm):
        return hwm / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def reset_peak_memory(device: Any) -> bool:
    """Start a new peak-memory window for ``device`` (a ``torch.device``); call after the imports.

    Returns False on CPU where the peak cannot be reset (no ``clear_refs``): :func:`peak_memory_mb`
    then falls back to the process's lifetime peak above the baseline.
    """
    global _baseline_mib
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return True
    gc.collect()
    malloc_trim()
    windowed = reset_peak_rss()
    rss = proc_status_kib("VmRSS")
    _baseline_mib = rss / 1024 if not math.isnan(rss) else _max_rss_mib()
    return windowed


def peak_memory_mb(device: Any) -> float:
    """MiB: CUDA peak allocated, or CPU peak RSS above the RSS at :func:`reset_peak_memory`."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return _max_rss_mib() - _baseline_mib
