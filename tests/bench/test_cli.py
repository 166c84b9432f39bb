"""The bench CLI in-process: user errors are one line on stderr with exit code 2, listings are cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lrvd_bench import cli

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--methods", "nope", "--dry-run"], "unknown method 'nope'"),
        (["run", "--task", "arc-x", "--dry-run"], "unknown task 'arc-x'"),
        (["run", "--config", "missing.yaml"], "config file not found"),
        (["run", "--set", "train.lrr=1", "--dry-run"], "unknown key 'train.lrr'"),
        (["run", "--set", "nonsense", "--dry-run"], "--set expects key=value"),
        (["run", "--set", "scheduler=asha", "--dry-run"], "scheduler asha stops trials on the validation metric"),
        (["run", "--retry-failed"], "--retry-failed only makes sense with --resume"),
        (["run", "--resume", "somewhere", "--methods", "lora"], "--resume continues a run"),
        (["leaderboard", "no/such/run"], "not a bench run directory"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error:") and fragment in lines[0]
    assert "Traceback" not in err


def test_malformed_yaml_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [lora\n")
    code, _, err = run(capsys, "run", "--config", str(bad))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "malformed YAML" in err


def test_unknown_method_hyper_parameter_fails_before_any_trial(capsys, tmp_path):
    code, _, err = run(
        capsys, "run", "--methods", "lora", "--set", "method_params.lora.nope=1", "--output", str(tmp_path / "r")
    )
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists(), "nothing may be written before the sweep can start"


def test_dry_run_lists_trials_with_cli_winning_over_the_config(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("methods: lora\ntasks: [arc-e]\nseeds: [0, 1, 2]\n")
    code, out, _ = run(
        capsys, "run", "--config", str(config), "--seeds", "5", "--methods", "lora,bayeslora", "--dry-run"
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all("seed 5" in line for line in lines)


def test_bare_run_uses_the_quickstart_config(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, _ = run(capsys, "run", "--dry-run")
    from lrvd.registry import list_methods

    assert code == 0 and len(out.strip().splitlines()) == len(list_methods()) * 2
    assert "arc-e" in out and "model minilm" in out


def test_list_methods_and_tasks_print_one_line_each(capsys):
    code, out, _ = run(capsys, "list-methods")
    assert code == 0 and any(line.startswith("bayeslora ") for line in out.splitlines())
    code, out, _ = run(capsys, "list-tasks")
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and {"arc-c", "arc-e", "obqa", "wg-s", "wg-m", "boolq", "cola"} <= set(names)


def test_help_and_list_methods_do_not_import_peft_or_ray():
    code = (
        "import sys; from lrvd_bench import cli; cli.main(['list-methods']); "
        "print(sorted(m for m in ('peft', 'ray', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
