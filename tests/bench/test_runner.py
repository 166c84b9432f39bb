"""The sweep through Ray Tune on local CPU: failures are recorded, resume re-runs only unfinished
trials, the CLI end to end on a tiny model, and a run against a separate Ray cluster.

Ray starts once for the module (``ray_session``); trials use a cheap ``body`` except in the slow
end-to-end tests, which train a tiny BERT saved to disk with the MiniLM tokenizer.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from lrvd_bench import cli  # noqa: E402
from lrvd_bench.config import load_config  # noqa: E402
from lrvd_bench.sweep import resume_sweep, run_sweep  # noqa: E402
from lrvd_bench.trial import run_trial  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (≈7 s to start on 2 cores)."""
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        started = True
    # Trials defined in this test module must travel to Ray workers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    if started:
        ray.shutdown()


def fake_body(
    spec,
    trial_dir,
    progress,
    report=None,
    *,
    calls: str,
    fail: tuple[str, int] | None = None,
    steps: int = 0,
    sleep: float = 0.0,
    every: int = 1,
):
    """A trial without training: logs the call, reports ``steps`` progress records (``val_nll``
    falling with the step, higher for bayeslora), fails on demand, returns a plausible row."""
    import time

    for step in range(every, every * steps + 1, every):
        time.sleep(sleep)
        if report is not None:
            report(
                {
                    "step": step,
                    "total_steps": steps * every,
                    "loss": 1.0 / step,
                    "lr": 1e-3,
                    "val_nll": 1.0 / step + (1.0 if spec.method == "bayeslora" else 0.0),
                }
            )
    with open(calls, "a") as fh:
        fh.write(spec.trial_id + "\n")
    with open(calls + ".pids", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    if fail and (spec.method, spec.seed) == fail:
        raise RuntimeError("boom: deliberate failure")
    accuracy = 0.5 + 0.1 * spec.seed + (0.05 if spec.method == "lora" else 0.0)
    return {
        "trial_id": spec.trial_id,
        "method": spec.method,
        "task": spec.task,
        "model": spec.model,
        "seed": spec.seed,
        "config_hash": spec.config_hash,
        "status": "ok",
        "error": "",
        "accuracy": accuracy,
        "ece": 0.1,
        "nll": 1.0,
        "brier": 0.5,
        "mcc": 0.2,
        "learned": True,
        "effective_rank": 8,
        "trainable_params": 100,
        "n_eval": 100,
        "train_time_s": 1.0,
        "node": ray.util.get_node_ip_address(),
    }


def fake_trial(calls: Path, fail=None, **kwargs):
    body = functools.partial(fake_body, calls=str(calls), fail=fail, **kwargs)
    return functools.partial(run_trial, body=body)


def _config(tmp_path: Path, **overrides):
    base = {
        "methods": "lora,bayeslora",
        "tasks": "arc-e",
        "seeds": [0, 1],
        "cpus_per_trial": 1,
        "gpus_per_trial": 0,
        "device": "cpu",
        "output": str(tmp_path / "run"),
    }
    base.update(overrides)
    return load_config(None, base)


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_others_finish(ray_session, tmp_path, capfd):
    import io

    calls, console = tmp_path / "calls.txt", io.StringIO()
    outcome = run_sweep(
        _config(tmp_path), trial_fn=fake_trial(calls, fail=("bayeslora", 1)), check=False, stream=console
    )
    assert (outcome.n_ok, outcome.n_failed, outcome.n_unfinished) == (3, 1, 0)
    # one line for the failure: method, task, seed, the error's first line, where its traceback is
    [line] = [ln for ln in console.getvalue().splitlines() if "FAILED" in ln]
    error_txt = outcome.run_dir / "trials" / _config(tmp_path).expand()[3].trial_id / "error.txt"
    assert "bayeslora arc-e seed 1" in line and "RuntimeError: boom: deliberate failure" in line
    assert line.endswith(f"(traceback: {error_txt})") and "Traceback" in error_txt.read_text()
    printed = capfd.readouterr()
    assert "Traceback" not in console.getvalue() + printed.out + printed.err
    assert "boom" in (outcome.run_dir / "ray.log").read_text()  # Ray's own report went to the log
    assert outcome.exit_code == 1 and not outcome.interrupted
    trials = pd.read_csv(outcome.run_dir / "trials.csv")
    assert len(trials) == 4
    failed = trials[trials["status"] == "failed"]
    assert list(failed["method"]) == ["bayeslora"] and list(failed["seed"]) == [1]
    assert failed["error"].iloc[0] == "RuntimeError: boom: deliberate failure"
    board = pd.read_csv(outcome.run_dir / "leaderboard.csv")
    by_method = board.set_index("method")
    assert by_method.loc["bayeslora", "n_seeds"] == 1 and by_method.loc["bayeslora", "n_failed"] == 1
    assert by_method.loc["lora", "accuracy_mean"] == pytest.approx((0.55 + 0.65) / 2)
    assert (outcome.run_dir / "config.yaml").is_file() and (outcome.run_dir / "leaderboard.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("reuse", [True, False])
def test_reuse_actors_keeps_one_worker_process(ray_session, tmp_path, reuse):
    """reuse_actors: 4 sequential trials in one worker process; off: a fresh process each. A failure
    in a reused worker does not lose the other trials."""
    calls = tmp_path / "calls.txt"
    config = _config(tmp_path, max_concurrent_trials=1, reuse_actors=reuse)
    outcome = run_sweep(config, trial_fn=fake_trial(calls, fail=("lora", 0)), check=False)
    assert (outcome.n_ok, outcome.n_failed) == (3, 1)
    pids = Path(str(calls) + ".pids").read_text().split()
    assert len(pids) == 4
    # A failed trial ends its actor; the reused one serves the rest.
    assert len(set(pids)) <= 2 if reuse else len(set(pids)) == 4


class InterruptAfter(ray.tune.Callback):
    """Sends the driver SIGUSR1 (Ray Tune's graceful stop, like Ctrl+C) after ``n`` finished trials."""

    def __init__(self, n: int):
        self.n = n
        self.done = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done == self.n:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
def test_resume_reruns_only_unfinished_trials(ray_session, tmp_path):
    calls = tmp_path / "calls.txt"
    config = _config(tmp_path, max_concurrent_trials=1)
    first = run_sweep(config, trial_fn=fake_trial(calls), callbacks=[InterruptAfter(2)], check=False)
    assert first.interrupted and first.exit_code == 130
    finished = {json.loads(p.read_text())["trial_id"] for p in (first.run_dir / "trials").glob("*/result.json")}
    assert len(finished) >= 2 and len(finished) < 4
    before = _calls(calls)

    second = resume_sweep(first.run_dir, trial_fn=fake_trial(calls))
    assert (second.n_ok, second.n_failed, second.n_unfinished) == (4, 0, 0) and second.exit_code == 0
    rerun = _calls(calls)[len(before) :]
    assert not set(rerun) & finished, "finished trials must not run again"
    assert set(rerun) | finished == {r for r in pd.read_csv(second.run_dir / "trials.csv")["trial_id"]}


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (
            ["--cpus-per-trial", "3"],
            "cpus_per_trial 3 asks for more than this machine has: the largest node has 2 CPUs",
        ),
        (
            ["--gpus-per-trial", "1"],
            "gpus_per_trial 1 asks for more than this machine has: the largest node has 0 GPUs",
        ),
        (["--device", "cuda"], "device 'cuda' requested but CUDA is not available on this machine"),
    ],
)
def test_impossible_resources_fail_before_any_trial(ray_session, tmp_path, capsys, flags, fragment):
    out = tmp_path / "run"
    code = cli.main(["run", "--methods", "lora", "--seeds", "0", "--output", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not out.exists(), "nothing may be written before the sweep can start"


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--data-dir", "/no/such/dir"], "data dir /no/such/dir does not exist"),
        (["--model", "nobody-here/no-such-model"], "model 'nobody-here/no-such-model' is not a local directory"),
        (["--model", "./no/such/checkpoint"], "does not exist"),
    ],
)
def test_unreachable_data_or_model_fail_before_ray_starts(tmp_path, capsys, monkeypatch, flags, fragment):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    code = cli.main(["run", "--methods", "lora", "--seeds", "0", "--output", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not out.exists()


def _tensorboard_steps(folder: Path, tag: str) -> list[int]:
    """The global steps of the scalar points of ``tag`` in a trial's TensorBoard event files
    (TFRecord framing, read by hand)."""
    import struct

    from tensorboardX.proto import event_pb2

    steps = []
    for path in folder.glob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + length])
            steps += [int(event.step) for v in event.summary.value if v.tag == tag]
            i += 12 + length + 4
    return steps


