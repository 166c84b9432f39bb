"""Per-method selection on the validation split, then the final stage (lrvd_bench.selection).

The sweep tests use a cheap trial body whose validation NLL is a known function of the learning
rate; the leak test trains a tiny BERT for real and poisons the evaluation labels.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from test_runner import InterruptAfter, ray_session  # noqa: E402,F401

from lrvd_bench import cli  # noqa: E402
from lrvd_bench.config import load_config  # noqa: E402
from lrvd_bench.selection import choose, grid_points, selection_specs  # noqa: E402
from lrvd_bench.sweep import resume_sweep, run_sweep  # noqa: E402
from lrvd_bench.trial import run_trial  # noqa: E402


@pytest.fixture
def by_value(ray_session):  # noqa: F811
    """This module's trial bodies travel to Ray workers by value (workers cannot import tests)."""
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


#: lora's validation NLL is lowest at lr 3e-3; bayeslora's is flat (a tie: the first grid point wins)
def val_nll(method: str, lr: float) -> float:
    return abs(lr - 3e-3) * 100 + 1.0 if method == "lora" else 1.5


def selection_body(spec, trial_dir, progress, report=None, *, calls: str):
    with open(calls, "a") as fh:
        fh.write(f"{spec.trial_id} {spec.stage}\n")
    row = {"status": "ok", "error": "", "n_eval": 10}
    if spec.stage == "selection":
        return {**row, "val_nll": val_nll(spec.method, spec.train["lr"]), "val_accuracy": 0.5}
    return {**row, "accuracy": 0.3 + spec.train["lr"], "ece": 0.1, "nll": 1.2}


def _config(tmp_path: Path, **overrides):
    base = {
        "methods": "lora,bayeslora",
        "tasks": "arc-e",
        "seeds": [0, 1],
        "cpus_per_trial": 1,
        "gpus_per_trial": 0,
        "device": "cpu",
        "output": str(tmp_path / "run"),
        "max_concurrent_trials": 1,
        "selection": {
            "search_space": {
                "lora": {"train.lr": [1e-3, 3e-3, 1e-2]},
                "bayeslora": {"train.lr": [1e-3, 3e-3], "kl_scale": [1e-6]},
            },
            "metric": "val_nll",
            "seeds": [0],
        },
    }
    base.update(overrides)
    return load_config(None, base)


def test_grid_points_keep_the_written_order_and_name_method_params():
    points = grid_points("bayeslora", {"train.lr": [1e-3, 3e-3], "kl_scale": [1e-6, 1e-5]})
    assert points == [
        {"train.lr": 1e-3, "method_params.bayeslora.kl_scale": 1e-6},
        {"train.lr": 1e-3, "method_params.bayeslora.kl_scale": 1e-5},
        {"train.lr": 3e-3, "method_params.bayeslora.kl_scale": 1e-6},
        {"train.lr": 3e-3, "method_params.bayeslora.kl_scale": 1e-5},
    ]


def test_choose_takes_the_best_mean_and_breaks_ties_towards_the_earlier_point(tmp_path):
    config = _config(
        tmp_path,
        seeds=[0],
        selection={
            "search_space": {"lora": {"train.lr": [1e-3, 2e-3, 3e-3]}},
            "metric": "val_accuracy",
            "seeds": [0, 1],
        },
    )
    specs = selection_specs(config)
    assert {s.stage for s in specs} == {"selection"} and len(specs) == 6
    # mean val_accuracy per lr: 1e-3 -> 0.6, 2e-3 -> 0.7 (tie), 3e-3 -> 0.7 (tie, later: loses)
    scores = {(1e-3, 0): 0.5, (1e-3, 1): 0.7, (2e-3, 0): 0.7, (2e-3, 1): 0.7, (3e-3, 0): 0.6, (3e-3, 1): 0.8}
    for spec in specs:
        folder = tmp_path / "run" / "trials" / spec.trial_id
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(
            json.dumps({"config_hash": spec.config_hash, "val_accuracy": scores[(spec.train["lr"], spec.seed)]})
        )
    chosen = choose(tmp_path / "run", config, specs)["arc-e"]["lora"]
    assert chosen["point"] == {"train.lr": 2e-3} and chosen["score"] == pytest.approx(0.7)
    assert [s["score"] for s in chosen["scores"]] == pytest.approx([0.6, 0.7, 0.7])


