"""Check that the tables published in the README and docs are what the code prints for a run folder.

    uv run python tools/check_published.py RUN_DIR [FILE ...]

Rebuilds the run's leaderboard with the committed code (``build_leaderboard`` and ``to_markdown`` on
the run's trial folders; nothing in RUN_DIR is written) and, for every Markdown table it prints,
looks in each FILE (default: README.md, docs/quickstart_leaderboard.md, docs/reference/README.md,
docs/reference/leaderboard.md) for tables with a header it prints. Each such published table must
equal one printed table with that header; otherwise the differing rows are printed and the exit
status is 1. Printed tables a file does not show are not required there (the README shows a
subset). Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_FILES = [
    "README.md",
    "docs/quickstart_leaderboard.md",
    "docs/reference/README.md",
    "docs/reference/leaderboard.md",
]


def tables(text: str) -> list[list[str]]:
    """Every Markdown table of ``text`` as its lines (header, rule, rows)."""
    out, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return [t for t in out if len(t) >= 2 and set(t[1].replace("|", "").strip()) <= set("-: ")]


def printed_tables(run_dir: Path) -> list[list[str]]:
    """The tables ``bench leaderboard RUN_DIR`` would write into leaderboard.md, at this code."""
    from lrvd_bench.leaderboard import build_leaderboard, gather_rows, run_reference, to_markdown
    from lrvd_bench.sweep.finalize import board_rows

    # the rows bench leaderboard aggregates: a run with a selection stage leaves its selection trials out
    board = build_leaderboard(board_rows(run_dir, gather_rows(run_dir)), run_dir, run_reference(run_dir))
    return tables(to_markdown(board))


def compare(printed: list[list[str]], published: list[list[str]]) -> list[str]:
    """Problems: each published table whose header the code prints must equal one printed table with
    that header. Several printed tables can share a header (the seed-aware and the question-only
    paired tables), so a file may show any of them, and need not show all."""
    problems = []
    for table in published:
        candidates = [t for t in printed if t[0] == table[0]]
        if not candidates or any(t == table for t in candidates):
            continue
        best = max(candidates, key=lambda t: len(set(t) & set(table)))
        problems.append(f"table {table[0]}")
        problems += [f"  published: {line}" for line in table[2:] if line not in best]
        problems += [f"  printed:   {line}" for line in best[2:] if line not in table]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if not (args.run_dir / "trials").is_dir():
        print(f"check_published: {args.run_dir} is not a run folder (no trials/ in it)", file=sys.stderr)
        return 2
    files = args.files or [Path(f) for f in DEFAULT_FILES if Path(f).is_file()]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"check_published: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    printed = printed_tables(args.run_dir)
    failed = False
    for file in files:
        published = tables(file.read_text())
        problems = compare(printed, published)
        shown = sum(any(t[0] == p[0] for p in printed) for t in published)
        if problems:
            failed = True
            print(f"{file}: differs from what the code prints for {args.run_dir}")
            print("\n".join(problems))
        else:
            print(f"{file}: {shown} table(s) checked, identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
