"""Per-trial peak memory survives a reused worker process: the window restarts at reset."""

from __future__ import annotations

import sys

import pytest
import torch

from lrvd_bench.memory import peak_memory_mb, proc_status_kib, reset_peak_memory, reset_peak_rss

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not reset_peak_rss(), reason="needs /proc/self/clear_refs (Linux)"
)


def test_reset_starts_a_new_peak_window_after_a_large_allocation():
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MiB, touched
    assert float(big[-1]) == 1.0
    del big
    earlier_trial = peak_memory_mb(cpu)
    reset_peak_memory(cpu)
    this_trial = peak_memory_mb(cpu)
    # The earlier window saw the 256 MiB above its start; the new one starts at the current RSS.
    assert 250 < earlier_trial < 300
    assert abs(this_trial) < 8
    held = torch.ones(32 * 2**20, dtype=torch.float32)  # 128 MiB still alive at the end of the window
    assert float(held[0]) == 1.0
    assert 120 < peak_memory_mb(cpu) < 150
    assert proc_status_kib("VmRSS") > 0
