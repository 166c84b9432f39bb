"""Finalisation: trials.csv, the leaderboard and the figures, rebuilt from the trial folders of a run.

Reads only files (never Ray), so it also serves ``bench leaderboard`` on a finished, interrupted or
copied run. Reused ensembles (:mod:`lrvd_bench.ensembles`) get their ``result.json`` here, from their
members' predictions.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrvd_bench.ensembles import ENSEMBLES_FILE, materialize
from lrvd_bench.leaderboard import gather_rows, rows_frame, write_leaderboard
from lrvd_bench.plots import make_figures
from lrvd_bench.selection import SELECTION_FILE, summary_lines
from lrvd_bench.sweep.resume import SPECS_FILE, read_specs
from lrvd_bench.sweep.signals import StopSignals


@dataclass
class SweepOutcome:
    """What ``bench run`` prints at the end and turns into an exit code."""

    run_dir: Path
    n_trials: int
    n_ok: int
    n_failed: int
    n_unfinished: int
    interrupted: bool
    n_stopped: int = 0
    board: Any = None
    #: 130 after Ctrl+C (SIGINT), 143 after SIGTERM: 128 + the signal, as a shell reports it
    interrupted_code: int = 130

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return self.interrupted_code
        return 0 if self.n_failed == 0 and self.n_unfinished == 0 else 1


def finish(run_dir: Path, interrupted: bool, stream: Any, stop: StopSignals | None = None) -> SweepOutcome:
    """The end of a sweep: :func:`finalize`, count the trials by status, print the summary lines.

    ``stop`` says which signal interrupted the sweep (exit code and wording), if one did."""
    rows, board = finalize(run_dir)
    n_unfinished = sum(r.get("status") not in ("ok", "failed", "stopped") for r in rows)
    interrupted = interrupted and n_unfinished > 0
    outcome = SweepOutcome(
        run_dir,
        len(rows),
        sum(r.get("status") == "ok" for r in rows),
        sum(r.get("status") == "failed" for r in rows),
        n_unfinished,
        interrupted,
        n_stopped=sum(r.get("status") == "stopped" for r in rows),
        board=board,
        interrupted_code=stop.exit_code if stop else 130,
    )
    out = stream or sys.stderr
    stopped = f", {outcome.n_stopped} stopped early" if outcome.n_stopped else ""
    print(
        f"bench: {outcome.n_ok} ok, {outcome.n_failed} failed{stopped}, {outcome.n_unfinished} unfinished; "
        f"results in {run_dir}",
        file=out,
        flush=True,
    )
    if outcome.n_failed:
        print(
            f"bench: failed trials are listed in {run_dir / 'trials.csv'} (column error); rerun them with "
            f"bench run --resume {run_dir} --retry-failed",
            file=out,
            flush=True,
        )
    if interrupted:
        how = "terminated (SIGTERM)" if stop and stop.terminated else "interrupted"
        print(f"bench: {how}; continue with: bench run --resume {run_dir}", file=out, flush=True)
    return outcome


def mark_stages(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row its ``stage`` (rows of trials that never ran get it from specs.json)."""
    selection_ids = {s.trial_id for s in read_specs(run_dir) if s.stage == "selection"}
    for row in rows:
        row.setdefault("stage", "selection" if row.get("trial_id") in selection_ids else "final")
    return rows


def board_rows(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the leaderboard aggregates: the final stage's (selection trials have no eval metrics)."""
    return [r for r in mark_stages(run_dir, rows) if r["stage"] != "selection"]


def append_selection(run_dir: Path, md: Path | None = None) -> None:
    """Under the Markdown leaderboard (``md``, default ``RUN_DIR/leaderboard.md``): each method's
    selected values and its validation score, so a rebuilt leaderboard keeps them too."""
    chosen_file, md = Path(run_dir) / SELECTION_FILE, Path(md or Path(run_dir) / "leaderboard.md")
    if chosen_file.is_file() and md.is_file():
        lines = summary_lines(json.loads(chosen_file.read_text()))
        md.write_text(
            md.read_text().rstrip("\n") + "\n\nHyper-parameters selected on the validation split "
            "(the final rows' search_point):\n\n" + "".join(f"- {ln}\n" for ln in lines)
        )


def finalize(run_dir: str | Path) -> tuple[list[dict[str, Any]], Any]:
    """Write trials.csv, the leaderboard (CSV + Markdown) and the figures from the trial folders."""
    run_dir = Path(run_dir)
    reused_file = run_dir / ENSEMBLES_FILE
    if reused_file.is_file() and (run_dir / SPECS_FILE).is_file():
        materialize(run_dir, read_specs(run_dir), json.loads(reused_file.read_text()))
    rows = gather_rows(run_dir)
    tmp = run_dir / "trials.csv.tmp"
    rows_frame(mark_stages(run_dir, rows)).to_csv(tmp, index=False)
    os.replace(tmp, run_dir / "trials.csv")
    final = board_rows(run_dir, rows)
    board = write_leaderboard(final, run_dir)
    append_selection(run_dir)
    try:
        make_figures(run_dir, final)
    except Exception as err:  # figures are a convenience: never lose the tables over a plot
        print(f"bench: figures skipped ({type(err).__name__}: {err})", file=sys.stderr)
    return rows, board
