"""tools/check_published.py: published tables must equal what the code prints for the run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_paired import write_trial

from lrvd_bench.leaderboard import gather_rows, write_leaderboard

TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_published.py"
spec = importlib.util.spec_from_file_location("check_published", TOOL)
check_published = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_published)


def test_published_tables_are_checked_against_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    rng = np.random.default_rng(1)
    for seed in (0, 1):
        base = rng.random(200) < 0.5
        write_trial(run, "lora", seed, base, 0.7)
        write_trial(run, "bayeslora", seed, base | (rng.random(200) < 0.3), 0.6)
    write_leaderboard(gather_rows(run), run)
    printed = (run / "leaderboard.md").read_text()
    main_table = "\n".join(check_published.tables(printed)[0])
    readme = tmp_path / "README.md"
    readme.write_text("# Result\n\n" + main_table + "\n\nText.\n")
    assert check_published.main([str(run), str(readme)]) == 0
    assert "1 table(s) checked, identical" in capsys.readouterr().out

    row = next(line for line in main_table.splitlines() if "| bayeslora |" in line)
    acc = row.split(" | ")[4].split(" ")[0]  # "0.xxx" of "0.xxx ± 0.yyy"
    wrong = row.replace(acc, f"{float(acc) + 0.005:.3f}", 1)
    readme.write_text(main_table.replace(row, wrong) + "\n")
    assert check_published.main([str(run), str(readme)]) == 1
    out = capsys.readouterr().out
    assert f"published: {wrong}" in out and f"printed:   {row}" in out

    assert check_published.main([str(tmp_path / "nowhere"), str(readme)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_a_run_with_a_selection_stage_is_checked_on_its_final_rows(tmp_path, capsys):
    """Selection trials score the validation split only; bench leaderboard leaves them out, and so must the check
    (counting them made every row of the 5-seed reference run read "6 (1 †)" seeds)."""
    import json

    from lrvd_bench.sweep.finalize import board_rows

    run = tmp_path / "run"
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        write_trial(run, "lora", seed, rng.random(200) < 0.5, 0.7)
    selection = run / "trials" / "lora-arc-e-s0-select"
    selection.mkdir()
    row = {"trial_id": selection.name, "method": "lora", "task": "arc-e", "model": "minilm", "seed": 0}
    selection.joinpath("result.json").write_text(
        json.dumps({**row, "status": "ok", "stage": "selection", "val_nll": 1.2, "train_time_s": 9.0})
    )
    write_leaderboard(board_rows(run, gather_rows(run)), run)
    readme = tmp_path / "README.md"
    readme.write_text((run / "leaderboard.md").read_text())
    assert check_published.main([str(run), str(readme)]) == 0, capsys.readouterr().out


REPO = TOOL.parents[1]


@pytest.mark.parametrize(
    "run, files",
    [
        ("docs/quickstart_run", ["README.md", "docs/quickstart_leaderboard.md"]),
        ("docs/reference/run", ["README.md", "docs/reference/README.md", "docs/reference/leaderboard.md"]),
    ],
    ids=["quickstart", "reference"],
)
def test_the_published_tables_are_what_the_committed_runs_print(run, files, capsys):
    """The committed run folders (trial results and predictions, no adapters) rebuild, at this code, every table
    the README and docs show from them: a change to the leaderboard's numbers or format turns this red."""
    code = check_published.main([str(REPO / run), *(str(REPO / f) for f in files)])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in files:
        assert f"{name}: " in out and "0 table(s)" not in out
