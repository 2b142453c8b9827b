"""The learnable world (``tinythinker.data.world``, ``tinythinker world``): reproducible, in the release
formats, balanced, without shortcuts, every fact taught and no combination asked twice; the CLI; a
world builds for every data set.

Expectations come from world.py itself (World, RELATIONS, the teacher's text), never from copies of
its wording, so that the teacher's phrasing can change without touching these tests."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations

import pytest
from click.testing import CliRunner

from tinythinker.cli import main
from tinythinker.artifacts import OWNER_MARK, OWNER_TEXT
from tinythinker.protocol import letters_for
from tinythinker.data.sources import check_no_leakage, get_spec, load_questions
from tinythinker.data.world import DEFAULT_QUESTIONS, HELD_OUT, MIN_ENTITIES, RELATIONS, TRAIN_VARIANTS, VALIDATION_HELD_OUT, World
from tinythinker.data.world import world_files

DATASETS = ("csqa", "obqa", "strategyqa")
SMALL = MIN_ENTITIES * len(RELATIONS)  # the minimum, 80
# Every held-out (kind, relation) fact is in some training rationale only when a kind has several
# entities: at the minimum (one entity a kind) none is; at 160 and 240 questions (csqa, seed 42) one
# fact's only teacher is the training question whose request failed on purpose. From 320 on, all are.
TAUGHT = 4 * SMALL
HELD_OUT_FILES = {"csqa": ("dev", "validation"), "obqa": ("dev", "test")}


def _raw_files(dataset: str, files: dict[str, str]) -> dict[str, list[tuple[str, tuple[str, ...], str]]]:
    """{raw file: [(stem, options, answer letter)]} read from a world's files, in file order."""
    out = {}
    for path, text in files.items():
        if not path.startswith("raw/"):
            continue
        if dataset == "strategyqa":
            out[path] = [(r["question"], ("yes", "no"), "A" if r["answer"] else "B") for r in json.loads(text)]
        else:
            rows = [json.loads(line) for line in text.splitlines()]
            out[path] = [(r["question"]["stem"], tuple(c["text"] for c in r["question"]["choices"]), r["answerKey"]) for r in rows]
    return out


def _teacher_texts(files: dict[str, str]) -> list[tuple[str, list[str]]]:
    """[(request text, [sample texts])] of teacher.jsonl, in file order (a failed request: no samples)."""
    out = []
    for line in files["teacher.jsonl"].splitlines():
        request, response = json.loads(line)
        samples = [c["message"]["content"] for c in response["choices"]] if isinstance(response, dict) else []
        out.append((json.dumps(request, ensure_ascii=False), samples))
    return out


# --- reproducible ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
def test_same_seed_same_bytes_other_seed_other_world(dataset):
    first = world_files(dataset, questions=SMALL)
    assert world_files(dataset, questions=SMALL) == first
    other = world_files(dataset, seed=7, questions=SMALL)
    assert set(other) == set(first) and all(other[path] != first[path] for path in first)
    assert World(7, SMALL).facts() != World(42, SMALL).facts()


def test_world_json_records_the_facts():
    meta = json.loads(world_files("obqa", questions=SMALL)["world.json"])
    world = World(42, SMALL)
    assert meta["seed"] == 42 and meta["pairs"] == SMALL and meta["entities"] == MIN_ENTITIES
    assert meta["questions"] == sum(meta["files"].values())
    assert meta["relations"] == list(RELATIONS) and meta["files"] == {s: len(q) for s, q in world.questions("obqa").items()}
    assert {k: meta[k] for k in ("kind_properties", "entity_kinds")} == world.facts()


# --- the files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
def test_every_file_loads_in_its_release_format(world, dataset):
    folder = world(dataset)
    meta = json.loads((folder / "world.json").read_text())
    qs = load_questions(dataset, folder / "raw")
    twins = {"csqa": 0, "obqa": 1, "strategyqa": 1}[dataset]  # the one exact duplicate the release has
    assert sum(qs.raw_counts.values()) == meta["questions"] + twins
    assert len(qs.merged_duplicates) == twins and sum(qs.sizes().values()) == meta["questions"]
    check_no_leakage(qs.splits)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("questions", [SMALL, TAUGHT])