def _tensorboard_points(folder: Path, tag: str) -> int:
    return len(_tensorboard_steps(folder, tag))


@pytest.mark.slow
def test_trials_report_progress_live_lines_and_curves(ray_session, tmp_path):
    """Every progress record reaches Ray Tune: live console lines per running trial, then the
    summary line; TensorBoard and progress.csv get one point per record, not one per trial."""
    import io

    calls, console = tmp_path / "calls.txt", io.StringIO()
    config = _config(tmp_path, methods="lora", seeds=[0], loggers=["csv", "tensorboard"])
    outcome = run_sweep(config, trial_fn=fake_trial(calls, steps=4), check=False, stream=console, live=True)
    assert outcome.exit_code == 0
    text = console.getvalue()
    for step in range(1, 5):
        assert f"… lora arc-e seed 0  step {step}/4  loss {1 / step:.4f}  val_nll {1 / step:.4f}  ETA" in text
    assert "\x1b[1F\x1b[J" in text  # the live line is redrawn in place
    assert text.index("step 4/4") < text.index("ok     lora arc-e seed 0")
    [folder] = (outcome.run_dir / "tune").glob("lora-arc-e-s0_*")
    progress = pd.read_csv(folder / "progress.csv")
    assert list(progress["step"].dropna()) == [1, 2, 3, 4] and len(progress) == 5  # + the final row
    assert _tensorboard_points(folder, "ray/tune/loss") == 4
    assert _tensorboard_points(folder, "ray/tune/val_nll") == 4


