"""Discoverable settings: shared knob flags, `list-methods --params`, `run --help` defaults, `--version`."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from lrvd_bench import cli
from lrvd_bench.cli_knobs import add_knob_flags, knob_overrides
from lrvd_bench.config import load_config


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_knob_flags_reach_the_trial_specs(tmp_path):
    parser = argparse.ArgumentParser()
    add_knob_flags(parser)
    args = parser.parse_args(
        [
            "--lr",
            "3e-4",
            "--batch-size",
            "2",
            "--rank",
            "4",
            "--target-modules",
            "query, key",
            "--param",
            "bayeslora.tau=2.5",
            "lora.lora_dropout=0.2",
            "--param",
            "bayeslora.min_ranks=1",
        ]
    )
    overrides = knob_overrides(args)
    config = load_config(None, {"methods": ["lora", "bayeslora"], **overrides})
    specs = {s.method: s for s in config.expand()}
    assert specs["lora"].train["lr"] == 3e-4 and specs["lora"].train["batch_size"] == 2
    assert specs["lora"].adapter["r"] == 4 and specs["lora"].adapter["target_modules"] == ["query", "key"]
    assert specs["bayeslora"].method_params == {"tau": 2.5, "min_ranks": 1}
    assert specs["lora"].method_params == {"lora_dropout": 0.2}


def test_run_flags_win_over_the_config_file(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("methods: lora\ntrain: {lr: 0.01, batch_size: 8}\nadapter: {r: 8}\n")
    from lrvd_bench.cli_knobs import knob_overrides as ko

    parser = cli.build_parser()
    args = parser.parse_args(["run", "--config", str(config), "--lr", "5e-4", "--rank", "2"])
    spec = load_config(config, ko(args)).expand()[0]
    assert spec.train["lr"] == 5e-4 and spec.adapter["r"] == 2 and spec.train["batch_size"] == 8


@pytest.mark.parametrize("bad", ["bayeslora.tau", "tau=3", ".tau=3"])
def test_malformed_param_is_one_line_exit_2(capsys, bad):
    code, _, err = run(capsys, "run", "--methods", "lora", "--param", bad, "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "METHOD.KEY=VALUE" in err


def test_unknown_param_name_is_rejected_before_any_trial(capsys, tmp_path):
    code, _, err = run(
        capsys, "run", "--methods", "bayeslora", "--param", "bayeslora.taux=1", "--output", str(tmp_path / "r")
    )
    assert code == 2 and "taux" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_list_methods_params_prints_every_field_with_type_default_help(capsys):
    from lrvd.registry import get_method

    code, out, _ = run(capsys, "list-methods", "--params", "bayeslora")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("  ")}
    fields = dataclasses.fields(get_method("bayeslora").Params)
    assert set(lines) == {f.name for f in fields}
    tau = lines["tau"].split()
    assert tau[1] == "float" and tau[2] == "3.0" and "log alpha" in lines["tau"]
    assert lines["prune_start"].split()[1:5] == ["float", "|", "None", "None"]


def test_list_methods_params_all_covers_every_method(capsys):
    from lrvd.registry import list_methods

    code, out, _ = run(capsys, "list-methods", "--params")
    assert code == 0
    heads = [
        line.split()[0]
        for line in out.splitlines()
        if line and not line.startswith(" ") and not line.startswith("set with")
    ]
    assert heads == list_methods()
    assert "  criterion" in out and "  kl_lr" in out  # AdaLoRA-IVON's and BLoB's own knobs


def test_list_methods_params_unknown_method_is_one_line_exit_2(capsys):
    code, out, err = run(capsys, "list-methods", "--params", "nope")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "unknown method 'nope'" in err and "bayeslora" in err


def test_run_help_shows_defaults_and_lists_train_and_adapter_keys(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    from lrvd.protocol import AdapterConfig, TrainConfig

    for prefix, cls in (("train", TrainConfig), ("adapter", AdapterConfig)):
        for f in dataclasses.fields(cls):
            assert f"{prefix}.{f.name} " in out
    assert "train.warmup_ratio" in out and "0.06" in out.split("train.warmup_ratio")[1].splitlines()[0]
    assert "(built-in default: minilm)" in " ".join(out.split())
    for flag in ("--lr", "--batch-size", "--rank", "--target-modules", "--param"):
        assert flag in out


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    from importlib import metadata

    from lrvd_bench.provenance import suite_commit

    expected = f"bench {metadata.version('lrvd-bench')} (commit {suite_commit()})"
    assert done.value.code == 0 and capsys.readouterr().out.strip() == expected


def test_run_and_cost_spell_the_common_knobs_alike():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    flags = {name: {s for a in sub[name]._actions for s in a.option_strings} for name in ("run", "cost")}
    for flag in ("--lr", "--batch-size", "--rank", "--target-modules", "--param"):
        assert flag in flags["run"] and flag in flags["cost"], flag
    assert "--rank" in sub["cost"].format_help() and "--r " not in sub["cost"].format_help()