def test_shuffled_letters_balance_gold_positions_in_every_file(dataset, questions):
    letters = letters_for(get_spec(dataset).n_options)
    for path, rows in _raw_files(dataset, world_files(dataset, questions=questions, defects=0, letters="shuffled")).items():
        unique = list(dict.fromkeys(rows))  # the release's exact duplicate counts once
        counts = Counter(answer for _, _, answer in unique)
        assert set(counts) <= set(letters), path
        spread = [counts[x] for x in letters]
        assert max(spread) - min(spread) <= 1, (path, spread)  # strategyqa: half "yes", half "no"


def test_fixed_letters_give_every_letter_as_many_values():
    for n_options in (5, 4):
        for relation, spec in RELATIONS.items():  # +-1: 10 values over 4 letters
            held = Counter(World.letter_index(relation, v, n_options) for v in spec.values)
            assert max(held.values()) - min(held.values()) <= 1, relation


def test_fixed_letters_keep_the_default_csqa_world_near_balanced():
    """Gold letters follow the values (uniform over kinds), so no letter is a useful guess."""
    for path, rows in _raw_files("csqa", world_files("csqa", defects=0)).items():
        counts = Counter(answer for _, _, answer in rows)
        assert max(counts.values()) <= 1.2 * len(rows) / 5, (path, counts)  # measured: dev 69 of 300, train 315 of 1,500


@pytest.mark.parametrize("dataset", ("csqa", "obqa"))
def test_no_stem_in_two_files(dataset):
    files = _raw_files(dataset, world_files(dataset, questions=TAUGHT, defects=0))
    stems = {path: {stem for stem, _, _ in rows} for path, rows in files.items()}
    for a, b in combinations(stems, 2):
        assert not stems[a] & stems[b], (a, b)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("questions", [SMALL, DEFAULT_QUESTIONS])
def test_held_out_pairs_asked_once_training_pairs_in_variants(dataset, questions):
    world = World(42, questions)
    by_file = world.questions(dataset)
    asked = Counter((wq.entity, wq.relation) for split in by_file.values() for wq in split)
    held = {(wq.entity, wq.relation) for split in HELD_OUT_FILES.get(dataset, ()) for wq in by_file[split]}
    assert set(asked) == {(e, r) for e in world.entities for r in RELATIONS}
    assert all(asked[pair] == 1 for pair in held)
    assert all(asked[pair] == TRAIN_VARIANTS[dataset] for pair in set(asked) - held)
    train = [(wq.question.stem, wq.question.options) for wq in by_file["train"]]
    assert len(set(train)) == len(train)  # variants differ in their options
    assert len(world.entities) == questions // len(RELATIONS)


def test_the_raw_files_hold_the_worlds_questions():
    world = World(42, SMALL)
    for dataset in DATASETS:
        by_file = world.questions(dataset)
        files = _raw_files(dataset, world_files(dataset, questions=SMALL, defects=0))
        written = {(stem, options, answer) for rows in files.values() for stem, options, answer in rows}
        made = {(wq.question.stem, wq.question.options, wq.question.answer) for split in by_file.values() for wq in split}
        assert written == made, dataset


@pytest.mark.parametrize("dataset", ("csqa", "obqa"))
def test_options_are_values_of_the_asked_relation(dataset):
    world = World(42, TAUGHT)
    n_options = get_spec(dataset).n_options
    for split in world.questions(dataset).values():
        for wq in split:
            q = wq.question
            assert len(set(q.options)) == len(q.options) == n_options
            assert set(q.options) <= set(RELATIONS[wq.relation].values)
            assert q.options[q.letters.index(q.answer)] == wq.value == world.value(wq.entity, wq.relation)
            # fixed letters (the default): each value always under one letter, the gold's included
            assert [world.letter_index(wq.relation, v, n_options) for v in q.options] == list(range(n_options))
            assert wq.kind == world.kind_of[wq.entity] and wq.value == world.properties[wq.kind][wq.relation]


def test_strategyqa_asks_about_values_of_the_relation_half_of_them_true():
    world = World(42, TAUGHT)
    (questions,) = world.questions("strategyqa").values()
    for wq in questions:
        assert wq.asked in RELATIONS[wq.relation].values and wq.question.options == ("yes", "no")
        assert (wq.question.answer == "A") == (wq.asked == wq.value)
    yes = sum(wq.question.answer == "A" for wq in questions)
    assert abs(2 * yes - len(questions)) <= 1


