"""``bench --help``, ``--version`` and ``list-*`` start without torch: checked in a real process with
``python -X importtime``, whose report names every module the command imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "ray", "pandas")


def imported_modules(argv: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lrvd_bench.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    modules = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, modules


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["list-methods"], ["list-tasks"], ["run", "--help"]])
def test_light_commands_do_not_import_torch(argv):
    done, modules = imported_modules(argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lrvd_bench.config" in modules  # the report is real: it lists what the parser imported
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_version_names_the_commit():
    from lrvd_bench.provenance import suite_commit, suite_version

    done, _ = imported_modules(["--version"])
    commit = suite_commit()
    assert done.returncode == 0
    assert done.stdout.strip() == f"bench {suite_version()} (commit {commit})"
    assert commit != "unknown"  # the tests run from a git checkout
