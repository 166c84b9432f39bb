"""The numbers behind docs/statistics.md: how the seed-aware interval behaves, and what it costs.

    uv run python tools/bootstrap_calibration.py                      # simulations only (about a minute)
    uv run python tools/bootstrap_calibration.py --run RUN_DIR --streams 10 [--reference METHOD]

1. False-positive rate per test, at level 95 %, of three seed-level intervals when the per-seed
   differences are pure seed noise (normal): the plain percentile bootstrap over seeds, the
   t-calibrated one the leaderboard uses (:func:`lrvd_bench.seed_bootstrap.seed_scale`), and Student's t.
2. The smallest difference, in standard deviations of the per-seed difference, that can be starred at
   the first Holm step of a table of m tests with S seeds (question noise left out).
3. With ``--run``: per compared row, the resamples the leaderboard chose, the estimated Monte-Carlo
   standard error of every seed-aware interval end, and the standard deviation of that end over
   ``--streams`` independent random streams; and the CPU time of the paired columns.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from scipy import stats

from lrvd_bench.seed_bootstrap import quantile_mc_se, seed_scale


def false_positive_rates(n_seeds: int, experiments: int = 2000, n_resamples: int = 4000) -> dict[str, float]:
    rng = np.random.default_rng(n_seeds)
    draws = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    lam = seed_scale(n_seeds)
    t = stats.t.ppf(0.975, n_seeds - 1)
    hits = {"percentile": 0, "t-calibrated": 0, "Student t": 0}
    for _ in range(experiments):
        d = rng.normal(size=n_seeds)
        m = d.mean()
        lo, hi = np.quantile(d[draws].mean(1), [0.025, 0.975])
        hits["percentile"] += lo > 0 or hi < 0
        hits["t-calibrated"] += m + lam * (lo - m) > 0 or m + lam * (hi - m) < 0
        hits["Student t"] += abs(m) > t * d.std(ddof=1) / math.sqrt(n_seeds)
    return {k: v / experiments for k, v in hits.items()}


def detectable(n_seeds: int, n_tests: int) -> float:
    """|Δ| / SD(per-seed Δ) needed to pass Holm's first step (α/m) with a t interval over S seeds."""
    return stats.t.ppf(1 - 0.05 / n_tests / 2, n_seeds - 1) / math.sqrt(n_seeds)


def run_mc_error(run_dir: Path, streams: int, reference: str | None = None) -> None:
    from lrvd_bench.leaderboard import build_leaderboard, gather_rows, run_reference
    from lrvd_bench.paired import PAIRED_METRICS, resample_questions, score_trial
    from lrvd_bench.paired_table import pair, two_levels

    reference = reference or run_reference(run_dir)
    rows = gather_rows(run_dir)
    start = time.process_time()
    board = build_leaderboard(rows, run_dir, reference)
    print(f"build_leaderboard with paired columns: {time.process_time() - start:.1f} s CPU")
    trials = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("stage", "") != "selection":
            trials.setdefault(r["method"], {})[int(r["seed"])] = run_dir / "trials" / r["trial_id"] / "predictions.npz"
    loaded: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def predictions(file: Path) -> tuple[np.ndarray, np.ndarray]:
        if file not in loaded:
            with np.load(file) as data:
                loaded[file] = (data["probs"], data["labels"])
        return loaded[file]

    print("method | metric | resamples | estimated MC SE (lo, hi) | SD over streams (lo, hi)")
    for _, row in board[board["delta_accuracy"].notna()].iterrows():
        n_resamples = int(row["delta_resamples"])
        ends = {m: [] for m in PAIRED_METRICS}
        for stream in range(streams):
            scored, index = {}, {}  # one resample draw per question count in this stream
            for method in (row["method"], reference):
                scored[method] = {}
                for seed, file in trials[method].items():
                    probs, labels = predictions(file)
                    if len(labels) not in index:
                        index[len(labels)] = resample_questions(len(labels), n_resamples, seed=stream)
                    scored[method][seed] = score_trial(probs, labels, index[len(labels)])
            _, _, own, ref = pair(scored[row["method"]], scored[reference])
            for m, tl in two_levels(own, ref, stream).items():
                ends[m].append(tl.interval())
                if stream == 0:
                    values = tl.resampled()
                    levels = tl.quantile_levels(values, 0.05)
                    ends[m + "_mc"] = [quantile_mc_se(values, q) for q in levels]
        for m in PAIRED_METRICS:
            sd = np.std(np.array(ends[m]), axis=0, ddof=1)
            est = ends[m + "_mc"]
            print(f"{row['method']} | {m} | {n_resamples} | {est[0]:.5f}, {est[1]:.5f} | {sd[0]:.5f}, {sd[1]:.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--reference", help="method to compare with (default: the run's reference)")
    args = parser.parse_args()
    print("False-positive rate per test (normal seed noise only, 2000 experiments, 95 % intervals):")
    for n_seeds in (2, 3, 5, 10):
        rates = false_positive_rates(n_seeds)
        print(f"  S = {n_seeds:2d}: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    print("Smallest starred |Δ| in SDs of the per-seed difference (Holm's first step, t interval):")
    for n_seeds in (3, 5, 10):
        print(f"  S = {n_seeds:2d}: " + ", ".join(f"m = {m}: {detectable(n_seeds, m):.1f}" for m in (1, 4, 32)))
    if args.run:
        run_mc_error(args.run, args.streams, args.reference)


if __name__ == "__main__":
    main()
