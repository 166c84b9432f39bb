"""SIGTERM stops a sweep the way Ctrl+C does.

SIGTERM is what ``timeout``, Slurm preemption and Kubernetes send. Left to Ray, it reaches the
handler ``ray.init`` installs, which kills Ray's processes under running trials and exits with code 1.
For the sweep's duration it is routed instead to whatever handles SIGINT at that moment: during
``Tuner.fit`` Ray Tune's own handler, which stops the trials and returns with the finished results;
elsewhere Python's, which raises :class:`Terminated` (a ``KeyboardInterrupt``). Either way the exit code
is 143 (128 + SIGTERM), as for a process killed by it, and the console says how to resume.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM outside Ray Tune's loop (Ray start-up, finalisation): unwinds like Ctrl+C, exit code 143."""

    exit_code = 128 + signal.SIGTERM


class StopSignals:
    """Which stop signal a sweep received, if any: ``exit_code`` is 130 after SIGINT, 143 after SIGTERM."""

    def __init__(self) -> None:
        self.terminated = False

    @property
    def exit_code(self) -> int:
        return Terminated.exit_code if self.terminated else 128 + signal.SIGINT


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[StopSignals]:
    """Route SIGTERM to the current SIGINT handler for the block (main thread only, where signals land)."""
    seen = StopSignals()
    if threading.current_thread() is not threading.main_thread():  # signal.signal works only there
        yield seen
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        seen.terminated = True
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)  # Ray Tune's: end the experiment, keep what finished
        else:
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)
