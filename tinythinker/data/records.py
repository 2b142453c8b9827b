"""Stage records (REFERENCE 6) of every variant, with the one column contract every split shares.

``build_split(questions, selection, variant, split)`` returns one split of config
``{dataset}-{variant}`` as a ``pyarrow.Table`` typed by :data:`FEATURES`:

- training splits (``recall``, ``recall_single``, ``analyze``, ``summarize``; those the variant
  has): one record per selected rationale (per option for ``analyze``), questions in split order,
  rationales in selection order, options in label order (``reference_order=True`` lists them in the
  teacher's order, as the reference did, in ``analyze`` and in the summarize input); duplicates
  removed on (input, target), ``recall_single`` keeps the first recall of every input;
- ``validation`` / ``test``: one record per question (per option for ``no_recall``) whose input is
  the first stage's prompt and whose target is the summarize target with the gold label;
  ``teacher_recall`` / ``teacher_analyses`` carry the question's first selected rationale when
  teacher responses were given for it.

All text comes from :mod:`tinythinker.protocol`.
"""

from __future__ import annotations

from typing import Iterator

import datasets
import pyarrow as pa

from tinythinker.protocol import ANALYZE, RECALL, SUMMARIZE, VARIANT_STAGES, VARIANTS, analyze_prompt, config_name, first_prompts
from tinythinker.protocol import recall_prompt, summarize_prompt, summarize_target
from tinythinker.data.sources import QuestionSet
from tinythinker.data.teacher.select import Selection

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "stage": datasets.Value("string"),
        "option": datasets.Value("string"),
        "question": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")),
        "input": datasets.Value("string"),
        "target": datasets.Value("string"),
        "GT": datasets.Value("string"),
        "teacher_recall": datasets.Value("string"),
        "teacher_analyses": datasets.List(datasets.Value("string")),
    }
)
COLUMNS = tuple(FEATURES)
EVAL_SPLITS = ("validation", "test")


def train_splits(variant: str) -> tuple[str, ...]:
    """The record sets a variant trains on, in pipeline order."""
    stages = VARIANT_STAGES[variant]
    out: list[str] = []
    if RECALL in stages:
        out += ["recall", "recall_single"]
    if ANALYZE in stages:
        out.append("analyze")
    out.append("summarize")
    return tuple(out)


def variant_splits(variant: str) -> tuple[str, ...]:
    return train_splits(variant) + EVAL_SPLITS


def all_configs(dataset: str) -> dict[str, tuple[str, ...]]:
    """{config name: its splits} for every variant of a data set."""
    return {config_name(dataset, v): variant_splits(v) for v in VARIANTS}


CHUNK_QUESTIONS = 1000  # questions per generated table: bounds memory on CSQA-sized builds


def _constant(value, n: int, type_) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), n)


def _assemble(questions: list, labels: list[str], rows: dict[str, list], stage: str, teacher_recall=None, teacher_analyses=None) -> pa.Table:
    """One typed table: per-row columns from ``rows`` (``q`` = index into ``questions``), the
    columns that repeat per question taken from one array per question (no per-row copies)."""
    schema = FEATURES.arrow_schema
    index = pa.array(rows["q"], type=pa.int32())
    n = len(index)
    per_question = {
        "id": pa.array([q.id for q in questions], pa.string()),
        "question": pa.array([q.text for q in questions], pa.string()),
        "choices": pa.array([list(q.options) for q in questions], schema.field("choices").type),
        "GT": pa.array(labels, pa.string()),
    }
    if teacher_recall is not None:
        per_question["teacher_recall"] = pa.array(teacher_recall, pa.string())
        per_question["teacher_analyses"] = pa.array(teacher_analyses, schema.field("teacher_analyses").type)
    columns = {}
    for name in COLUMNS:
        if name in per_question:
            columns[name] = per_question[name].take(index)
        elif name in rows:
            columns[name] = pa.array(rows[name], pa.string())
        elif name == "stage":
            columns[name] = _constant(stage, n, pa.string())
        elif name == "teacher_analyses":
            columns[name] = _constant([], n, schema.field(name).type)
        else:  # teacher_recall of training rows
            columns[name] = _constant("", n, pa.string())
    return pa.Table.from_pydict(columns, schema=schema)