@pytest.mark.slow
def test_trackers_plot_against_the_optimizer_step(ray_session, tmp_path, monkeypatch):
    """Progress every 5 optimizer steps: TensorBoard and MLflow points sit at steps 5, 10, 15
    (Ray's report counter would put them at 1, 2, 3)."""
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = tmp_path / "calls.txt"
    config = _config(tmp_path, methods="lora", seeds=[0], loggers=["csv", "tensorboard", "mlflow"])
    outcome = run_sweep(config, trial_fn=fake_trial(calls, steps=3, every=5), check=False)
    assert outcome.exit_code == 0
    [folder] = (outcome.run_dir / "tune").glob("lora-arc-e-s0_*")
    assert sorted(_tensorboard_steps(folder, "ray/tune/loss")) == [5, 10, 15]
    [loss] = (outcome.run_dir / "mlruns").glob("*/*/metrics/loss")
    assert [int(line.split()[2]) for line in loss.read_text().splitlines()] == [5, 10, 15]


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_optional_trackers_get_every_progress_record_offline(ray_session, tmp_path, monkeypatch, tracker):
    """MLflow into a file store under the run directory, W&B with WANDB_MODE=offline: each logs the
    trial's loss once per progress record (skipped when the optional extra is not installed)."""
    pytest.importorskip(tracker)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = tmp_path / "calls.txt"
    config = _config(tmp_path, methods="lora", seeds=[0], loggers=["csv", tracker])
    outcome = run_sweep(config, trial_fn=fake_trial(calls, steps=3), check=False)
    assert outcome.exit_code == 0
    if tracker == "mlflow":
        [experiment] = [
            p.parent
            for p in (outcome.run_dir / "mlruns").glob("*/meta.yaml")
            if f"name: {outcome.run_dir.name}\n" in p.read_text()
        ]  # one experiment per run directory
        [loss] = experiment.glob("*/metrics/loss")
        values = [float(line.split()[1]) for line in loss.read_text().splitlines()]
        assert values == [1.0, 0.5, pytest.approx(1 / 3)]
    else:
        [offline] = (outcome.run_dir / "wandb").glob("offline-run-*")
        [log] = offline.glob("*.wandb")
        assert log.stat().st_size > 0


