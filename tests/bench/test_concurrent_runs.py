"""One run per folder, and preemption, with real processes and real signals.

A driver holds ``RUN_DIR/bench.lock`` (an OS lock) for the whole sweep: a second ``bench run
--output RUN_DIR`` or ``--resume RUN_DIR`` exits 2 naming the holder, and a SIGKILLed holder's lock
is gone with it. SIGTERM stops a sweep like Ctrl+C (finished trials kept, exit 143, the resume
command printed, no stack dump from Ray's handlers) and ``--resume`` finishes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lrvd_bench import cli
from lrvd_bench.errors import BenchError
from lrvd_bench.sweep.lock import OWNER_FILE, hold_run_dir

BIN = Path(sys.executable).parent
HOST = socket.gethostname()

# A process that holds a run directory's lock until it is killed.
HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from lrvd_bench.sweep.lock import hold_run_dir\n"
    "with hold_run_dir(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def _in_use(run_dir: Path, pid: int) -> str:
    """The one line a refused driver prints, as a regex."""
    return (
        rf"bench: error: run directory {re.escape(str(run_dir))} is in use by another bench run "
        rf"\(host {re.escape(HOST)}, pid {pid}, since [0-9-]+ [0-9:]+\); "
        r"wait for it to end, stop it, or choose another --output"
    )


def test_a_held_folder_refuses_a_second_driver_and_a_sigkilled_holder_blocks_nothing(tmp_path, tiny_mc_model, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BenchError, match=_in_use(run_dir, holder.pid)[len("bench: error: ") :]):
            with hold_run_dir(run_dir):
                pass
        # the CLI: one line, exit 2, before Ray starts
        args = ["run", "--methods", "lora", "--task", "arc-c", "--seeds", "0", "--model", str(tiny_mc_model)]
        assert cli.main([*args, "--output", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.fullmatch(_in_use(run_dir, holder.pid), err[0]), err
        assert not (run_dir / "config.yaml").exists()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        holder.kill()
    # the killed holder's record stays behind, but its lock died with it
    assert json.loads((run_dir / OWNER_FILE).read_text())["pid"] == holder.pid
    with hold_run_dir(run_dir):
        assert json.loads((run_dir / OWNER_FILE).read_text()) | {"since": ""} == {
            "host": HOST,
            "pid": os.getpid(),
            "since": "",
        }
    assert not (run_dir / OWNER_FILE).exists()  # a clean exit removes the record


def _hashes(run_dir: Path) -> dict[str, str]:
    return {
        p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run_dir / "trials").glob("*/result.json")
    }


def _bench(*args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RAY_memory_monitor_refresh_ms": "0",  # many tests share this machine: no OOM kills mid-test
    }
    return subprocess.Popen(
        [str(BIN / "bench"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _first_to_exit(procs: list[subprocess.Popen], timeout: float) -> tuple[subprocess.Popen, subprocess.Popen]:
    """(the one that exited first, the other)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                return proc, procs[1 - i]
        time.sleep(0.05)
    raise AssertionError("neither driver exited: the second one was not refused")


