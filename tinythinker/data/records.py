"""Stage records (REFERENCE 6) of every variant, with the one column contract every split shares.

``build_split(questions, selection, variant, split)`` returns one split of config
``{dataset}-{variant}`` as a ``pyarrow.Table`` typed by :data:`FEATURES`:

- training splits (``recall``, ``recall_single``, ``analyze``, ``summarize``; those the variant
  has): one record per selected rationale (per option for ``analyze``), questions in split order,
  rationales in selection order, options in label order (``reference_order=True`` lists them in the
  teacher's order, as the reference did, in ``analyze`` and in the summarize input); duplicates
  removed on (input, target), ``recall_single`` keeps the first recall of every input;
- baselines, from the same rationales and splits: ``{dataset}-cot`` (split ``cot``: one record per
  distinct rationale, `{Q}\nAnswer:` -> its recall, analyses and summary as one sequence) and
  ``{dataset}-dsbs`` (splits ``label`` and ``rationale``: `[label] {Q}\nAnswer:` -> the summary and
  `[rationale] {Q}\nAnswer:` -> the recall and analyses, one of each per distinct rationale, so both
  tasks weigh the same, as the paper's summed losses do);
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

from tinythinker.protocol import ANALYZE, ONE_PASS_TEXTS, RECALL, TRAINED_STAGES, VARIANT_STAGES, VARIANTS, analyze_prompt, config_name
from tinythinker.protocol import first_prompts, one_pass_prompt, one_pass_target, recall_prompt, summarize_prompt, summarize_target
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

# What each baseline config is, and the paper it reproduces (data set cards and docs/datasets.md).
BASELINE_PAPERS: dict[str, dict[str, str]] = {
    "cot": {
        "name": "standard CoT distillation",
        "records": "`cot`: `{Q}\\nAnswer:` → `Recall: …\\nAnalyze: For option A, … For option B, …\\nSummarize: So the answer "
                   "is option X.`, one record per distinct rationale; one greedy pass answers",
        "paper": "Magister et al. 2023, Teaching Small Language Models to Reason",
        "url": "https://aclanthology.org/2023.acl-short.151/",
        "bibtex": "@inproceedings{magister-etal-2023-teaching,\n  title = {Teaching Small Language Models to Reason},\n"
                  "  author = {Magister, Lucie Charlotte and Mallinson, Jonathan and Adamek, Jakub and Malmi, Eric and Severyn, Aliaksei},\n"
                  "  booktitle = {Proceedings of ACL 2023 (Volume 2: Short Papers)},\n  year = {2023}\n}",
    },
    "dsbs": {
        "name": "Distilling step-by-step",
        "records": "`label`: `[label] {Q}\\nAnswer:` → `So the answer is option X.`; `rationale`: `[rationale] {Q}\\nAnswer:` → "
                   "`Recall: …\\nAnalyze: …`; one of each per distinct rationale, trained together; only the label task answers",
        "paper": "Hsieh et al. 2023, Distilling Step-by-Step! Outperforming Larger Language Models with Less Training Data "
                 "and Smaller Model Sizes",
        "url": "https://aclanthology.org/2023.findings-acl.507/",
        "bibtex": "@inproceedings{hsieh-etal-2023-distilling,\n  title = {Distilling Step-by-Step! Outperforming Larger Language "
                  "Models with Less Training Data and Smaller Model Sizes},\n  author = {Hsieh, Cheng-Yu and Li, Chun-Liang and "
                  "Yeh, Chih-Kuan and Nakhost, Hootan and Fujii, Yasuhisa and Ratner, Alexander and Krishna, Ranjay and Lee, "
                  "Chen-Yu and Pfister, Tomas},\n  booktitle = {Findings of ACL 2023},\n  year = {2023}\n}",
    },
}


def describe_variant(dataset: str, variant: str) -> str:
    """One line saying what a config holds (the builder's config description)."""
    if variant in BASELINE_PAPERS:
        return f"{dataset} baseline: {BASELINE_PAPERS[variant]['name']} ({BASELINE_PAPERS[variant]['paper']})"
    return f"{dataset} records for the stages {' -> '.join(VARIANT_STAGES[variant])}"


SPLIT_STAGES = {"recall_single": RECALL}  # every other training split is named by the stage it trains


def train_splits(variant: str) -> tuple[str, ...]:
    """The record sets a variant trains on, in pipeline order: one per trained stage, and recall_single
    (the recall prompts of self-reflection) beside recall."""
    out: list[str] = []
    for stage in TRAINED_STAGES[variant]:
        out += [stage, "recall_single"] if stage == RECALL else [stage]
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


def _rationale_rows(split: str, text: str, rationale, label: str, stages: tuple[str, ...], reference_order: bool):
    """(dedup key, option, input, target) of every record one rationale gives in ``split``. Within a
    question an input is fixed by the recall and the option (or the listed analyses), so the keys
    hold those short parts instead of the long input they make."""
    if split in ONE_PASS_TEXTS:  # baselines: one record per distinct rationale (DSbS: one per task)
        analyses = tuple(rationale.ordered(reference_order))
        target = one_pass_target(split, rationale.general, analyses, label)
        yield (rationale.general, analyses), "", one_pass_prompt(text, split), target
        return
    recall = rationale.general if RECALL in stages else None
    if split == "analyze":
        for letter, knowledge in rationale.ordered(reference_order):
            yield (letter, recall, knowledge), letter, analyze_prompt(text, letter, recall), knowledge
    elif split == "summarize":
        analyses = tuple(rationale.ordered(reference_order)) if ANALYZE in stages else None
        yield (recall, analyses), "", summarize_prompt(text, recall=recall, analyses=analyses), summarize_target(label)
    else:  # recall, recall_single
        yield rationale.general, "", recall_prompt(text), rationale.general


def _train_tables(questions: QuestionSet, selection: Selection, variant: str, split: str, reference_order: bool) -> Iterator[pa.Table]:
    stages = TRAINED_STAGES[variant]
    chosen = [q for q in questions.splits.get("train", []) if selection.rationales.get(q.id)]
    for start in range(0, len(chosen), CHUNK_QUESTIONS):
        chunk = chosen[start : start + CHUNK_QUESTIONS]
        rows: dict[str, list] = {"q": [], "option": [], "input": [], "target": []}
        labels = [selection.labels[q.id] for q in chunk]
        for i, q in enumerate(chunk):
            # Duplicates can only occur within a question (every input starts with its question text,
            # and exact duplicate questions were merged), so the seen-set is per question.
            seen: set = set()
            chosen_here = selection.rationales[q.id]
            for rationale in chosen_here[:1] if split == "recall_single" else chosen_here:  # one recall per input
                for key, option, prompt, target in _rationale_rows(split, q.text, rationale, labels[i], stages, reference_order):
                    if key not in seen:
                        seen.add(key)
                        rows["q"].append(i)
                        rows["option"].append(option)
                        rows["input"].append(prompt)
                        rows["target"].append(target)
        yield _assemble(chunk, labels, rows, SPLIT_STAGES.get(split, split))


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
