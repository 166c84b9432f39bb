"""The methods × evaluation-sets view of a shifted run (lrvd_bench.shift_table)."""

from __future__ import annotations

import math

import pandas as pd

from lrvd_bench.shift_table import shift_markdown


def board_row(method, eval_task, acc, acc_std, significant=False, auroc=math.nan, n_eval=100):
    shift = "id" if eval_task == "obqa" else "ood"
    return {
        "task": "obqa",
        "eval_task": eval_task,
        "shift": shift,
        "method": method,
        "n_seeds": 5,
        "n_eval": n_eval,
        "accuracy_mean": acc,
        "accuracy_std": acc_std,
        "delta_accuracy_significant": significant,
        "ece_mean": 0.1,
        "ece_std": 0.01,
        "nll_mean": 1.3,
        "nll_std": math.nan,
        "ood_auroc_maxprob_mean": auroc,
        "ood_auroc_maxprob_std": 0.02 if shift == "ood" else math.nan,
        "ood_auroc_mi_mean": math.nan,
        "ood_auroc_mi_std": math.nan,
    }


def test_one_row_per_method_one_column_per_evaluation_set_with_the_paired_star():
    board = pd.DataFrame(
        [
            board_row("blob", "obqa", 0.46, 0.02),
            board_row("lora", "obqa", 0.44, 0.01),
            board_row("blob", "arc-c", 0.31, 0.03, significant=True, auroc=0.61),
            board_row("lora", "arc-c", 0.28, 0.02, auroc=0.66),
            board_row("lora", "mmlu-chem", 0.25, 0.04, auroc=0.8, n_eval=100),
        ]
    )
    text = "\n".join(shift_markdown(board))
    accuracy = [line for line in text.split("\n\n") if "accuracy ↑" in line][0].strip().splitlines()
    assert accuracy[0] == (
        "| trained on obqa: accuracy ↑ | seeds | obqa (id, n=100) | arc-c (n=100) | mmlu-chem (n=100) |"
    )
    # rows in the in-distribution order; a set a method was not scored on is –; * from the paired test
    assert accuracy[2] == "| blob | 5 | 0.460 ± 0.020 | 0.310 ± 0.030 * | – |"
    assert accuracy[3] == "| lora | 5 | 0.440 ± 0.010 | 0.280 ± 0.020 | 0.250 ± 0.040 |"
    auroc = [line for line in text.split("\n\n") if "OOD AUROC, −max p" in line][0].strip().splitlines()
    assert auroc[3] == "| lora | 5 | – | 0.660 ± 0.020 | 0.800 ± 0.020 |"  # no id-vs-id detection
    assert "NLL ↓" in text and "| lora | 5 | 1.300 | 1.300 | 1.300 |" in text  # one seed's std: none shown
    assert "OOD AUROC, MI" not in text  # a column no row has is left out


def test_no_shift_table_for_a_run_scored_on_its_own_task_only():
    board = pd.DataFrame([board_row("lora", "obqa", 0.44, 0.01)])
    assert shift_markdown(board) == []