@pytest.mark.slow
def test_two_drivers_one_folder_then_sigterm_then_two_resumes(tiny_mc_model, tmp_path):
    """Two ``bench run --output X`` started together: one exits 2 naming the other. SIGTERM (to the
    driver alone, as Kubernetes sends it) after the first finished trial: exit 143, the resume command,
    no stack dump. Two ``--resume X`` together: one exits 2, the other finishes the sweep without
    re-running or rewriting the finished trial."""
    run_dir = tmp_path / "run"
    run = [
        "run",
        "--methods",
        "lora,mc-dropout-lora",
        "--task",
        "arc-c",
        "--seeds",
        "0,1",
        "--model",
        str(tiny_mc_model),
        "--limit-train",
        "64",
        "--limit-eval",
        "16",
        "--max-steps",
        "40",
        "--max-length",
        "32",
        "--device",
        "cpu",
        "--cpus-per-trial",
        "1",
        "--gpus-per-trial",
        "0",
        "--num-cpus",
        "1",
        "--max-concurrent-trials",
        "1",
        "--output",
        str(run_dir),
        "--set",
        "train.batch_size=4",
        "n_samples=2",
    ]
    procs = [_bench(*run), _bench(*run)]
    try:
        refused, driver = _first_to_exit(procs, timeout=300)
        lines = refused.communicate()[0].strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, lines
        assert re.fullmatch(_in_use(run_dir, driver.pid), lines[0]), lines

        deadline = time.time() + 600
        while not _hashes(run_dir):
            assert driver.poll() is None and time.time() < deadline, "the sweep ended before any trial finished"
            time.sleep(0.05)
        driver.send_signal(signal.SIGTERM)
        out = driver.communicate(timeout=300)[0]
        assert driver.returncode == 143, out[-3000:]
        assert f"bench: terminated (SIGTERM); continue with: bench run --resume {run_dir}" in out, out[-3000:]
        for dump in ("Traceback", "SIGTERM received", "***", "logging.cc"):
            assert dump not in out, out[-3000:]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    finished = _hashes(run_dir)
    assert 1 <= len(finished) < 4
    record = json.loads((run_dir / "run.json").read_text())
    assert len(record["attempts"]) == 1 and record["attempts"][0]["outcome"]["interrupted"] is True

    procs = [_bench("run", "--resume", str(run_dir)), _bench("run", "--resume", str(run_dir))]
    try:
        refused, driver = _first_to_exit(procs, timeout=300)
        lines = refused.communicate()[0].strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, lines
        assert re.fullmatch(_in_use(run_dir, driver.pid), lines[0]), lines
        out = driver.communicate(timeout=900)[0]
        assert driver.returncode == 0, out[-3000:]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    after = _hashes(run_dir)
    assert len(after) == 4 and {k: after[k] for k in finished} == finished
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "ok").all()
    record = json.loads((run_dir / "run.json").read_text())
    assert len(record["attempts"]) == 2 and record["attempts"][1]["outcome"]["interrupted"] is False


def test_sigterm_reaches_the_current_sigint_handler_and_else_unwinds_with_143(monkeypatch, capsys):
    """During Ray Tune's loop SIGTERM goes to Tune's SIGINT handler (which ends the experiment);
    elsewhere it raises ``Terminated``, which ``bench`` turns into exit 143 and one line."""
    from lrvd_bench.sweep.signals import sigterm_as_sigint

    calls, before = [], signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with sigterm_as_sigint() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs in the main thread, between bytecodes
        assert calls == [signal.SIGINT] and stop.terminated and stop.exit_code == 143
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGTERM) == before  # restored after the sweep

    def run_killed_before_tune(args):
        with sigterm_as_sigint():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setitem(cli.COMMANDS, "run", run_killed_before_tune)
    # outside Tune SIGINT is Python's handler (an earlier in-process Tune run in this session may have left its own)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["run"]) == 143
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip().splitlines() == ["bench: terminated (SIGTERM)"]


def _checkpoint_step(folder: Path) -> int:
    from lrvd.resumable import checkpoint_step

    with contextlib.suppress(OSError, RuntimeError):  # the folder is being replaced this instant
        return checkpoint_step(folder)
    return -1