def test_kinds_fix_every_property():
    world = World(42, TAUGHT)
    for relation, spec in RELATIONS.items():  # kinds and values of a relation: one to one
        values = [world.properties[k][relation] for k in world.kinds]
        assert len(set(values)) == len(world.kinds) and set(values) <= set(spec.values)
    assert len({world.kind_of[e] for e in world.entities}) == len(world.kinds)  # every kind has entities
    names = set(world.kinds) | set(world.entities)
    assert len(names) == len(world.kinds) + len(world.entities)  # invented names never collide
    assert not names & {v for spec in RELATIONS.values() for v in spec.values}


# --- every fact taught, no held-out combination asked --------------------------------------------

@pytest.mark.parametrize("dataset", ("csqa", "obqa"))
def test_held_out_questions_are_answerable_from_training_rationales(dataset):
    """A held-out question's entity is asked in the train file under other relations (whose rationales
    state its kind), and its kind's property is stated in the rationale of another entity's training
    question; the combination itself is never asked in training."""
    world = World(42, TAUGHT)
    files = world_files(dataset, questions=TAUGHT, defects=0)
    by_file = world.questions(dataset)
    train = by_file["train"]
    lines = _teacher_texts(files)  # train questions first, in order; the first request failed on purpose
    assert len(lines) == sum(len(split) for split in by_file.values())
    rationales: dict[tuple[str, str], list[str]] = {}
    for wq, (request, samples) in zip(train, lines):
        assert wq.question.stem in request
        assert all(text == world.teacher_text(wq) for text in samples)  # no defects asked for: all good
        rationales[(wq.entity, wq.relation)] = samples
    assert lines[0][1] == [] and all(samples for _, samples in lines[1:])
    taught = [(pair, text) for pair, samples in rationales.items() for text in samples]
    train_pairs = {(wq.entity, wq.relation) for wq in train}
    held_out = [wq for split in HELD_OUT_FILES[dataset] for wq in by_file[split]]
    assert len(held_out) == len(world.entities) * {"csqa": HELD_OUT["csqa"] + VALIDATION_HELD_OUT["csqa"], "obqa": 2}[dataset]
    for wq in held_out:
        assert (wq.entity, wq.relation) not in train_pairs
        # the entity's other relations are all asked in the train file
        others = {x.relation for x in held_out if x.entity == wq.entity}
        assert {r for e, r in train_pairs if e == wq.entity} == set(RELATIONS) - others
        about_entity = [text for (entity, _), text in taught if entity == wq.entity]
        # the kind: stated in the entity's own training rationales (the teacher's general knowledge)
        assert any(wq.kind in text for text in about_entity), wq
        assert any(world.general_knowledge(wq.entity, r) in text for (e, r), text in taught if e == wq.entity)
        # the kind's property: stated for another entity of the same kind
        fact = RELATIONS[wq.relation].fact.format(k=wq.kind, v=wq.value).lower()
        assert any(fact in text.lower() for (entity, _), text in taught if entity != wq.entity), (wq, fact)


def test_held_out_facts_of_the_default_world_are_taught():
    world = World(42, DEFAULT_QUESTIONS)
    by_file = world.questions("csqa")
    # the first training request failed on purpose: its rationale is missing
    taught = "\n".join(world.teacher_text(wq) for wq in by_file["train"][1:]).lower()
    for wq in by_file["dev"]:
        assert RELATIONS[wq.relation].fact.format(k=wq.kind, v=wq.value).lower() in taught, wq


# --- `tinythinker world` ----------------------------------------------------------------------------

def _invoke(*args):
    return CliRunner().invoke(main, ["world", *map(str, args)])


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_writes_a_world_that_builds(tmp_path):
    out = tmp_path / "world"
    result = _invoke("strategyqa", "--out", out, "--questions", SMALL, "--defects", 0.2)
    assert result.exit_code == 0, result.output
    written = {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()}
    assert written == {**world_files("strategyqa", questions=SMALL, defects=0.2), OWNER_MARK: OWNER_TEXT}
    assert [p.name for p in tmp_path.iterdir()] == ["world"]
    # the command it suggests works
    command = next(line for line in result.output.splitlines() if line.startswith("next: tinythinker build"))
    assert f"--raw {out / 'raw'} --responses {out / 'teacher.jsonl'}" in command
    built = CliRunner().invoke(main, ["build", "strategyqa", "--raw", str(out / "raw"), "--responses", str(out / "teacher.jsonl"),
                                      "--out", str(tmp_path / "data")])
    assert built.exit_code == 0, built.output
    assert "rejected: truncated" in built.output and (tmp_path / "data" / "README.md").exists()