def _train_tables(questions: QuestionSet, selection: Selection, variant: str, split: str, reference_order: bool) -> Iterator[pa.Table]:
    stages = VARIANT_STAGES[variant]
    with_recall, with_analyze = RECALL in stages, ANALYZE in stages
    stage = {"recall": RECALL, "recall_single": RECALL, "analyze": ANALYZE, "summarize": SUMMARIZE}[split]
    chosen = [q for q in questions.splits.get("train", []) if selection.rationales.get(q.id)]
    for start in range(0, len(chosen), CHUNK_QUESTIONS):
        chunk = chosen[start : start + CHUNK_QUESTIONS]
        rows: dict[str, list] = {"q": [], "option": [], "input": [], "target": []}
        q_rows, options, inputs, targets = rows["q"], rows["option"], rows["input"], rows["target"]
        labels = [selection.labels[q.id] for q in chunk]
        for i, q in enumerate(chunk):
            # Duplicates can only occur within a question (every input starts with its question text,
            # and exact duplicate questions were merged), so the seen-set is per question. Within a
            # question an input is fixed by the recall and the option (or the listed analyses), so
            # the keys hold those short parts instead of the long input they make.
            seen: set = set()
            text = q.text
            target = summarize_target(labels[i])
            chosen_here = selection.rationales[q.id]
            for rationale in chosen_here[:1] if split == "recall_single" else chosen_here:  # one recall per input
                recall = rationale.general if with_recall else None
                if split == "analyze":
                    for letter, knowledge in rationale.ordered(reference_order):
                        key = (letter, recall, knowledge)
                        if key not in seen:
                            seen.add(key)
                            q_rows.append(i)
                            options.append(letter)
                            inputs.append(analyze_prompt(text, letter, recall))
                            targets.append(knowledge)
                    continue
                if split == "summarize":
                    analyses = tuple(rationale.ordered(reference_order)) if with_analyze else None
                    key = (recall, analyses)
                    if key in seen:
                        continue
                    inputs.append(summarize_prompt(text, recall=recall, analyses=analyses))
                    targets.append(target)
                else:  # recall, recall_single
                    key = rationale.general
                    if key in seen:
                        continue
                    inputs.append(recall_prompt(text))
                    targets.append(rationale.general)
                seen.add(key)
                q_rows.append(i)
                options.append("")
        yield _assemble(chunk, labels, rows, stage)


def _eval_tables(questions: QuestionSet, selection: Selection, variant: str, split: str) -> Iterator[pa.Table]:
    first_stage = VARIANT_STAGES[variant][0]
    chunk = questions.splits.get(split, [])
    rows: dict[str, list] = {"q": [], "option": [], "input": [], "target": []}
    teacher_recall, teacher_analyses = [], []
    for i, q in enumerate(chunk):
        rationale = selection.first(q.id)
        teacher_recall.append(rationale.general if rationale else "")
        teacher_analyses.append([text for _, text in rationale.ordered()] if rationale else [])
        for option, prompt in first_prompts(q.text, q.letters, variant):
            rows["q"].append(i)
            rows["option"].append(option)
            rows["input"].append(prompt)
            rows["target"].append(summarize_target(q.answer))
    yield _assemble(chunk, [q.answer for q in chunk], rows, first_stage, teacher_recall, teacher_analyses)


def iter_split(
    questions: QuestionSet, selection: Selection, variant: str, split: str, *, reference_order: bool = False
) -> Iterator[pa.Table]:
    """One split of config ``{dataset}-{variant}`` as consecutive tables (chunks of questions)."""
    if variant not in VARIANT_STAGES:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if split in EVAL_SPLITS:
        return _eval_tables(questions, selection, variant, split)
    if split not in train_splits(variant):
        raise ValueError(f"variant {variant} has no split {split!r}; it has {', '.join(variant_splits(variant))}")
    return _train_tables(questions, selection, variant, split, reference_order)


def build_split(
    questions: QuestionSet, selection: Selection, variant: str, split: str, *, reference_order: bool = False
) -> pa.Table:
    """One split of config ``{dataset}-{variant}`` as one table typed by :data:`FEATURES`."""
    tables = list(iter_split(questions, selection, variant, split, reference_order=reference_order))
    return pa.concat_tables(tables) if tables else FEATURES.arrow_schema.empty_table()
