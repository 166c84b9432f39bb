"""``bench analyze RUN_DIR``: post-hoc analyses of a finished (or partial) run, one module each.

============== ====================================== ==============================================
analysis       reads                                  writes (under OUT/<analysis>/)
============== ====================================== ==============================================
rank_dynamics  trials/*/ranks.csv                     rank per layer / module type × step heatmaps,
                                                      effective rank mean ± std over seeds
tau_sweep      spec.json + adapter/ (BayesLoRA),      accuracy / ECE / effective rank per τ of the
               rebuilds backbone and eval loader      pruned mean model (no retraining)
gauge          adapter/ (LRVD A_mu, B_mu, log σ²)     energy curves SVD vs log-α vs random order, AUC
calibration    trials/*/predictions.npz               reliability diagrams, confidence histograms,
                                                      ECE with bootstrap CI
snr            adapter/ (μ, IVON σ) of adalora,       Spearman ρ of SNR vs |μ| (vs sensitivity when
               adalora-ivon                           saved) per module
============== ====================================== ==============================================

An analysis whose inputs are absent is skipped with a one-line note; an analysis that fails is
reported with a one-line note too — ``analyze_run`` never raises for a run directory's content. An
unknown analysis name in ``only`` is the caller's mistake: a one-line ``BenchError`` before any work.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from lrvd_bench.analyze.common import SkipAnalysis, load_trials

ANALYSES = ("rank_dynamics", "tau_sweep", "gauge", "calibration", "snr")


def analyze_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    only: Sequence[str] | None = None,
    taus: Sequence[float] | None = None,
    n_boot: int = 1000,
    n_perm: int = 200,
    log: Callable[[str], None] = print,
) -> dict[str, list[Path] | str]:
    """Run every analysis (or ``only`` those) on ``run_dir``; outputs under ``out_dir``
    (default ``RUN_DIR/analysis``). Returns analysis → written files, or the note of a skip."""
    from importlib import import_module

    from lrvd_bench.errors import unknown_choice

    for name in only or ():
        if name not in ANALYSES:
            raise unknown_choice("analysis", name, ANALYSES)
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "analysis"
    trials = load_trials(run_dir)
    results: dict[str, list[Path] | str] = {}
    for name in only or ANALYSES:
        try:
            if not trials:
                raise SkipAnalysis(f"no trials in {run_dir / 'trials'}")
            module = import_module(f"lrvd_bench.analyze.{name}")
            kwargs = {
                "tau_sweep": {"taus": tuple(taus)} if taus else {},
                "gauge": {"n_perm": n_perm},
                "calibration": {"n_boot": n_boot},
            }.get(name, {})
            out = module.run(trials, out_dir / name, **kwargs)
            files, notes = out if isinstance(out, tuple) else (out, [])
            for note in notes:
                log(note)
            results[name] = files
            log(f"{name}: {len(files)} file(s) in {out_dir / name}")
        except SkipAnalysis as skip:
            results[name] = str(skip)
            log(f"{name}: skipped: {skip}")
        except Exception as err:  # never crash the whole command on one analysis
            results[name] = f"failed: {type(err).__name__}: {str(err).strip()[:200]}"
            log(f"{name}: failed: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            (out_dir / name).mkdir(parents=True, exist_ok=True)
            (out_dir / name / "error.txt").write_text(traceback.format_exc())
    return results


__all__ = ["ANALYSES", "SkipAnalysis", "analyze_run"]