def test_methods_trained_as_lora_take_loras_training_point_but_not_its_own_params(tmp_path):
    """Temperature scaling, Laplace-LoRA and the ensemble post-process a LoRA adapter: without a grid
    of their own they get LoRA's chosen lr (so the ensemble can reuse LoRA's trials); LoRA's own
    method_params and an explicitly gridded method are left alone."""
    from lrvd_bench.selection import final_specs

    config = _config(
        tmp_path,
        methods="lora,lora-temp-scaling,laplace-lora,lora-ensemble,mc-dropout-lora",
        seeds=[0],
        selection={
            "search_space": {
                "lora": {"train.lr": [1e-3, 3e-3], "lora_dropout": [0.0]},
                "lora-temp-scaling": {"train.lr": [1e-2]},
            },
            "seeds": [0],
        },
    )
    specs = selection_specs(config)
    for spec in specs:
        folder = tmp_path / "run" / "trials" / spec.trial_id
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(
            json.dumps({"config_hash": spec.config_hash, "val_nll": val_nll(spec.method, spec.train["lr"])})
        )
    chosen = choose(tmp_path / "run", config, specs)["arc-e"]
    assert chosen["lora"]["point"] == {"train.lr": 3e-3, "method_params.lora.lora_dropout": 0.0}
    for method in ("laplace-lora", "lora-ensemble"):
        assert chosen[method]["point"] == {"train.lr": 3e-3} and "lora's choice" in chosen[method]["note"]
    assert chosen["lora-temp-scaling"]["point"] == {"train.lr": 1e-2}  # its own grid wins
    assert "mc-dropout-lora" not in chosen  # trained differently (dropout): config values
    lrs = {s.method: s.train["lr"] for s in final_specs(config, {"arc-e": chosen})}
    assert lrs["laplace-lora"] == lrs["lora-ensemble"] == lrs["lora"] == 3e-3
    assert lrs["mc-dropout-lora"] == config.train.lr != 3e-3


def test_a_choice_at_the_edge_of_its_grid_is_flagged_in_the_summary():
    """3+ numeric values, chosen the largest (or smallest, whatever the written order): flagged; a
    middle value, a two-value grid or a non-numeric key: not."""
    from lrvd_bench.selection import summary_lines

    def choice(point, grid):
        return {"point": point, "score": 1.25, "metric": "val_nll", "scores": [{"point": p} for p in grid]}

    lrs = [{"train.lr": v} for v in (2e-3, 1e-3, 4e-3)]  # written out of order: 4e-3 is the top edge
    chosen = {
        "arc-e": {
            "lora": choice({"train.lr": 4e-3}, lrs),
            "blob": choice({"train.lr": 2e-3}, lrs),
            "adalora": choice(
                {"method_params.adalora.lr": 1e-2}, [{"method_params.adalora.lr": v} for v in (1e-2, 2e-2, 4e-2)]
            ),
            "bayeslora": choice({"train.lr": 1e-3}, [{"train.lr": v} for v in (1e-3, 2e-3)]),
        }
    }
    lines = dict(zip(chosen["arc-e"], summary_lines(chosen)))
    assert lines["lora"].endswith("at the edge of its grid in train.lr: the best value may lie beyond")
    assert lines["adalora"].endswith("at the edge of its grid in lr: the best value may lie beyond")
    assert "edge" not in lines["blob"] and "edge" not in lines["bayeslora"]


