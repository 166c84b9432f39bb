"""A third-party method plugin whose import raises (anything, not only ImportError), in real ``bench``
processes: reported in one line and skipped where it is not requested; named, it is a one-line
error with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = "broken-method"
REASON = "method 'broken-method' (entry point broken_lrvd_plugin:Broken) cannot be imported: RuntimeError: plugin boom"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """What ``pip install`` of a broken plugin leaves on sys.path: its module and its dist-info."""
    root = tmp_path_factory.mktemp("site")
    (root / "broken_lrvd_plugin.py").write_text('raise RuntimeError("plugin boom")\n')
    dist_info = root / "broken_lrvd_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-lrvd-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[lrvd.methods]\n{PLUGIN} = broken_lrvd_plugin:Broken\n")
    return root


def bench(plugin_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return subprocess.run(
        [sys.executable, "-m", "lrvd_bench.cli", *argv], capture_output=True, text=True, timeout=300, env=env
    )


def test_listing_shows_the_plugin_without_importing_it(plugin_path):
    done = bench(plugin_path, "list-methods")
    assert done.returncode == 0, done.stderr
    assert any(line.split()[0] == PLUGIN for line in done.stdout.splitlines() if line.strip())
    assert "lora" in done.stdout.split()


def test_params_listing_reports_the_broken_plugin_in_one_line_and_lists_the_rest(plugin_path):
    done = bench(plugin_path, "list-methods", "--params")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{PLUGIN}  (skipped: {REASON})" in done.stdout.splitlines()
    assert "Traceback" not in done.stderr
    assert any(line.startswith("bayeslora  ") for line in done.stdout.splitlines())  # the others' tables
    assert "kl_scale" in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["list-methods", "--params", PLUGIN],
        ["run", "--methods", f"lora,{PLUGIN}", "--output", "{tmp}/run"],
    ],
)
def test_requesting_the_broken_plugin_is_a_one_line_error(plugin_path, tmp_path, argv):
    done = bench(plugin_path, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"bench: error: {REASON}"]
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_methods_all_skips_the_broken_plugin_with_a_warning(plugin_path):
    done = bench(plugin_path, "run", "--dry-run")  # the quickstart config: methods: all
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"bench: warning: skipped {REASON}"]
    methods = {line.split()[1] for line in done.stdout.splitlines() if line and not line.startswith("(")}
    assert PLUGIN not in methods and {"lora", "bayeslora"} <= methods
