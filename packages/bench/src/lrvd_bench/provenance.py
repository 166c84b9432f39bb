"""Which code produced a result: the suite's version and git commit, and the versions of the libraries a
number depends on (recorded per trial and per run, shown on model cards)."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path


def suite_version() -> str:
    try:
        return metadata.version("lrvd-bench")
    except metadata.PackageNotFoundError:  # pragma: no cover - uninstalled source tree
        return "unknown"


@functools.lru_cache(maxsize=1)
def suite_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this package runs from, ``+dirty`` with uncommitted
    changes; "unknown" for an installed wheel or without git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "") if head else "unknown"


#: Every library a method's number depends on (recorded per trial and in the run's ``run.json``).
PACKAGES = (
    "lrvd-core",
    "lrvd-baselines",
    "lrvd-bench",
    "torch",
    "transformers",
    "peft",
    "ivon-opt",
    "laplace-torch",
    "ray",
    "numpy",
    "datasets",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out
