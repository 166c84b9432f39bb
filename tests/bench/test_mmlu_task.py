"""MMLU college chemistry / physics: evaluation-only tasks on the bundled test splits, BLoB's zero-shot
prompt, a local copy that needs only the eval file, the hub path, and the refusal to train on them."""

from __future__ import annotations

import hashlib
import json

import pytest

from lrvd.errors import LRVDError
from lrvd_bench import cli
from lrvd_bench.tasks import base as task_base
from lrvd_bench.tasks import get_task, list_tasks, trainable_tasks
from lrvd_bench.tasks.base import BUNDLED_DATA_DIR
from lrvd_bench.trial import data_fingerprint

# name: (subject, test questions) — the official MMLU test sizes
MMLU = {"mmlu-chem": ("college_chemistry", 100), "mmlu-phy": ("college_physics", 102)}


def _raw_test_rows(subject: str) -> list[dict]:
    with (BUNDLED_DATA_DIR / "mmlu" / subject / "test.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("name", sorted(MMLU))
def test_bundled_test_split_converts_to_the_raw_choices_and_answer_index(name):
    subject, n = MMLU[name]
    task = get_task(name)
    assert (task.n_classes, task.kind, task.hub_id, task.hub_config, task.eval_only) == (
        4,
        "multiple_choice",
        "cais/mmlu",
        subject,
        True,
    )
    rows, examples = _raw_test_rows(subject), task.load("eval")
    assert len(rows) == len(examples) == n
    for i, (row, ex) in enumerate(zip(rows, examples, strict=True)):
        assert row["subject"] == subject
        assert (ex.question, ex.choices, ex.label, ex.context) == (row["question"], row["choices"], row["answer"], None)
        assert ex.id == f"{subject}-test-{i}"
    assert len({ex.label for ex in examples}) == 4  # every letter is a gold answer somewhere


def test_causal_prompt_is_blobs_zero_shot_mmlu_prompt():
    task = get_task("mmlu-chem")
    first = task.load("eval")[0]
    assert task.causal_prompt(first) == (
        "Return the label of the correct answer for the question below.\n"
        "\n"
        "Question: The rate, r, of a zero-order chemical reaction A → B can be expressed as which of the following?\n"
        "Choices:\n"
        "A) r = k ln[A]\n"
        "B) r = k [A]^2\n"
        "C) r = k [A]\n"
        "D) r = k\n"
        "Answer:"
    )
    assert first.label == 3  # "r = k": a zero-order rate does not depend on [A]
    assert task.option_words() == ["A", "B", "C", "D"]
    assert task.encoder_inputs(first) == [(first.question, c) for c in first.choices]


def test_a_record_without_four_choices_or_with_an_answer_out_of_range_is_one_line():
    task = get_task("mmlu-phy")
    for record in (
        {"question": "q", "subject": "college_physics", "choices": ["a", "b", "c"], "answer": 0},
        {"question": "q", "subject": "college_physics", "choices": ["a", "b", "c", "d"], "answer": 4},
    ):
        with pytest.raises(LRVDError, match="college_physics-test-7 has .* expected 4 choices"):
            task.convert(record, "test-7")


def test_eval_only_tasks_refuse_the_train_split_and_are_not_trainable():
    for name in MMLU:
        with pytest.raises(LRVDError) as err:
            get_task(name).load("train")
        assert str(err.value) == f"task {name!r} is evaluation-only (no training split)"
        with pytest.raises(LRVDError, match="unknown split"):
            get_task(name).load("test")  # eval *is* the test split; no second name for it
    trainable = trainable_tasks()
    assert set(trainable) == set(list_tasks()) - set(MMLU)
    assert {"arc-c", "arc-e", "obqa"} <= set(trainable)
    assert not any(get_task(n).eval_only for n in trainable)


def test_a_data_dir_with_only_the_test_file_is_enough(tmp_path):
    rows = _raw_test_rows("college_physics")[:7]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    nested = tmp_path / "nested" / "mmlu" / "college_physics"
    nested.mkdir(parents=True)
    (nested / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]), encoding="utf-8")
    task = get_task("mmlu-phy")
    for root, folder, n in ((flat, flat, 7), (tmp_path / "nested", nested, 3)):
        src = task.resolve_source(root)
        assert (src.kind, src.location, src.carved) == ("data_dir", str(folder), False)
        examples = task.load("eval", data_dir=root)
        assert [(ex.question, ex.label) for ex in examples] == [(r["question"], r["answer"]) for r in rows[:n]]
        assert task.split_note(root) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LRVDError) as err:
        task.resolve_source(empty)
    assert str(err.value) == f"task 'mmlu-phy': {empty} lacks test.jsonl"


def test_data_fingerprint_hashes_the_eval_file_of_an_eval_only_task_and_train_then_eval_otherwise():
    source, digest = data_fingerprint(get_task("mmlu-chem"), None)
    blob = (BUNDLED_DATA_DIR / "mmlu" / "college_chemistry" / "test.jsonl").read_bytes()
    assert (source, digest) == ("bundled:college_chemistry", hashlib.sha256(blob).hexdigest())
    obqa = b"".join((BUNDLED_DATA_DIR / "openbookqa" / f).read_bytes() for f in ("train.jsonl", "validation.jsonl"))
    assert data_fingerprint(get_task("obqa"), None) == ("bundled:openbookqa", hashlib.sha256(obqa).hexdigest())


def test_without_a_local_copy_the_hub_is_asked_for_the_subject_config_and_test_split(monkeypatch, tmp_path):
    """``datasets.load_dataset`` answering from the bundled JSONL through the real json builder."""
    import datasets

    real, calls = datasets.load_dataset, []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        files = str(BUNDLED_DATA_DIR / "mmlu" / name / f"{split}.jsonl")
        return real("json", data_files={split: files}, split=split, cache_dir=str(tmp_path / "hf"))

    bundled = get_task("mmlu-chem").load("eval")
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(task_base, "BUNDLED_DATA_DIR", tmp_path / "no-bundle")
    task = get_task("mmlu-chem")
    assert task.resolve_source().describe() == "hub:cais/mmlu/college_chemistry"
    assert task.load("eval") == bundled
    assert calls == [("cais/mmlu", "college_chemistry", "test")]


def test_list_tasks_marks_the_evaluation_only_tasks(capsys):
    assert cli.main(["list-tasks"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in list_tasks():
        assert lines[name].endswith("[evaluation only]") == (name in MMLU), lines[name]
