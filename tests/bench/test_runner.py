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

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ray = pytest.importorskip("ray")

from lrvd_bench import cli  # noqa: E402
from lrvd_bench.config import load_config  # noqa: E402
from lrvd_bench.runner import resume_sweep, run_sweep  # noqa: E402
from lrvd_bench.trial import run_trial  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (≈7 s to start on 2 cores)."""
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        started = True
    # Trials defined in this test module must travel to Ray workers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    if started:
        ray.shutdown()


def fake_body(spec, trial_dir, progress, *, calls: str, fail: tuple[str, int] | None = None):
    """A trial without training: logs the call, fails on demand, returns a plausible row."""
    with open(calls, "a") as fh:
        fh.write(spec.trial_id + "\n")
    with open(calls + ".pids", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    if fail and (spec.method, spec.seed) == fail:
        raise RuntimeError("boom: deliberate failure")
    accuracy = 0.5 + 0.1 * spec.seed + (0.05 if spec.method == "lora" else 0.0)
    return {
        "trial_id": spec.trial_id, "method": spec.method, "task": spec.task, "model": spec.model, "seed": spec.seed,
        "config_hash": spec.config_hash, "status": "ok", "error": "", "accuracy": accuracy, "ece": 0.1, "nll": 1.0,
        "brier": 0.5, "mcc": 0.2, "learned": True, "effective_rank": 8, "trainable_params": 100, "n_eval": 100,
        "train_time_s": 1.0, "node": ray.util.get_node_ip_address(),
    }


def fake_trial(calls: Path, fail=None):
    body = functools.partial(fake_body, calls=str(calls), fail=fail)
    return functools.partial(run_trial, body=body)


def _config(tmp_path: Path, **overrides):
    base = {"methods": "lora,bayeslora", "tasks": "arc-e", "seeds": [0, 1], "cpus_per_trial": 1,
            "gpus_per_trial": 0, "device": "cpu", "output": str(tmp_path / "run")}
    base.update(overrides)
    return load_config(None, base)


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_others_finish(ray_session, tmp_path):
    calls = tmp_path / "calls.txt"
    outcome = run_sweep(_config(tmp_path), trial_fn=fake_trial(calls, fail=("bayeslora", 1)), check=False)
    assert (outcome.n_ok, outcome.n_failed, outcome.n_unfinished) == (3, 1, 0)
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
    rerun = _calls(calls)[len(before):]
    assert not set(rerun) & finished, "finished trials must not run again"
    assert set(rerun) | finished == {r for r in pd.read_csv(second.run_dir / "trials.csv")["trial_id"]}


@pytest.mark.slow
def test_random_search_space_is_sampled_by_ray_and_recorded(ray_session, tmp_path):
    calls = tmp_path / "calls.txt"
    config = _config(tmp_path, methods="lora", seeds=[0], num_samples=2,
                     search_space={"train.lr": {"loguniform": [1e-4, 1e-2]}, "adapter.r": {"grid_search": [4, 8]}})
    outcome = run_sweep(config, trial_fn=fake_trial(calls), check=False)
    assert (outcome.n_ok, outcome.n_failed) == (4, 0)
    trials = pd.read_csv(outcome.run_dir / "trials.csv")
    points = [json.loads(p) for p in trials["search_point"]]
    assert sorted(p["adapter.r"] for p in points) == [4, 4, 8, 8]
    assert all(1e-4 <= p["train.lr"] <= 1e-2 for p in points)
    specs = [json.loads((outcome.run_dir / "trials" / t / "spec.json").read_text()) for t in trials["trial_id"]]
    assert all(s["train"]["lr"] == p["train.lr"] and s["adapter"]["r"] == p["adapter.r"]
               for s, p in zip(specs, points))
    board = pd.read_csv(outcome.run_dir / "leaderboard.csv")
    assert len(board) == 4 and "search_point" in board.columns


def test_resume_of_a_folder_without_a_sweep_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("methods: lora\n")
    assert cli.main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to resume" in err[0]


# -- end to end on a tiny model --------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_mc_model(tmp_path_factory) -> Path:
    """A 2-layer BertForMultipleChoice (random weights) + the MiniLM tokenizer, saved like a checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMultipleChoice

    from lrvd_bench.backbones import resolve_model_path

    out = tmp_path_factory.mktemp("tiny-bert-mc")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    BertForMultipleChoice(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _tiny_args(model: Path, output: Path, *extra: str) -> list[str]:
    return ["run", "--methods", "lora,mc-dropout-lora", "--task", "arc-c", "--seeds", "0,1", "--model", str(model),
            "--limit-train", "32", "--limit-eval", "32", "--max-steps", "3", "--max-length", "32", "--device", "cpu",
            "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--output", str(output),
            "--set", "train.batch_size=4", "n_samples=2", *extra]


@pytest.mark.slow
def test_bench_run_end_to_end_writes_leaderboard_with_documented_columns(ray_session, tiny_mc_model, tmp_path):
    from lrvd_bench.leaderboard import COLUMNS

    run_dir = tmp_path / "e2e"
    assert cli.main(_tiny_args(tiny_mc_model, run_dir)) == 0
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert sorted(board["method"]) == ["lora", "mc-dropout-lora"]
    assert set(COLUMNS) - {"search_point"} <= set(board.columns)
    assert (board["n_seeds"] == 2).all() and (board["task"] == "arc-c").all()
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "ok").all() and (trials["n_eval"] == 32).all()
    folder = run_dir / "trials" / trials["trial_id"].iloc[0]
    for name in ("result.json", "spec.json", "ranks.csv", "train_log.csv", "predictions.npz", "log.txt"):
        assert (folder / name).is_file(), name
    assert (folder / "adapter" / "adapter_model.safetensors").is_file() and (folder / "adapter" / "lrvd_adapter.json").is_file()
    assert sorted(p.name for p in (run_dir / "figures").glob("*.png")) == [
        "accuracy_vs_ece_arc-c.png", "effective_rank_arc-c.png", "paired_differences_arc-c.png",
        "reliability_arc-c.png"]
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
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # Ray registers the node under the machine's IP whatever --node-ip-address says here, so ask
        # the cluster which node it has (this also waits until the head is up).
        probe = ("import json, ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
                 "print(json.dumps([[n['NodeID'], n['NodeManagerAddress']] for n in ray.nodes()]))" % port)
        listed = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180)
        assert listed.returncode == 0, listed.stderr[-2000:]
        [(node_id, node_ip)] = json.loads(listed.stdout.strip().splitlines()[-1])
        run_dir = tmp_path / "cluster"
        args = _tiny_args(tiny_mc_model, run_dir, "--address", f"127.0.0.1:{port}")
        args[args.index("lora,mc-dropout-lora")] = "lora"
        args[args.index("0,1")] = "0"
        done = subprocess.run([str(BIN / "bench"), *args], env=env, capture_output=True, text=True, timeout=600,
                              cwd=REPO)
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
