"""Which code produced a result: the suite's version and git commit, and the versions of the libraries a
number depends on (recorded per trial and per run, shown on model cards)."""

from __future__ import annotations

import functools
import json
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
    changes; for a package installed from a git URL, the commit its installer recorded
    (:func:`installed_commit`); "unknown" otherwise."""
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
        return installed_commit() or "unknown"
    return head + ("+dirty" if dirty else "") if head else installed_commit() or "unknown"


def installed_commit() -> str | None:
    """The commit pip/uv recorded when installing lrvd-bench from a git URL (PEP 610 ``direct_url.json``)."""
    try:
        text = metadata.distribution("lrvd-bench").read_text("direct_url.json")
        commit = json.loads(text or "{}").get("vcs_info", {}).get("commit_id")
    except (metadata.PackageNotFoundError, ValueError, AttributeError):
        return None
    return str(commit) if commit else None


def version_line() -> str:
    """What ``bench --version`` prints: the package version and the commit it was built from."""
    return f"bench {suite_version()} (commit {suite_commit()})"


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
