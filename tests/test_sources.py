"""Sources: the three data sets from their original files, seeded splits, merging, bad raw input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinythinker.errors import TinyThinkerError
from tinythinker.data.sources import Question, check_no_leakage, load_questions


def test_csqa_sizes_and_seeded_validation(raw_dir):
    qs = load_questions("csqa", raw_dir / "csqa", seed=42)
    assert qs.raw_counts == {"train": 9741, "dev": 1221}
    assert qs.sizes() == {"train": 8520, "validation": 1221, "test": 1221}
    again = load_questions("csqa", raw_dir / "csqa", seed=42)
    other = load_questions("csqa", raw_dir / "csqa", seed=7)
    ids = lambda s: {q.id for q in s.splits["validation"]}  # noqa: E731
    assert ids(qs) == ids(again) and ids(qs) != ids(other)
    assert qs.source_revision == again.source_revision


def test_obqa_sizes_before_and_after_merging(raw_dir):
    qs = load_questions("obqa", raw_dir / "obqa")
    assert qs.raw_counts == {"train": 4957, "dev": 500, "test": 500}
    assert qs.sizes() == {"train": 4952, "validation": 500, "test": 500}
    assert len(qs.merged_duplicates) == 5
    kept = qs.by_id()
    for first, merged in qs.merged_duplicates:
        assert kept[merged] is kept[first] and merged in kept[first].aliases
    # options with ", " stay whole (REFERENCE 10): 55 train / 10 dev / 6 test questions have them
    with_commas = {s: sum(any(", " in o for o in q.options) for q in qs.splits[s]) for s in qs.splits}
    assert with_commas == {"train": 55, "validation": 10, "test": 6}


def test_obqa_recurring_stems_with_other_options_are_different_questions(raw_dir):
    qs = load_questions("obqa", raw_dir / "obqa")
    by_stem: dict[str, set] = {}
    for q in qs.all():
        by_stem.setdefault(q.stem, set()).add(q.split)
    assert sum(len(splits) > 1 for splits in by_stem.values()) == 34


def test_strategyqa_dedup_then_80_10_10(raw_dir):
    qs = load_questions("strategyqa", raw_dir / "strategyqa")
    assert qs.raw_counts == {"train": 2290}
    assert qs.merged_duplicates == [("881286dcdded13a96e3b", "ab1cd501d3590b46c009")]
    assert qs.sizes() == {"train": 1831, "validation": 229, "test": 229}
    assert all(q.options == ("yes", "no") for q in qs.all())


def test_world_sources(world):
    """A generated world's raw files load like the real ones, split by the data sets' own rules."""
    files = {name: json.loads((world(name) / "world.json").read_text())["files"] for name in ("csqa", "obqa", "strategyqa")}
    sizes = {name: load_questions(name, world(name) / "raw").sizes() for name in files}
    # csqa: test = the dev file; validation = the train file's questions marked as validation (the
    # world's held-out pairs; real data draws as many as dev has from train: test_csqa_* above)
    csqa = files["csqa"]
    assert sizes["csqa"] == {"train": csqa["train"], "validation": csqa["validation"], "test": csqa["dev"]}
    # obqa: the three files (train's exact duplicate merged)
    assert sizes["obqa"] == {"train": files["obqa"]["train"], "validation": files["obqa"]["dev"], "test": files["obqa"]["test"]}
    # strategyqa: one file (its duplicate merged) cut 80 / 10 / 10
    total = files["strategyqa"]["train"]
    assert sizes["strategyqa"] == {"train": total * 8 // 10, "validation": total // 10, "test": total // 10}


def test_leakage_is_refused():
    q = Question("a", "stem", ("x", "y"), "A")
    other = Question("b", "stem", ("x", "y"), "A")
    with pytest.raises(TinyThinkerError, match="in both train and test"):
        check_no_leakage({"train": [q], "test": [other]})


# --- bad raw input: one clear line naming file (and line) and the fix ---------------------------

@pytest.fixture
def csqa_raw(world) -> Path:
    """The raw folder of a small generated csqa world (read only)."""
    return world("csqa") / "raw"


def _csqa_folder(tmp_path: Path, train_lines: list[str], csqa_raw: Path) -> Path:
    folder = tmp_path / "csqa"
    folder.mkdir()
    (folder / "train_rand_split.jsonl").write_text("\n".join(train_lines) + "\n")
    (folder / "dev_rand_split.jsonl").write_text((csqa_raw / "dev_rand_split.jsonl").read_text())
    return folder


def _row(csqa_raw: Path, **change) -> str:
    row = json.loads((csqa_raw / "train_rand_split.jsonl").read_text().splitlines()[0])
    row.update(change)
    return json.dumps(row)


def _error(dataset: str, raw: Path) -> str:
    with pytest.raises(TinyThinkerError) as info:
        load_questions(dataset, raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_raw_file(tmp_path):
    folder = tmp_path / "csqa"
    folder.mkdir()
    assert "train_rand_split.jsonl: raw file not found" in _error("csqa", folder)
    assert "no such local folder" in _error("csqa", tmp_path / "absent")


def test_unreadable_raw_file(tmp_path, csqa_raw):
    folder = _csqa_folder(tmp_path, [_row(csqa_raw)], csqa_raw)
    (folder / "train_rand_split.jsonl").write_bytes(b'{"id": "\xff\xfe"}\n')
    assert "train_rand_split.jsonl: raw file is not UTF-8 text" in _error("csqa", folder)


def test_raw_line_not_json(tmp_path, csqa_raw):
    folder = _csqa_folder(tmp_path, [_row(csqa_raw), "{not json"], csqa_raw)
    assert f"{folder / 'train_rand_split.jsonl'}:2: not valid JSON" in _error("csqa", folder)


def test_missing_answer(tmp_path, csqa_raw):
    folder = _csqa_folder(tmp_path, [_row(csqa_raw, answerKey="")], csqa_raw)
    assert "train_rand_split.jsonl:1: question world-csqa-train-00000 has no answer" in _error("csqa", folder)


def test_answer_not_among_options(tmp_path, csqa_raw):
    folder = _csqa_folder(tmp_path, [_row(csqa_raw, answerKey="F")], csqa_raw)
    assert "has answer 'F', not one of its options A, B, C, D, E" in _error("csqa", folder)


def test_wrong_option_count(tmp_path, csqa_raw):
    row = json.loads(_row(csqa_raw))
    row["question"]["choices"] = row["question"]["choices"][:4]
    folder = _csqa_folder(tmp_path, [json.dumps(row)], csqa_raw)
    assert "has 4 options, this data set needs 5" in _error("csqa", folder)


def test_duplicates_with_different_answers_are_refused(tmp_path, csqa_raw):
    row = json.loads(_row(csqa_raw))
    other = next(x for x in "ABCDE" if x != row["answerKey"])
    folder = _csqa_folder(tmp_path, [_row(csqa_raw), _row(csqa_raw, id="copy", answerKey=other)], csqa_raw)
    assert "same question" in _error("csqa", folder) and "different answers" in _error("csqa", folder)


def test_strategyqa_bad_json(tmp_path):
    path = tmp_path / "strategyqa_train.json"
    path.write_text('[\n  {"qid": "x",\n  oops\n]')
    assert f"{path}:3: not valid JSON" in _error("strategyqa", tmp_path)


def test_unknown_dataset():
    with pytest.raises(TinyThinkerError, match="unknown data set 'sqa'"):
        load_questions("sqa", "x")
