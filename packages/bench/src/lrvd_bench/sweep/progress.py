"""The console during a sweep: a live line per running trial, one permanent line per trial that ends."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from lrvd_bench.sweep.trainable import TUNE_DIR, spec_of, trial_name
from lrvd_bench.trial_folder import ERROR_FILE, STOPPED_FILE, identity, jsonable


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
        if seconds >= 60
        else f"{seconds}s"
    )


class ProgressLines(Callback):
    """The console during a sweep.

    A live status line per running trial (``method task seed  step 40/100  loss 1.21  ETA 1m05s``),
    redrawn in place on a terminal (printed at most every ``every_s`` seconds per trial otherwise),
    then one permanent line per trial that ends: ``[3/12  95s] ok  lora arc-e seed 0  accuracy …``
    or ``FAILED … : <first line of the error> (traceback: trials/<id>/error.txt)``. The driver also
    records trials that did not write their own file: ``stopped.json`` for a trial the scheduler
    stopped, ``error.json`` for one whose worker died.
    """

    def __init__(
        self,
        total: int,
        stream: Any = None,
        run_dir: Path | None = None,
        *,
        live: bool | None = None,
        every_s: float = 30.0,
    ) -> None:
        self.total = total
        self.run_dir = run_dir
        self.stream = stream
        self.live = live
        self.every_s = every_s
        self.done = 0
        self.start = time.time()
        self.status: dict[str, str] = {}
        self.first: dict[str, tuple[float, int]] = {}
        self.printed: dict[str, float] = {}
        self.drawn = 0

    # -- output ----------------------------------------------------------------------------------
    @property
    def out(self) -> Any:
        return self.stream or sys.stderr

    def _is_live(self) -> bool:
        if self.live is None:
            isatty = getattr(self.out, "isatty", None)
            self.live = bool(isatty and isatty())
        return self.live

    def _redraw(self, permanent: str | None = None) -> None:
        out = self.out
        if self.drawn:
            out.write(f"\x1b[{self.drawn}F\x1b[J")  # back to the first live line, clear below
        if permanent is not None:
            out.write(permanent + "\n")
        lines = list(self.status.values()) if self._is_live() else []
        for line in lines:
            out.write(line + "\n")
        self.drawn = len(lines)
        out.flush()

    def _line(self, trial: Any, status: str, extra: str) -> None:
        self.done += 1
        self.status.pop(trial.trial_id, None)
        spec = trial.config.get("spec", {})
        elapsed = time.time() - self.start
        self._redraw(
            f"[{self.done}/{self.total} {elapsed:5.0f}s] {status:6s} {spec.get('method')} {spec.get('task')} "
            f"seed {spec.get('seed')}  {extra}"
        )

    def _trial_dir(self, trial: Any) -> Path | None:
        if self.run_dir is None:
            return None
        try:
            return self.run_dir / "trials" / spec_of(trial.config).trial_id
        except Exception:  # the console must never break the sweep
            return None

    # -- Ray Tune hooks ----------------------------------------------------------------------------
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "step" not in result or result.get("trial_done"):
            return
        step, total = int(result["step"]), int(result.get("total_steps") or 0)
        now = time.time()
        t0, step0 = self.first.setdefault(trial.trial_id, (now - float(result.get("step_time_s") or 0) * step, 0))
        eta = (now - t0) / max(1, step - step0) * max(0, total - step)
        spec = trial.config.get("spec", {})
        parts = [f"  … {spec.get('method')} {spec.get('task')} seed {spec.get('seed')}", f"step {step}/{total}"]
        if isinstance(result.get("loss"), (int, float)):
            parts.append(f"loss {result['loss']:.4f}")
        for key in ("val_accuracy", "val_nll"):
            if isinstance(result.get(key), (int, float)):
                parts.append(f"{key} {result[key]:.4f}")
        parts.append(f"ETA {_duration(eta)}")
        self.status[trial.trial_id] = "  ".join(parts)
        if self._is_live():
            self._redraw()
        elif now - self.printed.get(trial.trial_id, 0.0) >= self.every_s:
            self.printed[trial.trial_id] = now
            self._redraw(self.status[trial.trial_id])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        if not r.get("trial_done"):
            self._stopped(trial, r)
            return
        extra = "  ".join(
            f"{k} {r[k]:.4f}"
            for k in ("accuracy", "ece", "nll", "val_accuracy", "val_nll")
            if isinstance(r.get(k), float)
        )
        if isinstance(r.get("train_time_s"), float):
            extra += f"  train {r['train_time_s']:.0f}s"
        if r.get("learned") is False:
            extra += "  (not learned)"
        if r.get("kept"):
            extra += "  (kept from an earlier attempt)"
        self._line(trial, "ok", extra)

    def _stopped(self, trial: Any, result: dict) -> None:
        """A trial that ended without its final report: the scheduler stopped it early."""
        folder = self._trial_dir(trial)
        step = result.get("step")
        metric = "  ".join(
            f"{k} {result[k]:.4f}" for k in ("val_accuracy", "val_nll") if isinstance(result.get(k), float)
        )
        if folder is not None:
            spec = spec_of(trial.config)
            folder.mkdir(parents=True, exist_ok=True)
            record = {
                **identity(spec),
                "status": "stopped",
                "error": f"stopped early by the scheduler at step {step}",
                "steps": step,
                **{k: v for k, v in result.items() if k.startswith("val_")},
            }
            (folder / STOPPED_FILE).write_text(json.dumps(jsonable(record), indent=2))
        self._line(trial, "stopped", f"early at step {step}  {metric}".rstrip())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        folder = self._trial_dir(trial)
        message, where = "", ""
        if folder is not None:
            error_json = folder / ERROR_FILE
            try:
                message = json.loads(error_json.read_text()).get("error", "")
                where = str(folder / "error.txt")
            except (OSError, ValueError):  # the worker died before run_trial could write its files
                ray_error = Path(self.run_dir or "") / TUNE_DIR / trial_name(trial) / "error.txt"
                message = _ray_error_line(ray_error)
                with contextlib.suppress(Exception):
                    record = {**identity(spec_of(trial.config)), "status": "failed", "error": message}
                    folder.mkdir(parents=True, exist_ok=True)
                    error_json.write_text(json.dumps(record, indent=2))
                where = str(ray_error)
        self._line(trial, "FAILED", f"{message}  (traceback: {where})")


def _ray_error_line(path: Path) -> str:
    """The exception line of the error Ray recorded for a trial whose worker died (its ``error.txt``),
    e.g. ``ray.exceptions.OutOfMemoryError: 1 worker(s) were killed due to the node running low on memory``."""
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        lines = []
    found = next((ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln)), None)
    return (found or "the trial's worker process died (see ray.log)")[:200]
