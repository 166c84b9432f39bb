"""Benchmark tasks and their registry.

Built-in tasks are declared as ``lrvd.tasks`` entry points in ``packages/bench/pyproject.toml``
(``arc-c``, ``arc-e``, ``obqa``, ``wg-s``, ``wg-m``, ``boolq``, ``cola``, and the evaluation-only
``mmlu-chem``, ``mmlu-phy``), resolved lazily by name.

To add a task:

1. subclass :class:`~lrvd_bench.tasks.base.Task` (a frozen dataclass) and implement ``convert``
   (one raw record -> :class:`~lrvd_bench.tasks.base.Example`); override ``encoder_inputs`` /
   ``causal_prompt`` / ``option_words`` only if the defaults do not fit;
2. create an instance with its hub id, split mapping and bundled folder name (a mapping without
   "train" makes an evaluation-only task);
3. register it: an entry point ``my-task = "my_pkg.tasks:MY_TASK"`` in group ``lrvd.tasks``, or
   ``TASKS.register("my-task")(MY_TASK)`` in-process.
"""

from __future__ import annotations

from lrvd.errors import LRVDError
from lrvd.registry import Registry
from lrvd_bench.tasks.base import BUNDLED_DATA_DIR, Carve, DataSource, Example, Task

TASKS: Registry[Task] = Registry("task", "lrvd.tasks")


def get_task(name: str) -> Task:
    """The :class:`Task` registered as ``name``; an ``LRVDError`` listing valid names otherwise."""
    task = TASKS.get(name)
    if not isinstance(task, Task):
        raise LRVDError(f"task {name!r} is registered as {type(task).__name__}, not a lrvd_bench Task")
    return task


def list_tasks() -> list[str]:
    """Names of all registered tasks (built-in and third-party), without importing them."""
    return TASKS.names()


def trainable_tasks() -> list[str]:
    """Names of the registered tasks that have a training split (every task but the evaluation-only ones)."""
    return [name for name in list_tasks() if not get_task(name).eval_only]


__all__ = [
    "BUNDLED_DATA_DIR",
    "Carve",
    "DataSource",
    "Example",
    "TASKS",
    "Task",
    "get_task",
    "list_tasks",
    "trainable_tasks",
]
