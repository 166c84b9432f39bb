"""Tasks: bundled counts and labels, data-dir and hub sources, carved splits, one-line offline errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from lrvd.errors import LRVDError
from lrvd_bench.tasks import TASKS, get_task, list_tasks
from lrvd_bench.tasks import base as task_base
from lrvd_bench.tasks.base import BUNDLED_DATA_DIR, Carve

# name: (n_train, n_eval, n_classes, kind, carved) — counts from packages/bench/src/lrvd_bench/DATA.md
EXPECTED = {
    "arc-c": (1119, 299, 5, "multiple_choice", False),
    "arc-e": (2251, 570, 5, "multiple_choice", False),
    "obqa": (4957, 500, 4, "multiple_choice", False),
    "wg-s": (640, 507, 2, "multiple_choice", True),  # carved from dev 1267: 760 pool (S keeps 640) / 507
    "wg-m": (760, 507, 2, "multiple_choice", True),
    "boolq": (1962, 1308, 2, "classification", True),  # carved from dev 3270
    "cola": (8551, 1043, 2, "classification", False),
}


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _bundled_rows(folder: str, stem: str, n: int | None = None) -> list[dict]:
    with (BUNDLED_DATA_DIR / folder / f"{stem}.jsonl").open() as fh:
        rows = [json.loads(line) for line in fh]
    return rows[:n] if n else rows


def test_registry_lists_every_builtin_task_and_rejects_unknown_names():
    assert set(EXPECTED) <= set(list_tasks())
    with pytest.raises(LRVDError, match="unknown task 'arc-x'; valid choices: .*arc-c"):
        get_task("arc-x")
    for name in EXPECTED:
        task = get_task(name)
        assert task.name == name and task.description and "\n" not in task.description
    assert TASKS.kind == "task"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_task_loads_with_documented_counts_and_label_ranges(name):
    n_train, n_eval, n_classes, kind, carved = EXPECTED[name]
    task = get_task(name)
    train, eval_ = task.load("train"), task.load("eval")
    assert (len(train), len(eval_), task.n_classes, task.kind) == (n_train, n_eval, n_classes, kind)
    for ex in train + eval_:
        assert 2 <= len(ex.choices) <= task.n_classes
        assert 0 <= ex.label < len(ex.choices)
        assert ex.question and ex.id
    assert len({ex.label for ex in train}) >= 2
    note = task.split_note()
    assert (note is not None) == carved
    if carved:
        pool = n_train if name != "wg-s" else 760
        assert note == f"carved from dev: {n_train} train / {n_eval} eval (seed 0)"
        assert pool + n_eval == {"wg-s": 1267, "wg-m": 1267, "boolq": 3270}[name]


def test_arc_numeric_and_letter_answer_keys_map_to_choice_positions():
    task = get_task("arc-e")
    rows = _bundled_rows("arc-easy", "train")
    examples = task.load("train")
    numeric = [(r, ex) for r, ex in zip(rows, examples) if r["answerKey"].isdigit()]
    assert numeric, "ARC-E train has NYSEDREGENTS items with 1-4 labels"
    for r, ex in numeric + list(zip(rows, examples))[:50]:
        assert r["choices"]["label"][ex.label] == r["answerKey"]
        assert ex.choices == r["choices"]["text"] and ex.id == r["id"]
    five = [ex for ex in get_task("arc-c").load("eval") if len(ex.choices) == 5]
    assert five and any(ex.label == 4 for ex in five)  # ARC-C validation has an "E" answer


def test_test_split_is_loadable_for_arc_and_obqa_but_not_for_carved_tasks():
    assert len(get_task("arc-c").load("test")) == 1172
    assert len(get_task("obqa").load("test")) == 500
    with pytest.raises(LRVDError, match="unknown split"):
        get_task("cola").load("test")
    with pytest.raises(LRVDError, match="unknown split"):
        get_task("arc-c").load("dev")


def test_carved_split_is_disjoint_seeded_and_shared_between_wg_s_and_wg_m():
    wg_s, wg_m = get_task("wg-s"), get_task("wg-m")
    s_train = {ex.id for ex in wg_s.load("train")}
    s_eval = {ex.id for ex in wg_s.load("eval")}
    m_train = {ex.id for ex in wg_m.load("train")}
    assert not s_train & s_eval and not m_train & s_eval
    assert s_train < m_train  # WG-S ⊂ WG-M offline, like the nested real training sets
    assert s_eval == {ex.id for ex in wg_m.load("eval")}
    assert len(m_train | s_eval) == 1267
    assert [ex.id for ex in wg_s.load("eval")] == [ex.id for ex in wg_s.load("eval")]  # reproducible
    other = {ex.id for ex in wg_s.load("eval", seed=1)}
    assert other != s_eval and len(other) == len(s_eval)
    assert wg_s.split_note(seed=1) == "carved from dev: 640 train / 507 eval (seed 1)"


def test_carve_indices_partition_the_dev_set():
    train, eval_ = Carve(train_fraction=0.6).indices(10, seed=3)
    assert len(train) == 6 and len(eval_) == 4 and sorted(train + eval_) == list(range(10))
    train_capped, eval_capped = Carve(train_fraction=0.6, max_train=4).indices(10, seed=3)
    assert eval_capped == eval_ and set(train_capped) < set(train) and len(train_capped) == 4


def test_boolq_and_cola_records_convert_to_binary_examples():
    boolq = get_task("boolq").load("eval")[0]
    assert boolq.choices == ["False", "True"] and boolq.context
    rows = _bundled_rows("boolq", "validation")
    by_question = {r["question"]: r for r in rows}
    assert boolq.label == int(by_question[boolq.question]["answer"])
    superglue = get_task("boolq").convert({"question": "q", "passage": "p", "label": "false", "idx": 7}, "x")
    assert (superglue.label, superglue.id) == (0, "7")
    cola = get_task("cola").load("eval")
    assert sum(ex.label for ex in cola) == 719  # acceptable sentences in GLUE dev


def test_data_dir_with_task_folder_or_flat_files_is_used_before_the_bundled_copy(tmp_path):
    rows = _bundled_rows("arc-easy", "train", 12)
    _write_jsonl(tmp_path / "arc-easy" / "train.jsonl", rows)
    _write_jsonl(tmp_path / "arc-easy" / "validation.jsonl", rows[:5])
    task = get_task("arc-e")
    assert len(task.load("train", data_dir=tmp_path)) == 12
    assert len(task.load("eval", data_dir=tmp_path / "arc-easy")) == 5
    assert task.resolve_source(tmp_path).kind == "data_dir"
    assert task.split_note(tmp_path) is None


def test_data_dir_with_only_a_dev_file_is_carved(tmp_path):
    _write_jsonl(tmp_path / "validation.jsonl", _bundled_rows("winogrande", "validation", 100))
    task = get_task("wg-m")
    train, eval_ = task.load("train", data_dir=tmp_path), task.load("eval", data_dir=tmp_path)
    assert (len(train), len(eval_)) == (60, 40)
    assert task.split_note(tmp_path) == "carved from dev: 60 train / 40 eval (seed 0)"


def test_missing_data_dir_or_files_are_one_line_errors_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(LRVDError) as err:
        get_task("arc-c").load("train", data_dir=missing)
    assert str(missing) in _one_line(err)
    with pytest.raises(LRVDError) as err:
        get_task("cola").load("train", data_dir=tmp_path)
    assert str(tmp_path) in _one_line(err) and "train.jsonl" in str(err.value)
    (tmp_path / "train.jsonl").write_text("{not json\n")
    (tmp_path / "validation.jsonl").write_text("")
    with pytest.raises(LRVDError) as err:
        get_task("cola").load("train", data_dir=tmp_path)
    assert "not JSON Lines" in _one_line(err)


def test_unknown_source_is_rejected():
    with pytest.raises(LRVDError, match="unknown data source 'web'"):
        get_task("cola").load("train", source="web")


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """``datasets.load_dataset`` answering hub requests from the bundled JSONL (via the json builder)."""
    import datasets

    real = datasets.load_dataset
    calls = []
    folders = {"allenai/ai2_arc": {"ARC-Challenge": "arc-challenge", "ARC-Easy": "arc-easy"}}

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if path == "json":
            return real(path, name, split=split, **kwargs)
        folder = folders[path][name]
        files = str(BUNDLED_DATA_DIR / folder / f"{split}.jsonl")
        return real("json", data_files={split: files}, split=split, cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_source_calls_load_dataset_with_the_hub_id_config_and_split(fake_hub):
    task = get_task("arc-c")
    hub = task.load("eval", source="hub")
    assert ("allenai/ai2_arc", "ARC-Challenge", "validation") in fake_hub
    assert [(ex.question, ex.choices, ex.label) for ex in hub] == [
        (ex.question, ex.choices, ex.label) for ex in task.load("eval")
    ]
    assert task.split_note(source="hub") is None


def test_auto_source_falls_back_to_the_hub_only_without_a_local_copy(fake_hub, monkeypatch, tmp_path):
    monkeypatch.setattr(task_base, "BUNDLED_DATA_DIR", tmp_path / "empty")
    task = get_task("arc-e")
    assert task.resolve_source().kind == "hub"
    assert len(task.load("train")) == 2251
    assert fake_hub == [("allenai/ai2_arc", "ARC-Easy", "train")]
    with pytest.raises(LRVDError, match="no local copy .*use --data-dir"):
        task.load("train", source="local")


def test_hub_records_in_the_hub_schema_convert_like_bundled_ones():
    obqa = get_task("obqa").convert(
        {
            "id": "7-1",
            "question_stem": "The sun is",
            "choices": {"text": ["a", "b", "c", "d"], "label": list("ABCD")},
            "answerKey": "C",
        },
        "x",
    )
    assert (obqa.question, obqa.label) == ("The sun is", 2)
    wg = get_task("wg-s").convert({"sentence": "A _ b", "option1": "x", "option2": "y", "answer": "2"}, "train-0")
    assert (wg.label, wg.id) == (1, "train-0")


def test_unreachable_hub_without_local_copy_is_a_one_line_offline_error(monkeypatch, tmp_path):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/winogrande' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(task_base, "BUNDLED_DATA_DIR", tmp_path / "empty")
    for source in ("auto", "hub"):
        with pytest.raises(LRVDError) as err:
            get_task("wg-s").load("train", source=source)
        message = _one_line(err)
        assert "allenai/winogrande" in message and message.endswith("offline: use --data-dir")


def test_encoder_and_causal_formatting_per_task():
    wg = get_task("wg-s")
    ex = wg.convert(
        {"sentence": "Sarah beat Maria so _ won.", "option1": "Sarah", "option2": "Maria", "answer": "1"}, "i"
    )
    assert wg.encoder_inputs(ex) == [("Sarah beat Maria so Sarah", "won."), ("Sarah beat Maria so Maria", "won.")]
    assert wg.causal_prompt(ex) == (
        "Select one of the choices that answers the following question: Sarah beat Maria so _ won. "
        "Choices: A. Sarah B. Maria Answer:"
    )
    assert wg.option_words() == ["A", "B"] and get_task("arc-c").option_words() == list("ABCDE")
    boolq = get_task("boolq")
    bq = boolq.load("eval")[0]
    assert boolq.encoder_inputs(bq) == [(bq.question, bq.context)]
    assert boolq.causal_prompt(bq).startswith(f"Answer the question with only True or False: {bq.question} Context: ")
    assert boolq.option_words() == ["False", "True"]
    arc = get_task("arc-e").load("eval")[0]
    assert get_task("arc-e").encoder_inputs(arc) == [(arc.question, c) for c in arc.choices]


def test_bundled_files_match_the_checksums_and_counts_in_data_md():
    data_md = (BUNDLED_DATA_DIR.parent / "DATA.md").read_text()
    rows = re.findall(r"^\| `((?:[\w-]+/)+\w+\.jsonl)` \| (\d+) \| (\d+) \| `([0-9a-f]{64})` \|$", data_md, re.M)
    files = sorted(str(p.relative_to(BUNDLED_DATA_DIR)) for p in BUNDLED_DATA_DIR.rglob("*.jsonl"))
    assert sorted(r[0] for r in rows) == files and len(files) == 19
    for name, records, size, digest in rows:
        blob = (BUNDLED_DATA_DIR / name).read_bytes()
        assert (blob.count(b"\n"), len(blob), hashlib.sha256(blob).hexdigest()) == (int(records), int(size), digest)