def test_wandb_logs_each_record_at_its_optimizer_step(monkeypatch, tmp_path):
    """W&B takes its step from ``training_iteration`` (Ray's report counter: 1, 2, 3); the suite's
    callback hands it the optimizer step of each record (5, 10, 15) and keeps the counter aside."""
    pytest.importorskip("wandb")
    from ray.air.integrations.wandb import WandbLoggerCallback

    from lrvd_bench.sweep.trackers import tracker_callbacks

    seen = []
    monkeypatch.setattr(WandbLoggerCallback, "log_trial_result", lambda self, it, trial, result: seen.append(result))
    monkeypatch.setenv("WANDB_MODE", "offline")
    [callback] = tracker_callbacks(_config(tmp_path, loggers=["wandb"]), tmp_path)
    assert isinstance(callback, WandbLoggerCallback)
    for i, step in enumerate((5, 10, 15), start=1):
        callback.log_trial_result(i, None, {"training_iteration": i, "timesteps_total": step, "loss": 1 / i})
    callback.log_trial_result(4, None, {"training_iteration": 4, "accuracy": 0.5})  # a stored row: no step
    assert [r["training_iteration"] for r in seen] == [5, 10, 15, 4]
    assert [r.get("report_index") for r in seen] == [1, 2, 3, None]


def test_a_tracker_without_its_extra_is_a_one_line_error(monkeypatch, tmp_path):
    import importlib.util

    from lrvd_bench.errors import BenchError
    from lrvd_bench.sweep.trackers import tracker_callbacks

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(
        BenchError, match="logger 'wandb' needs the optional extra: uv sync --all-packages --extra wandb"
    ):
        tracker_callbacks(_config(tmp_path, loggers=["csv", "wandb"]), tmp_path)


@pytest.mark.slow
def test_asha_stops_trials_early_on_the_validation_metric(ray_session, tmp_path):
    """One trial at a time: lora's val_nll is 1/step, bayeslora's 1 + 1/step; ASHA (grace 1 step)
    stops both bayeslora trials at the first rung, before they finish, and records them as stopped."""
    calls = tmp_path / "calls.txt"
    config = _config(tmp_path, scheduler="asha", max_concurrent_trials=1, train={"log_every": 1, "eval_every": 1})
    outcome = run_sweep(config, trial_fn=fake_trial(calls, steps=6, sleep=0.3), check=False)
    trials = pd.read_csv(outcome.run_dir / "trials.csv").set_index("method")
    assert sorted(trials.loc["lora", "status"]) == ["ok", "ok"]
    assert sorted(trials.loc["bayeslora", "status"]) == ["stopped", "stopped"]
    assert (trials.loc["bayeslora", "steps"] < 6).all()
    assert all(t.startswith("lora-") for t in _calls(calls)), "stopped trials must not reach their end"
    assert outcome.n_stopped == 2 and outcome.exit_code == 0


def test_live_train_log_grows_while_training(tmp_path):
    from lrvd_bench.trial import LiveTrainLog

    seen = []
    log = LiveTrainLog(tmp_path / "train_log.csv", 30, lambda: 7, seen.append)
    log({"step": 10, "epoch": 0, "loss": 1.3, "lr": 1e-3, "nll": 1.2})
    assert pd.read_csv(tmp_path / "train_log.csv")["step"].tolist() == [10]
    log({"step": 20, "epoch": 0, "loss": 1.1, "lr": 1e-3, "nll": 1.0})
    log({"step": 30, "epoch": 1, "loss": 0.9, "lr": 5e-4, "nll": 0.8, "val_nll": 1.05})  # a new column
    frame = pd.read_csv(tmp_path / "train_log.csv")
    assert frame["step"].tolist() == [10, 20, 30] and frame["loss"].tolist() == [1.3, 1.1, 0.9]
    assert frame["val_nll"].isna().tolist() == [True, True, False]
    assert [r["total_steps"] for r in seen] == [30] * 3 and [r["effective_rank"] for r in seen] == [7] * 3
    assert all(r["step_time_s"] >= 0 for r in seen) and seen[2]["lr"] == 5e-4