def _stop_after_checkpoint(driver: subprocess.Popen, folder: Path, after: int, sig: int) -> str:
    """Send ``sig`` once ``folder`` holds a checkpoint later than step ``after``; the driver's output."""
    try:
        deadline = time.time() + 600
        while _checkpoint_step(folder) <= after:
            assert driver.poll() is None and time.time() < deadline, driver.communicate()[0][-3000:]
            time.sleep(0.05)
        if sig == signal.SIGKILL:
            os.killpg(driver.pid, sig)  # the driver and Ray, as the OOM killer or a lost node leave it
        else:
            driver.send_signal(sig)  # the driver alone, as Kubernetes and Slurm send it
        return driver.communicate(timeout=300)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_trial_stopped_mid_training_twice_resumes_from_its_checkpoints_to_the_uninterrupted_result(
    tiny_mc_model, tmp_path
):
    """``train.checkpoint_every``: the sweep gets SIGTERM once its one trial has written a training
    checkpoint; ``--resume`` continues the trial from it and gets SIGKILL (whole process group) after a
    later checkpoint; a second ``--resume`` finishes it from there. The metrics, predictions and training
    curve equal those of the same trial run in one go, and the trial records where it picked up."""
    run_dir = tmp_path / "run"
    steps, every = 600, 50
    run = [
        "run",
        "--methods",
        "bayeslora",
        "--task",
        "arc-c",
        "--seeds",
        "0",
        "--model",
        str(tiny_mc_model),
        "--limit-train",
        "64",
        "--limit-eval",
        "16",
        "--max-steps",
        str(steps),
        "--max-length",
        "32",
        "--device",
        "cpu",
        "--num-cpus",
        "1",
        "--output",
        str(run_dir),
        "--set",
        "train.batch_size=4",
        f"train.checkpoint_every={every}",
        "n_samples=3",
    ]
    folder = run_dir / "trials" / "*" / "checkpoint"
    driver = _bench(*run)
    deadline = time.time() + 600
    while not list(run_dir.glob("trials/*/spec.json")):
        assert driver.poll() is None and time.time() < deadline, driver.communicate()[0][-3000:]
        time.sleep(0.05)
    (trial,) = (run_dir / "trials").iterdir()
    folder = trial / "checkpoint"
    out = _stop_after_checkpoint(driver, folder, 0, signal.SIGTERM)
    assert driver.returncode == 143 and "continue with: bench run --resume" in out, out[-3000:]
    first_stop = _checkpoint_step(folder)
    assert not (trial / "result.json").exists(), "the trial finished before the signal: make it longer"
    assert 0 < first_stop < steps
    # Ray Tune holds its copy (the one it hands a trial it restarts itself), the latest only
    assert len(list(run_dir.glob("tune/*/checkpoint_*/train_state.pt"))) == 1

    driver = _bench("run", "--resume", str(run_dir))
    _stop_after_checkpoint(driver, folder, first_stop, signal.SIGKILL)
    second_stop = _checkpoint_step(folder)
    assert not (trial / "result.json").exists(), "the trial finished before the signal: make it longer"
    assert first_stop < second_stop < steps

    resumed = _bench("run", "--resume", str(run_dir))
    out = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, out[-3000:]
    row = json.loads((trial / "result.json").read_text())
    assert row["status"] == "ok" and row["resumed_from_step"] is not None
    assert second_stop <= row["resumed_from_step"] < steps
    assert not folder.exists()  # removed once the result is written

    from lrvd_bench.trial import run_trial

    control = tmp_path / "control"
    expected = run_trial(json.loads((trial / "spec.json").read_text()), control)
    assert expected["resumed_from_step"] is None
    for key in ("accuracy", "nll", "ece", "brier", "final_train_loss", "final_train_nll", "effective_rank", "steps"):
        assert row[key] == expected[key], key
    got, want = np.load(trial / "predictions.npz"), np.load(control / "predictions.npz")
    assert np.array_equal(got["probs"], want["probs"])
    columns = ["step", "epoch", "loss", "lr", "nll", "kl"]
    pd.testing.assert_frame_equal(
        pd.read_csv(trial / "train_log.csv")[columns], pd.read_csv(control / "train_log.csv")[columns]
    )


def test_a_checkpoint_ray_hands_back_replaces_only_an_older_one(tmp_path):
    """A trial Ray restarts gets its checkpoint from ``tune.get_checkpoint()``: it goes to the trial
    folder unless the folder already holds a later step (written after Ray's copy)."""
    import torch
    from ray import tune

    from lrvd.resumable import STATE_FILE
    from lrvd_bench.sweep.trainable import restore_ray_checkpoint

    def checkpoint_at(step: int) -> Path:
        folder = tmp_path / f"ray-{step}"
        folder.mkdir()
        torch.save({"step": step}, folder / STATE_FILE)
        return folder

    trial = tmp_path / "trial" / "checkpoint"
    restore_ray_checkpoint(None, trial)
    assert not trial.exists()
    restore_ray_checkpoint(tune.Checkpoint.from_directory(str(checkpoint_at(20))), trial)
    assert _checkpoint_step(trial) == 20
    restore_ray_checkpoint(tune.Checkpoint.from_directory(str(checkpoint_at(10))), trial)
    assert _checkpoint_step(trial) == 20
    restore_ray_checkpoint(tune.Checkpoint.from_directory(str(checkpoint_at(30))), trial)
    assert _checkpoint_step(trial) == 30 and not list(tmp_path.glob("trial/*.ray"))
