"""Raw data sets -> :class:`Question` lists with the seeded splits of REFERENCE section 1.

A source is either a local folder (or file) in the original release format, as in
``../shared/data/raw``, or a Hugging Face Hub id read with ``datasets.load_dataset``.
Exact duplicate questions (same stem and options) are merged before splitting, and
:func:`load_questions` refuses a result in which one question sits in two splits.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

from tinythinker.artifacts import iter_jsonl
from tinythinker.errors import TinyThinkerError, where
from tinythinker.hub import is_hub_id
from tinythinker.protocol import letters_for, render_question

SPLITS = ("train", "validation", "test")
# A csqa train-file record may carry ``"tinythinker_split": "validation"``: the generated world marks its
# held-out validation questions so, since a random draw from its train file would ask the pairs training
# asks (world.py). Real release files have no such key: their validation is drawn (REFERENCE 1).
SPLIT_KEY = "tinythinker_split"


@dataclass(frozen=True)
class DatasetSpec:
    """Per-data-set constants of REFERENCE sections 1, 3 and 5."""

    name: str
    n_options: int
    hub_id: str | None
    exemplars: int  # k few-shot exemplars in the teacher request
    samples: int  # n teacher samples per request
    num_augment: int  # rationales kept per question
    rounds: int  # teacher rounds the reference ran
    license: str = "unknown"  # of the source data set (recorded in data set cards)


DATASETS: dict[str, DatasetSpec] = {
    "csqa": DatasetSpec("csqa", 5, "tau/commonsense_qa", 8, 8, 8, 3, "mit"),
    "obqa": DatasetSpec("obqa", 4, "allenai/openbookqa", 7, 4, 4, 3, "apache-2.0"),
    "strategyqa": DatasetSpec("strategyqa", 2, None, 8, 4, 4, 2, "mit"),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise TinyThinkerError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}") from None


@dataclass(frozen=True)
class Question:
    """One multiple-choice question. ``answer`` is a letter; ``aliases`` are ids merged into it."""

    id: str
    stem: str
    options: tuple[str, ...]
    answer: str
    split: str = "train"
    aliases: tuple[str, ...] = ()

    @property
    def letters(self) -> str:
        return letters_for(len(self.options))

    @cached_property  # rendered once: records repeat it in every row of the question
    def text(self) -> str:
        """The rendered question the student sees (REFERENCE 2)."""
        return render_question(self.stem, self.options)

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """Identity of a question: its stem and its options (not its id)."""
        return (self.stem, self.options)


@dataclass
class QuestionSet:
    """The split questions of one data set and how they were made (for cards and reports)."""

    dataset: str
    splits: dict[str, list[Question]]
    seed: int
    source: str
    source_revision: str
    raw_counts: dict[str, int] = field(default_factory=dict)
    merged_duplicates: list[tuple[str, str]] = field(default_factory=list)  # (kept id, merged id)
    marked_validation: bool = False  # csqa: validation = the train file's marked questions (SPLIT_KEY), not drawn

    def all(self) -> list[Question]:
        return [q for split in SPLITS for q in self.splits.get(split, [])]

    def by_id(self) -> dict[str, Question]:
        out = {}
        for q in self.all():
            out[q.id] = q
            for alias in q.aliases:
                out[alias] = q
        return out

    def sizes(self) -> dict[str, int]:
        return {split: len(self.splits.get(split, [])) for split in SPLITS}


# --- raw record readers (original release formats) ----------------------------------------------

def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise TinyThinkerError(f"{path}: raw file not found; pass --raw the folder holding the original release files")
    return list(iter_jsonl(path, what="raw file"))


def _choice_question(row: dict, origin: str, n_options: int, split: str, *, require_answer: bool = True) -> Question:
    """A CSQA/OBQA-style record: {id, question: {stem, choices: [{label, text}]}, answerKey}."""
    question = row.get("question")
    if isinstance(question, dict):
        stem, choices = question.get("stem"), question.get("choices")
    else:  # Hub rows: question / question_stem + choices {label: [...], text: [...]}
        stem = row.get("question_stem", question)
        hub_choices = row.get("choices") or {}
        choices = [{"label": lab, "text": txt} for lab, txt in zip(hub_choices.get("label", []), hub_choices.get("text", []))]
    qid = row.get("id")
    if not isinstance(qid, str) or not qid:
        raise TinyThinkerError(f"{origin}: record has no 'id'; every question needs a string id")
    if not isinstance(stem, str) or not stem.strip():
        raise TinyThinkerError(f"{origin}: question {qid} has no stem text")
    if not isinstance(choices, list) or not all(isinstance(c, dict) and "text" in c for c in choices):
        raise TinyThinkerError(f"{origin}: question {qid} has no 'choices' list of {{label, text}}")
    if len(choices) != n_options:
        raise TinyThinkerError(
            f"{origin}: question {qid} has {len(choices)} options, this data set needs {n_options}; fix the record or pick the right data set"
        )
    letters = letters_for(n_options)
    labels = [str(c.get("label", "")) for c in choices]
    if labels != list(letters):
        raise TinyThinkerError(f"{origin}: question {qid} has option labels {labels}, expected {list(letters)}")
    answer = row.get("answerKey")
    if not answer:
        raise TinyThinkerError(f"{origin}: question {qid} has no answer ('answerKey'); unlabeled questions cannot be used")
    if answer not in letters:
        raise TinyThinkerError(f"{origin}: question {qid} has answer {answer!r}, not one of its options {', '.join(letters)}")
    marked = row.get(SPLIT_KEY)
    if marked is not None and (marked != "validation" or split != "train"):
        raise TinyThinkerError(f"{origin}: question {qid} has {SPLIT_KEY} {marked!r}; only train-file records may say \"validation\"")
    return Question(qid, stem.strip(), tuple(str(c["text"]).strip() for c in choices), answer, marked or split)


def _strategy_question(row: dict, origin: str, split: str) -> Question:
    qid, text, answer = row.get("qid"), row.get("question"), row.get("answer")
    if not isinstance(qid, str) or not isinstance(text, str) or not text.strip():
        raise TinyThinkerError(f"{origin}: StrategyQA record needs string 'qid' and 'question'")
    if not isinstance(answer, bool):
        raise TinyThinkerError(f"{origin}: question {qid} has no true/false 'answer'; unlabeled questions cannot be used")
    return Question(qid, text.strip(), ("yes", "no"), "A" if answer else "B", split)


def _file_digest(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def _local_official(name: str, raw: Path) -> tuple[dict[str, list[Question]], str]:
    """Official splits from local release files -> ({official split: questions}, revision)."""
    spec = DATASETS[name]
    if name == "strategyqa":
        path = raw / "strategyqa_train.json" if raw.is_dir() else raw
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TinyThinkerError(f"{path}: raw file not found; pass --raw the folder holding strategyqa_train.json") from None
        except json.JSONDecodeError as error:
            raise TinyThinkerError(f"{where(path, error.lineno)}: not valid JSON ({error.msg})") from None
        except (OSError, UnicodeDecodeError) as error:
            raise TinyThinkerError(f"{path}: cannot read raw file ({error.__class__.__name__})") from None
        if not isinstance(records, list):
            raise TinyThinkerError(f"{path}: expected a JSON list of StrategyQA records")
        questions = [_strategy_question(r if isinstance(r, dict) else {}, f"{path} record {i}", "train") for i, r in enumerate(records, 1)]
        return {"train": questions}, _file_digest([path])

    files = {"csqa": {"train": "train_rand_split.jsonl", "dev": "dev_rand_split.jsonl"},
             "obqa": {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"}}[name]
    if not raw.is_dir():
        raise TinyThinkerError(f"{raw}: not a folder; pass --raw the folder holding {', '.join(files.values())}")
    official = {}
    for split, filename in files.items():
        path = raw / filename
        official[split] = [
            _choice_question(row, where(path, line), spec.n_options, split) for line, row in _read_jsonl(path)
        ]
    return official, _file_digest(raw / f for f in files.values())


def _hub_official(name: str, hub_id: str, revision: str | None) -> tuple[dict[str, list[Question]], str]:
    """Official splits from the Hub at ``revision`` (default main), read at the commit it points at,
    which the source revision names."""
    import datasets

    from tinythinker.hub import pin

    spec = DATASETS[name]
    config = "main" if name == "obqa" else None
    commit = pin(hub_id, revision)  # a missing repo or revision: one line naming it and the fix
    try:
        loaded = datasets.load_dataset(hub_id, config, revision=commit or revision)
    except Exception as error:  # noqa: BLE001 - network/Hub errors become one user-facing line
        raise TinyThinkerError(f"cannot load {hub_id!r} from the Hub ({error.__class__.__name__}: {error}); check the id, your network, or pass a local --raw folder") from None
    official: dict[str, list[Question]] = {}
    for split, rows in loaded.items():
        origin = f"{hub_id}[{split}]"
        if name == "strategyqa":
            official[split] = [_strategy_question(dict(row), f"{origin} row {i}", split) for i, row in enumerate(rows)]
            continue
        labeled = [dict(row) for row in rows if row.get("answerKey")]
        if not labeled:
            continue  # csqa's hidden-label test split
        official[split] = [_choice_question(row, f"{origin} row {i}", spec.n_options, split) for i, row in enumerate(labeled)]
    fingerprint = getattr(next(iter(loaded.values())), "_fingerprint", "") if loaded else ""
    return official, f"{hub_id}@{commit or revision or 'main'} {fingerprint}".strip()


def _merge_duplicates(questions: list[Question]) -> tuple[list[Question], list[tuple[str, str]]]:
    """Merge exact duplicates (same stem and options), keeping the first id and order."""
    kept: dict[tuple, int] = {}
    out: list[Question] = []
    merged: list[tuple[str, str]] = []
    for q in questions:
        index = kept.get(q.key)
        if index is None:
            kept[q.key] = len(out)
            out.append(q)
            continue
        first = out[index]
        if first.answer != q.answer:
            raise TinyThinkerError(
                f"questions {first.id} and {q.id} are the same question ({q.stem[:60]!r}) with different answers "
                f"({first.answer} and {q.answer}); fix one of them in the raw data"
            )
        out[index] = Question(first.id, first.stem, first.options, first.answer, first.split, first.aliases + (q.id,))
        merged.append((first.id, q.id))
    return out, merged


def _with_split(questions: Iterable[Question], split: str) -> list[Question]:
    return [Question(q.id, q.stem, q.options, q.answer, split, q.aliases) for q in questions]


def split_questions(name: str, official: dict[str, list[Question]], seed: int) -> dict[str, list[Question]]:
    """REFERENCE 1 splits from (de-duplicated) official splits, with one seeded generator.

    csqa: valid = a random len(dev) questions of train (or the train questions marked as validation,
    :data:`SPLIT_KEY`), test = dev. obqa: official splits. strategyqa: shuffled 80/10/10 of train."""
    rng = random.Random(seed)
    if name == "csqa":
        train, dev = list(official["train"]), official.get("dev") or official.get("validation") or []
        if any(q.split == "validation" for q in train):  # the generated world's held-out validation questions
            return {"train": [q for q in train if q.split == "train"], "validation": [q for q in train if q.split == "validation"],
                    "test": _with_split(dev, "test")}
        order = list(range(len(train)))
        rng.shuffle(order)
        valid_idx = set(order[: len(dev)])
        return {
            "train": _with_split((q for i, q in enumerate(train) if i not in valid_idx), "train"),
            "validation": _with_split((q for i, q in enumerate(train) if i in valid_idx), "validation"),
            "test": _with_split(dev, "test"),
        }
    if name == "obqa":
        return {
            "train": _with_split(official["train"], "train"),
            "validation": _with_split(official.get("dev") or official.get("validation") or [], "validation"),
            "test": _with_split(official.get("test", []), "test"),
        }
    questions = [q for split in official.values() for q in split]
    rng.shuffle(questions)
    n_train, n_valid = int(0.8 * len(questions)), int(0.9 * len(questions))
    return {
        "train": _with_split(questions[:n_train], "train"),
        "validation": _with_split(questions[n_train:n_valid], "validation"),
        "test": _with_split(questions[n_valid:], "test"),
    }


def check_no_leakage(splits: dict[str, list[Question]]) -> None:
    """Fail loudly if one question (stem and options) or one id sits in two splits (REFERENCE 10)."""
    seen: dict[tuple, str] = {}
    seen_ids: dict[str, str] = {}
    for split, questions in splits.items():
        for q in questions:
            other = seen.setdefault(q.key, split)
            if other != split:
                raise TinyThinkerError(f"question {q.id} ({q.stem[:60]!r}) is in both {other} and {split}: the splits leak")
            for qid in (q.id, *q.aliases):
                other = seen_ids.setdefault(qid, split)
                if other != split:
                    raise TinyThinkerError(f"question id {qid} is in both {other} and {split}: the splits leak")


def load_questions(name: str, raw: str | Path | None = None, *, seed: int = 42, revision: str | None = None) -> QuestionSet:
    """Load a data set's questions with REFERENCE-1 splits.

    ``raw``: a local folder/file in the original release format, or a Hub id (default: the data
    set's Hub id), read at ``revision`` (a branch, tag or commit id of a Hub id). Exact duplicates are
    merged within each official split before splitting."""
    spec = get_spec(name)
    local = Path(raw) if raw is not None else None
    if local is not None and local.exists() and revision is not None:
        raise TinyThinkerError(f"--revision {revision} names a Hub commit, but {raw} is a local folder; leave --revision out "
                               "or pass a Hub id (ORG/NAME) with --raw")
    if local is not None and local.exists():
        official, source_revision = _local_official(name, local)
        source = str(local)
    else:
        hub_id = str(raw) if raw is not None else spec.hub_id
        if hub_id is None or (raw is not None and not is_hub_id(hub_id)):
            raise TinyThinkerError(f"{raw or name}: no such local folder{' and no Hub id for ' + name if hub_id is None else ''}; pass --raw the folder holding the original release files")
        official, source_revision = _hub_official(name, hub_id, revision)
        source = hub_id
    raw_counts = {split: len(qs) for split, qs in official.items()}
    merged: list[tuple[str, str]] = []
    if name == "strategyqa":  # one pool, split afterwards: merge across all of it
        pool, merged = _merge_duplicates([q for qs in official.values() for q in qs])
        official = {"train": pool}
    else:
        for split in list(official):
            official[split], merged_here = _merge_duplicates(official[split])
            merged += merged_here
    marked = any(q.split == "validation" for q in official["train"]) if name == "csqa" else False
    splits = split_questions(name, official, seed)
    check_no_leakage(splits)
    return QuestionSet(name, splits, seed, source, source_revision, raw_counts, merged, marked)