@pytest.mark.slow
def test_random_search_space_is_sampled_by_ray_and_recorded(ray_session, tmp_path):
    calls = tmp_path / "calls.txt"
    config = _config(
        tmp_path,
        methods="lora",
        seeds=[0],
        num_samples=2,
        search_space={"train.lr": {"loguniform": [1e-4, 1e-2]}, "adapter.r": {"grid_search": [4, 8]}},
    )
    outcome = run_sweep(config, trial_fn=fake_trial(calls), check=False)
    assert (outcome.n_ok, outcome.n_failed) == (4, 0)
    trials = pd.read_csv(outcome.run_dir / "trials.csv")
    points = [json.loads(p) for p in trials["search_point"]]
    assert sorted(p["adapter.r"] for p in points) == [4, 4, 8, 8]
    assert all(1e-4 <= p["train.lr"] <= 1e-2 for p in points)
    specs = [json.loads((outcome.run_dir / "trials" / t / "spec.json").read_text()) for t in trials["trial_id"]]
    assert all(s["train"]["lr"] == p["train.lr"] and s["adapter"]["r"] == p["adapter.r"] for s, p in zip(specs, points))
    board = pd.read_csv(outcome.run_dir / "leaderboard.csv")
    assert len(board) == 4 and "search_point" in board.columns


CHILD = Path(__file__).with_name("sweep_child.py")