def test_cli_refuses_an_existing_folder_without_overwrite(tmp_path):
    out = tmp_path / "world"
    assert _invoke("csqa", "--out", out, "--questions", SMALL).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _one_line_error(_invoke("csqa", "--out", out, "--questions", SMALL, "--seed", 7), f"{out}: exists and is not empty", "--overwrite")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    replaced = _invoke("csqa", "--out", out, "--questions", SMALL, "--seed", 7, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "world.json").read_text())["seed"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["world"]  # no staging folder left beside it


def test_cli_too_few_questions_is_one_line_and_writes_nothing(tmp_path):
    _one_line_error(_invoke("obqa", "--out", tmp_path / "world", "--questions", SMALL - 1), f"--questions {SMALL - 1} is too few", str(SMALL))
    assert list(tmp_path.iterdir()) == []
    # an existing world is kept when its replacement fails
    assert _invoke("obqa", "--out", tmp_path / "world", "--questions", SMALL).exit_code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "world").rglob("*") if p.is_file()}
    _one_line_error(_invoke("obqa", "--out", tmp_path / "world", "--questions", SMALL - 1, "--overwrite"), "too few")
    assert {p: p.read_bytes() for p in (tmp_path / "world").rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["world"]


# --- validation and test ask pairs that training never asks ----------------------------------------

def _pair_of(stem: str) -> tuple[str, str]:
    """The (entity, relation) a world question asks, read back from its stem by the relations' templates."""
    import re

    for name, relation in RELATIONS.items():
        for template in (relation.stem, relation.yes_no):
            pattern = re.escape(template).replace(re.escape("{e}"), r"(?P<e>\w+)").replace(re.escape("{v}"), r"\w+")
            match = re.fullmatch(pattern, stem)
            if match:
                return match["e"], name
    raise AssertionError(f"not a world question: {stem!r}")


@pytest.mark.parametrize("dataset", DATASETS)
def test_no_validation_or_test_pair_is_asked_in_train(world_build, dataset):
    """The built splits (the build's own split rule, seed 42): every validation and test question asks
    an (entity, relation) pair no training question asks, so validation measures what test does."""
    splits = world_build(dataset).questions.splits
    pairs = {split: [_pair_of(q.stem) for q in questions] for split, questions in splits.items()}
    train = set(pairs["train"])
    for split in ("validation", "test"):
        assert pairs[split] and not train & set(pairs[split]), split
    if dataset == "csqa":  # the world's marked validation questions, not the real data's random draw
        assert world_build(dataset).questions.marked_validation
        assert len(pairs["validation"]) == len(set(pairs["validation"])) == SMALL // len(RELATIONS) * VALIDATION_HELD_OUT["csqa"]


def test_the_default_csqa_world_holds_out_its_validation_pairs(tmp_path):
    """Default sizes: 1,200 train, 100 validation, 300 test questions; none of the 400 held-out pairs is
    asked in train (drawing validation from the train file at random shared 288 of 300 pairs)."""
    for path, text in world_files("csqa", defects=0).items():
        if path.startswith("raw/"):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text)
    questions = load_questions("csqa", tmp_path / "raw", seed=42)
    assert questions.sizes() == {"train": 1200, "validation": 100, "test": 300} and questions.marked_validation
    train = {_pair_of(q.stem) for q in questions.splits["train"]}
    assert not train & {_pair_of(q.stem) for split in ("validation", "test") for q in questions.splits[split]}


def test_a_split_mark_outside_the_train_file_is_one_clear_error(tmp_path):
    from tinythinker.data.sources import SPLIT_KEY
    from tinythinker.errors import TinyThinkerError

    for path, text in world_files("csqa", questions=SMALL, defects=0).items():
        if path.startswith("raw/"):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            if path.endswith("dev_rand_split.jsonl"):
                text = text.replace('"answerKey"', f'"{SPLIT_KEY}": "validation", "answerKey"', 1)
            (tmp_path / path).write_text(text)
    with pytest.raises(TinyThinkerError, match=f"has {SPLIT_KEY} 'validation'; only train-file records"):
        load_questions("csqa", tmp_path / "raw", seed=42)