@pytest.mark.parametrize(
    "selection, fragment",
    [
        ({"search_space": {"lora": {"train.lr": [1e-3]}}, "metric": "accuracy"}, "unknown selection metric 'accuracy'"),
        ({"search_space": {"blob": {"train.lr": [1e-3]}}}, "unknown method in selection.search_space: 'blob'"),
        ({"search_space": {"lora": {"train.lrr": [1e-3]}}}, "unknown selection.search_space.lora key 'train.lrr'"),
        (
            {"search_space": {"lora": {"train.lr": 1e-3}}},
            "selection.search_space.lora.train.lr must be a non-empty list",
        ),
        ({"search_space": {"lora": {"train.lr": [1e-3]}}, "seed": [0]}, "unknown selection key 'seed'"),
    ],
)
def test_bad_selection_is_one_line_before_any_trial(capsys, tmp_path, selection, fragment):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"methods": ["lora", "bayeslora"], "selection": selection}))
    code = cli.main(["run", "--config", str(config), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_unknown_method_hyper_parameter_in_selection_fails_before_any_trial(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {"methods": ["lora", "bayeslora"], "selection": {"search_space": {"bayeslora": {"kl_scal": [1e-6]}}}}
        )
    )
    code = cli.main(["run", "--config", str(config), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "kl_scal" in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_selection_then_final_stage_and_resume_across_both(by_value, tmp_path):
    """Interrupted inside the selection stage, resumed: no trial runs twice, lora's final seeds use
    the lr with the lowest validation NLL, bayeslora (a tie) the first grid point; trials.csv marks
    the stages and the leaderboard holds the final rows with their selected values."""
    calls = tmp_path / "calls.txt"
    trial_fn = functools.partial(run_trial, body=functools.partial(selection_body, calls=str(calls)))
    first = run_sweep(_config(tmp_path), trial_fn=trial_fn, callbacks=[InterruptAfter(2)], check=False)
    assert first.interrupted and not (first.run_dir / "selection.json").exists()
    second = resume_sweep(first.run_dir, trial_fn=trial_fn)
    assert second.exit_code == 0
    ran = [line.split() for line in calls.read_text().splitlines()]
    assert len(ran) == len({t for t, _ in ran}) == 5 + 4, "every trial exactly once: 5 selection + 4 final"
    chosen = json.loads((first.run_dir / "selection.json").read_text())["arc-e"]
    assert chosen["lora"]["point"] == {"train.lr": 3e-3}
    assert chosen["bayeslora"]["point"] == {"train.lr": 1e-3, "method_params.bayeslora.kl_scale": 1e-6}
    trials = pd.read_csv(first.run_dir / "trials.csv")
    assert sorted(trials["stage"].value_counts().items()) == [("final", 4), ("selection", 5)]
    final = trials[trials["stage"] == "final"]
    for _, row in final.iterrows():
        spec = json.loads((first.run_dir / "trials" / row["trial_id"] / "spec.json").read_text())
        assert spec["train"]["lr"] == (3e-3 if row["method"] == "lora" else 1e-3) and spec["seed"] in (0, 1)
    board = pd.read_csv(first.run_dir / "leaderboard.csv").set_index("method")
    assert json.loads(board.loc["lora", "search_point"]) == {"train.lr": 0.003}
    assert board.loc["lora", "n_seeds"] == 2 and len(board) == 2
    assert (
        "selected for lora on arc-e: train.lr=0.003 (val_nll 1.0000)" in (first.run_dir / "leaderboard.md").read_text()
    )
    # a rebuilt leaderboard (bench leaderboard) keeps the selected values, once
    assert cli.main(["leaderboard", str(first.run_dir)]) == 0
    assert (first.run_dir / "leaderboard.md").read_text().count("selected for lora on arc-e: train.lr=0.003") == 1


def _poisoned_copy(src: Path, dst: Path) -> Path:
    """ARC-Challenge files with every evaluation answer moved to another choice."""
    shutil.copytree(src, dst)
    lines = []
    for line in (dst / "validation.jsonl").read_text().splitlines():
        record = json.loads(line)
        labels = record["choices"]["label"]
        record["answerKey"] = labels[(labels.index(record["answerKey"]) + 1) % len(labels)]
        lines.append(json.dumps(record))
    (dst / "validation.jsonl").write_text("\n".join(lines) + "\n")
    return dst


@pytest.mark.slow
def test_selection_never_reads_the_evaluation_split(tiny_mc_model, tmp_path, monkeypatch):  # noqa: F811 (fixture)
    """Real selection trials on a tiny BERT: poisoning the evaluation labels changes no validation
    score and no selected value, and the evaluation split is never loaded at all."""
    import lrvd_bench
    from lrvd_bench.tasks.base import Task

    clean = tmp_path / "clean"
    shutil.copytree(Path(lrvd_bench.__file__).parent / "data" / "arc-challenge", clean)
    poisoned = _poisoned_copy(clean, tmp_path / "poisoned")
    assert (clean / "validation.jsonl").read_text() != (poisoned / "validation.jsonl").read_text()
    loads = []
    real_load = Task.load

    def guarded_load(self, split, *args, **kwargs):
        loads.append(split)
        if split == "eval":
            raise AssertionError("a selection trial loaded the evaluation split")
        return real_load(self, split, *args, **kwargs)

    monkeypatch.setattr(Task, "load", guarded_load)
    chosen = {}
    for name, data_dir in (("clean", clean), ("poisoned", poisoned)):
        config = load_config(
            None,
            {
                "methods": "lora",
                "tasks": "arc-c",
                "model": str(tiny_mc_model),
                "data_dir": str(data_dir),
                "limit_train": 40,
                "max_length": 32,
                "device": "cpu",
                "train": {"max_steps": 3, "batch_size": 4},
                "output": str(tmp_path / name),
                "selection": {"search_space": {"lora": {"train.lr": [1e-4, 3e-2]}}, "metric": "val_nll"},
            },
        )
        specs = selection_specs(config)
        for spec in specs:
            run_trial(spec, tmp_path / name / "trials" / spec.trial_id)
        chosen[name] = choose(tmp_path / name, config, specs)["arc-c"]["lora"]
    assert loads and "eval" not in loads
    assert chosen["clean"]["point"] == chosen["poisoned"]["point"]
    assert [s["score"] for s in chosen["clean"]["scores"]] == [s["score"] for s in chosen["poisoned"]["scores"]]
    assert chosen["clean"]["scores"][0]["score"] != chosen["clean"]["scores"][1]["score"]