def _hashes(run_dir: Path) -> dict[str, str]:
    import hashlib

    return {
        p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run_dir / "trials").glob("*/result.json")
    }


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_resume_after_a_kill_keeps_every_finished_trial(tmp_path, sig):
    """The sweep is killed (its whole process group, Ray included, as Ctrl+C, ``timeout`` and Slurm
    do) the moment its first trial has written result.json, i.e. before Ray's experiment state can
    know; resume must keep that result byte for byte, never run it again, and finish the other
    trials. After SIGKILL the dead driver's lock record stays behind and must not block the resume."""
    import time

    run_dir, calls = tmp_path / "run", tmp_path / "calls.txt"
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        # 8 test processes share this machine: Ray's memory monitor must not kill trials mid-test
        "RAY_memory_monitor_refresh_ms": "0",
    }
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(run_dir), str(calls)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not list((run_dir / "trials").glob("*/result.json")):
            assert child.poll() is None and time.time() < deadline, "the sweep ended before any trial finished"
            time.sleep(0.05)
        os.killpg(child.pid, sig)
        first_out = child.communicate(timeout=180)[0].decode()
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # whatever of our own process group is left
    if sig != signal.SIGKILL:
        assert child.returncode == 128 + sig and "continue with: bench run --resume" in first_out, first_out[-2000:]
        for dump in ("Traceback", "SIGTERM received", "***"):
            assert dump not in first_out, first_out[-2000:]
    else:
        assert json.loads((run_dir / "bench.lock.json").read_text())["pid"] == child.pid  # a stale record
    finished = _hashes(run_dir)
    ran_first = [line.split()[0] for line in calls.read_text().splitlines()]
    assert finished and set(finished) <= set(ran_first) and len(finished) < 4

    resumed = subprocess.run(
        [sys.executable, str(CHILD), str(run_dir), str(calls), "--resume"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    after = _hashes(run_dir)
    assert {k: after[k] for k in finished} == finished, "finished results must stay byte-identical"
    ran = [line.split()[0] for line in calls.read_text().splitlines()]
    rerun = ran[len(ran_first) :]
    assert not set(rerun) & set(finished), "a finished trial ran again"
    assert len(rerun) == len(set(rerun)) and set(rerun) | set(finished) == set(after) and len(after) == 4
    trials = pd.read_csv(run_dir / "trials.csv")
    assert (trials["status"] == "ok").all() and len(trials) == 4
    record = json.loads((run_dir / "run.json").read_text())
    assert len(record["attempts"]) == 2 and record["attempts"][1]["command"].endswith("--resume")
    assert record["attempts"][1]["outcome"] == {
        "ok": 4,
        "failed": 0,
        "stopped": 0,
        "unfinished": 0,
        "interrupted": False,
    }


def test_pending_specs_follow_the_trial_folders_not_ray(tmp_path):
    """A folder is finished when result.json carries the spec's hash (ok), or error.json / stopped.json
    does; failed ones run again only with retry_failed; a result for another hash does not count."""
    from lrvd_bench.sweep.resume import pending_specs

    specs = _config(tmp_path).expand()
    a, b, c, d = specs
    for spec, name, hash_ in (
        (a, "result.json", a.config_hash),
        (b, "error.json", b.config_hash),
        (c, "result.json", "0" * 12),
        (d, "stopped.json", d.config_hash),
    ):
        folder = tmp_path / "run" / "trials" / spec.trial_id
        folder.mkdir(parents=True)
        (folder / name).write_text(json.dumps({"config_hash": hash_}))
    run_dir = tmp_path / "run"
    assert pending_specs(run_dir, specs, [], 1) == [c]
    assert pending_specs(run_dir, specs, [], 1, retry_failed=True) == [b, c]
    assert pending_specs(run_dir, specs, [], 2) == [c, c]  # num_samples without random keys: repeats


def test_pending_specs_with_random_search_count_samples_per_spec(tmp_path):
    from lrvd_bench.sweep.resume import pending_specs

    config = _config(
        tmp_path, methods="lora", seeds=[0, 1], num_samples=3, search_space={"train.lr": {"loguniform": [1e-4, 1e-2]}}
    )
    s0, s1 = config.expand()
    for spec, lr in ((s0, 1e-3), (s0, 2e-3), (s1, 5e-4)):
        ran = spec.with_overrides({"train.lr": lr})
        folder = tmp_path / "run" / "trials" / ran.trial_id
        folder.mkdir(parents=True)
        (folder / "spec.json").write_text(json.dumps(ran.to_dict()))
        (folder / "result.json").write_text(json.dumps({"config_hash": ran.config_hash}))
    assert pending_specs(tmp_path / "run", [s0, s1], ["train.lr"], 3) == [s0, s1, s1]


def test_resume_of_a_folder_without_a_sweep_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("methods: lora\n")
    assert cli.main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to resume" in err[0]


# -- end to end on a tiny model --------------------------------------------------------------------
def _tiny_args(model: Path, output: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--methods",
        "lora,mc-dropout-lora",
        "--task",
        "arc-c",
        "--seeds",
        "0,1",
        "--model",
        str(model),
        "--limit-train",
        "32",
        "--limit-eval",
        "32",
        "--max-steps",
        "3",
        "--max-length",
        "32",
        "--device",
        "cpu",
        "--cpus-per-trial",
        "1",
        "--gpus-per-trial",
        "0",
        "--output",
        str(output),
        "--set",
        "train.batch_size=4",
        "n_samples=2",
        *extra,
    ]


@pytest.mark.slow
def test_bench_run_end_to_end_writes_leaderboard_with_documented_columns(ray_session, tiny_mc_model, tmp_path, capsys):
    import hashlib

    import lrvd_bench
    from lrvd_bench.leaderboard import COLUMNS

    run_dir = tmp_path / "e2e"
    assert cli.main(_tiny_args(tiny_mc_model, run_dir)) == 0
    printed = capsys.readouterr()
    assert "accuracy_mean" in printed.out and "mc-dropout-lora" in printed.out  # the leaderboard, at the end
    record = json.loads((run_dir / "run.json").read_text())
    assert record["command"].split()[:3] == ["bench", "run", "--methods"]  # as typed, not pytest's argv
    for key in ("started", "ended", "host", "python", "torch", "cuda", "cudnn", "git"):
        assert key in record, key
    assert set(record["versions"]) >= {
        "torch",
        "transformers",
        "peft",
        "ivon-opt",
        "laplace-torch",
        "ray",
        "numpy",
        "datasets",
    }
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    for path in (run_dir / "trials").glob("*/result.json"):  # no machine paths in the rows
        text = path.read_text()
        assert str(tmp_path) not in text and str(Path.home()) not in text and "/site-packages/" not in text, path
        row = json.loads(text)
        bundled = Path(lrvd_bench.__file__).parent / "data" / "arc-challenge"
        expected = hashlib.sha256((bundled / "train.jsonl").read_bytes() + (bundled / "validation.jsonl").read_bytes())
        assert row["data_source"] == "bundled:arc-challenge" and row["data_sha256"] == expected.hexdigest()
        assert row["model"] == f"local:{tiny_mc_model.name}"
    trials_text = (run_dir / "trials.csv").read_text()
    assert str(tmp_path) not in trials_text and "/site-packages/" not in trials_text
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert sorted(board["method"]) == ["lora", "mc-dropout-lora"]
    assert set(COLUMNS) - {"search_point"} <= set(board.columns)
    assert (board["n_seeds"] == 2).all() and (board["task"] == "arc-c").all()
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "ok").all() and (trials["n_eval"] == 32).all()
    folder = run_dir / "trials" / trials["trial_id"].iloc[0]
    for name in ("result.json", "spec.json", "ranks.csv", "train_log.csv", "predictions.npz", "log.txt"):
        assert (folder / name).is_file(), name
    assert (folder / "adapter" / "adapter_model.safetensors").is_file() and (
        folder / "adapter" / "lrvd_adapter.json"
    ).is_file()
    assert sorted(p.name for p in (run_dir / "figures").glob("*.png")) == [
        "accuracy_vs_ece_arc-c.png",
        "effective_rank_arc-c.png",
        "paired_differences_arc-c.png",
        "reliability_arc-c.png",
        "risk_coverage_arc-c.png",
    ]
    assert board.set_index("method").loc["mc-dropout-lora", "delta_n_seeds"] == 2  # paired with lora's seeds


@pytest.mark.slow
def test_bench_run_on_a_separate_ray_cluster_records_the_node(tiny_mc_model, tmp_path):
    """``ray start --head --block`` (our own process, stopped by its pid, never ``ray stop``, which
    would stop every Ray on the machine), then ``bench run --address`` from another process; the
    trial must have run on that cluster's node."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    # Own temp dir (short: Ray's socket paths are length-limited), so the cluster's address file
    # does not land in /tmp/ray/ray_current_cluster where every plain ray.init() would find it.
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Ray registers the node under the machine's IP whatever --node-ip-address says here, so ask
        # the cluster which node it has (this also waits until the head is up).
        probe = (
            f"import json, ray; ray.init(address='127.0.0.1:{port}', log_to_driver=False); "
            "print(json.dumps([[n['NodeID'], n['NodeManagerAddress']] for n in ray.nodes()]))"
        )
        listed = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180)
        assert listed.returncode == 0, listed.stderr[-2000:]
        [(node_id, node_ip)] = json.loads(listed.stdout.strip().splitlines()[-1])
        run_dir = tmp_path / "cluster"
        args = _tiny_args(tiny_mc_model, run_dir, "--address", f"127.0.0.1:{port}")
        args[args.index("lora,mc-dropout-lora")] = "lora"
        args[args.index("0,1")] = "0"
        done = subprocess.run(
            [str(BIN / "bench"), *args], env=env, capture_output=True, text=True, timeout=600, cwd=REPO
        )
        assert done.returncode == 0, done.stderr[-3000:]
        trials = pd.read_csv(run_dir / "trials.csv")
        assert list(trials["status"]) == ["ok"]
        assert list(trials["node_id"]) == [node_id] and list(trials["node"]) == [node_ip]
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
