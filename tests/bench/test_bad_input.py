# ruff: noqa: E501 - the table holds whole one-line messages
"""Bad input, as a hostile user types it: one line naming the key, the bad value and what is valid,
exit code 2, before anything starts. docs/testing.md ("Bad input") lists these rows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lrvd_bench import cli

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def config_file(tmp_path: Path, body: bytes) -> str:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"methods: lora\n" + body)
    return str(path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--config", b"train:\n  lr: [0.1, 0.2]\n"],
            "bad value for train.lr in {cfg}: [0.1, 0.2] (input should be a valid number)",
        ),
        (
            ["--config", b"max_length: 3.7\n"],
            "bad value for max_length in {cfg}: 3.7 (input should be a valid integer, got a number with a fractional part)",
        ),
        (["--config", b"model: caf\xe9\n"], "config file {cfg} is not UTF-8 text (byte 0xe9 at offset 24)"),
        (
            ["--limit-train", "0"],
            "bad value for limit_train in the command line: 0 (input should be greater than or equal to 1)",
        ),
        (
            ["--n-samples", "-1"],
            "bad value for n_samples in the command line: -1 (input should be greater than or equal to 0)",
        ),
        (["--lr=-1e-3"], "train.lr must be finite and >= 0, got -0.001"),
        (["--lr", "nan"], "train.lr must be finite and >= 0, got nan"),
        (["--set", "train.head_lr=.inf"], "train.head_lr must be finite and >= 0, got inf"),
        (["--lr", "0"], "train.lr must be > 0, got 0.0"),
        (["--max-steps", "0"], "train.max_steps must be >= 1 (None: from epochs), got 0"),
        (["--set", "train.warmup_ratio=1.5"], "train.warmup_ratio must be in [0, 1], got 1.5"),
        (
            ["--methods", "adalora", "--param", "adalora.lr=nan"],
            "method_params.adalora.lr is a learning rate: it must be finite and >= 0, got nan",
        ),
        (
            ["--methods", "bayeslora", "--param", "bayeslora.log_sigma2_lr_mult=-0.1"],
            "method_params.bayeslora.log_sigma2_lr_mult must be >= 0, got -0.1",
        ),
        (
            ["--methods", "blob", "--param", "blob.kl_lr=.inf"],
            "method_params.blob.kl_lr is a learning rate: it must be finite and >= 0, got inf",
        ),
        (
            ["--methods", "adalora-ivon", "--param", "adalora-ivon.lr_first=-2"],
            "method_params.adalora-ivon.lr_first must be > 0, got -2",
        ),
        (
            ["--methods", "bayeslora", "--param", "bayeslora.tau=[1, 2]"],
            "bad value for method_params.bayeslora.tau: [1, 2] (input should be a valid number)",
        ),
        (
            ["--methods", "laplace-lora", "--param", "laplace-lora.predictive=probit"],
            "method_params.laplace-lora: unknown Laplace predictive 'probit'; valid choices: glm, glm-mc, nn",
        ),
        (
            ["--methods", "adalora-ivon", "--param", "adalora-ivon.criterion=snr2"],
            "method_params.adalora-ivon: unknown AdaLoRA-IVON criterion 'snr2'; valid choices: inv-sigma, mean, snr, snr-abs",
        ),
        (["--set", "scheduler=hyperband"], "unknown scheduler 'hyperband'; valid choices: 'fifo' or 'asha'"),
        (
            ["--seeds", "0,one"],
            "bad value for seeds[1] in the command line: 'one' (input should be a valid integer, unable to parse string as an integer)",
        ),
        (["--data-dir", "/no/such/dir"], "data dir /no/such/dir does not exist"),
        (
            ["--methods", "adalora", "--max-steps", "3"],
            "method 'adalora': AdaLoRA schedule has no budgeting phase at 3 steps: max(tinit, 1) = 1 must be < "
            "total_steps - tfinal = 3 - 2; lower the tinit/tfinal fractions or train longer",
        ),
        (
            ["--methods", "adalora-ivon", "--rank", "2", "--param", "adalora-ivon.target_r=2"],
            "method 'adalora-ivon': AdaLoRA target_r (2) must be < the initial rank spec.r (2)",
        ),
        (
            ["--task", "obqa", "--eval-tasks", "arc-c,arc-x"],
            "unknown evaluation task 'arc-x'; valid choices: arc-c, arc-e, boolq, cola, mmlu-chem, mmlu-phy, obqa, "
            "wg-m, wg-s",
        ),
        (
            ["--task", "obqa", "--eval-tasks", "boolq"],
            "evaluation task 'boolq' is classification but 'obqa' trains a multiple-choice head; evaluate on tasks "
            "of the same kind",
        ),
        (
            ["--task", "boolq", "--eval-tasks", "cola"],
            "evaluation task 'cola' has 2 classes ['No', 'Yes'] but the head trained on 'boolq' has "
            "2 ['False', 'True']",
        ),
        (
            ["--task", "mmlu-chem"],
            "task 'mmlu-chem' is evaluation-only (no training split); train on one of: arc-c, arc-e, boolq, cola, obqa, wg-m, wg-s",
        ),
        (
            ["--config", b"tasks: [obqa, mmlu-phy]\n"],
            "task 'mmlu-phy' is evaluation-only (no training split); train on one of: arc-c, arc-e, boolq, cola, obqa, wg-m, wg-s",
        ),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_bad_input_is_one_line_exit_2_before_anything_starts(capsys, tmp_path, argv, message, dry_run):
    """The real run and --dry-run reject the same inputs with the same line, and nothing is written."""
    cfg = config_file(tmp_path, argv[1] if argv[0] == "--config" else b"")
    argv = ["--config", cfg, *(argv if argv[0] != "--config" else [])]
    output = tmp_path / "run"
    code, out, err = run(capsys, "run", *argv, "--output", str(output), *(["--dry-run"] if dry_run else []))
    assert (code, err.strip().splitlines(), out) == (2, ["bench: error: " + message.format(cfg=cfg)], "")
    assert not output.exists()


def test_output_path_that_is_a_file_is_refused(capsys, tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a run")
    for extra in (["--dry-run"], []):
        code, _, err = run(capsys, "run", "--methods", "lora", "--output", str(target), *extra)
        assert (
            code == 2
            and err.strip() == f"bench: error: output {target} exists and is not a directory; choose another --output"
        )
    assert target.read_text() == "not a run"


def test_read_only_output_directory_is_refused_before_ray_starts(capsys, tmp_path):
    """A mode-555 folder; as root (who writes there anyway) sysfs, which refuses new files to root too."""
    if os.geteuid() == 0:
        locked = Path("/sys")
        if not locked.is_dir() or os.access(locked, os.W_OK) and _creatable(locked):
            pytest.skip("root, and no read-only directory to write into")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
    for extra in (["--dry-run"], []):
        code, _, err = run(capsys, "run", "--methods", "lora", "--output", str(locked / "bench-run"), *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"output {locked / 'bench-run'} cannot be written: {locked} is read-only" in err
    assert not (locked / "bench-run").exists()


def test_a_full_disk_is_refused_before_ray_starts_and_a_full_disk_mid_run_is_one_line(capsys, tmp_path, monkeypatch):
    """The output's filesystem reports 100 MB free (``shutil.disk_usage``, what the check reads): a new
    run, its dry run and a resume stop with one line naming the free space and the floor. A disk that
    fills up while the driver writes (ENOSPC) is one line with the resume command, exit 2."""
    import errno
    import shutil
    from collections import namedtuple

    from lrvd_bench.sweep import checks

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 100 * 2**20, 100 * 2**20))
    output = tmp_path / "run"
    expected = (
        f"bench: error: output {output}: only 100 MB free on its filesystem, below the {checks.MIN_FREE_MB} MB "
        "a sweep needs (adapters, predictions, checkpoints); free space or choose another --output"
    )
    for extra in (["--dry-run"], []):
        code, _, err = run(capsys, "run", "--methods", "lora", "--output", str(output), *extra)
        assert (code, err.strip().splitlines()) == (2, [expected])
    assert not output.exists()
    (output / "trials").mkdir(parents=True)
    (output / "specs.json").write_text("[]")
    (output / "config.yaml").write_text("methods: [lora]\n")
    code, _, err = run(capsys, "run", "--resume", str(output))
    assert (code, err.strip().splitlines()) == (2, [expected])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(output / "trials.csv"))

    monkeypatch.setattr(cli, "cmd_run", full)
    monkeypatch.setitem(cli.COMMANDS, "run", full)
    code, _, err = run(capsys, "run", "--methods", "lora")
    assert (code, err.strip().splitlines()) == (
        2,
        [
            f"bench: error: no space left on the device writing {output / 'trials.csv'}; free space, then "
            "continue with bench run --resume RUN"
        ],
    )


def _creatable(folder: Path) -> bool:
    import tempfile

    try:
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def test_methods_all_on_the_command_line_is_every_registered_method(capsys):
    from lrvd.registry import list_methods

    code, out, _ = run(capsys, "run", "--methods", "all", "--seeds", "0", "--task", "arc-e", "--dry-run")
    assert code == 0 and [line.split()[1] for line in out.splitlines()] == list_methods()


def test_print_config_is_the_merged_config_as_yaml(capsys, tmp_path):
    cfg = config_file(tmp_path, b"seeds: [3, 4]\ntrain: {lr: 1e-3, max_steps: 7}\n")
    code, out, _ = run(capsys, "run", "--config", cfg, "--lr", "5e-4", "--set", "adapter.r=4", "--print-config")
    printed = yaml.safe_load(out)
    assert code == 0 and printed["methods"] == ["lora"] and printed["seeds"] == [3, 4]
    assert (printed["train"]["lr"], printed["train"]["max_steps"], printed["adapter"]["r"]) == (5e-4, 7, 4)
    assert printed["train"]["batch_size"] == 8, "keys the file leaves out show their built-in defaults"
    from lrvd_bench.config import config_from_dict

    assert config_from_dict(printed).expand() == cli_specs(cfg)


def cli_specs(cfg):
    from lrvd_bench.config import load_config

    return load_config(cfg, {"train.lr": 5e-4, "adapter.r": 4}).expand()


def test_run_help_shows_the_quickstart_values_and_reaches_every_top_level_key(capsys, monkeypatch):
    import dataclasses

    from lrvd_bench.config import ExperimentConfig

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    assert "A bare `bench run` runs quickstart.yaml" in out
    assert (
        "  limit_train: 400\n" in out and "max_steps: 100," in out and "adalora: {lr: 0.02}" in out
    )  # the file's values
    flags, _, listed = out.partition("config keys without a flag")
    for f in dataclasses.fields(ExperimentConfig):
        has_flag = f"--{f.name.replace('_', '-')} " in flags
        in_set_list = any(line.split()[:1] == [f.name] for line in listed.splitlines())
        assert has_flag or in_set_list, f.name


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_an_evaluation_task_missing_from_the_data_dir_is_named(capsys, tmp_path, dry_run):
    """Offline, with --data-dir holding the training task only: the evaluation task's missing files are named."""
    from lrvd_bench.tasks import BUNDLED_DATA_DIR

    data = tmp_path / "data"
    (data / "openbookqa").mkdir(parents=True)
    for name in ("train.jsonl", "validation.jsonl"):
        lines = (BUNDLED_DATA_DIR / "openbookqa" / name).read_text().splitlines()[:20]
        (data / "openbookqa" / name).write_text("\n".join(lines) + "\n")
    output = tmp_path / "run"
    argv = ["run", "--task", "obqa", "--eval-tasks", "arc-c", "--data-dir", str(data), "--output", str(output)]
    code, out, err = run(capsys, *argv, *(["--dry-run"] if dry_run else []))
    expected = f"bench: error: task 'arc-c': {data} lacks train.jsonl and validation.jsonl"
    assert (code, err.strip().splitlines(), out) == (2, [expected], "")
    assert not output.exists()
