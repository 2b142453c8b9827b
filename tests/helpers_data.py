"""A small stage data set folder in the contract layout (HELPERS.md), written from a few questions.

Tests of the students and the pipeline use it so they need neither the teacher nor the builder:
rows are made with :mod:`tinythinker.protocol` exactly as REFERENCE 6 says, and the folder loads
with ``datasets.load_dataset(folder, "{dataset}-{variant}")``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tinythinker import protocol
from tinythinker.data import records
from tinythinker.artifacts import configs_metadata, write_card, write_split
from tinythinker.data.sources import Question


@dataclass(frozen=True)
class ToyQuestion(Question):
    """A question with the teacher's rationale for it (one per question is enough here)."""

    recall: str = field(kw_only=True)  # the teacher's general knowledge
    analyses: tuple[str, ...] = field(kw_only=True)  # the teacher's specific knowledge, in label order

    @property
    def analysis_map(self) -> dict[str, str]:
        return dict(zip(self.letters, self.analyses))


TOY_QUESTIONS = (
    ToyQuestion("q1", "What color is the sky on a clear day?", ("green", "blue", "red"), "B",
                recall="The sky on a clear day looks blue.",
                analyses=("Grass is green, not the sky.", "A clear sky is blue.", "Red is for sunsets only.")),
    ToyQuestion("q2", "Where do fish live?", ("water", "trees", "deserts"), "A",
                recall="Fish breathe with gills in water.",
                analyses=("Fish swim in water.", "Birds live in trees.", "Deserts have no water.")),
    ToyQuestion("q3", "What do you use to cut paper?", ("spoon", "pillow", "scissors"), "C",
                recall="Sharp blades cut paper.",
                analyses=("A spoon is for soup.", "A pillow is soft.", "Scissors have sharp blades.")),
    ToyQuestion("q4", "What does a cow drink?", ("milk", "water", "oil"), "B",
                recall="Cows drink water every day.",
                analyses=("Cows make milk.", "Cows drink water.", "Oil is not a drink.")),
)


def _row(q: ToyQuestion, stage: str, option: str, input_: str, target: str, *, eval_row: bool) -> dict:
    return {"id": q.id, "stage": stage, "option": option, "question": q.text, "choices": list(q.options),
            "input": input_, "target": target, "GT": q.answer,
            "teacher_recall": q.recall if eval_row else "", "teacher_analyses": list(q.analyses) if eval_row else []}


def train_rows(q: ToyQuestion, variant: str, split: str) -> list[dict]:
    """The REFERENCE-6 training records of one question for one split of a variant."""
    recall = q.recall if variant in ("full", "no_analyze") else None
    if split in protocol.ONE_PASS_TEXTS:  # the baselines' cot, label and rationale records
        target = protocol.one_pass_target(split, q.recall, q.analysis_map, q.answer)
        return [_row(q, split, "", protocol.one_pass_prompt(q.text, split), target, eval_row=False)]
    if split in ("recall", "recall_single"):
        return [_row(q, "recall", "", protocol.recall_prompt(q.text), q.recall, eval_row=False)]
    if split == "analyze":
        return [_row(q, "analyze", x, protocol.analyze_prompt(q.text, x, recall), text, eval_row=False)
                for x, text in q.analysis_map.items()]
    analyses = q.analysis_map if variant in ("full", "no_recall") else None
    prompt = protocol.summarize_prompt(q.text, recall, analyses)
    return [_row(q, "summarize", "", prompt, protocol.summarize_target(q.answer), eval_row=False)]


def eval_rows(q: ToyQuestion, variant: str) -> list[dict]:
    target = protocol.summarize_target(q.answer)
    stage = protocol.VARIANT_STAGES[variant][0]
    return [_row(q, stage, x, prompt, target, eval_row=True) for x, prompt in protocol.first_prompts(q.text, q.letters, variant)]


def write_stage_data(folder, questions: Sequence[ToyQuestion] = TOY_QUESTIONS, *, dataset: str = "toy",
                     variants: Sequence[str] = records.VARIANTS, eval_questions: Sequence[ToyQuestion] | None = None) -> Path:
    """Write ``folder`` with configs ``{dataset}-{variant}``; validation and test hold
    ``eval_questions`` (default: the training questions themselves, for overfitting tests)."""
    folder = Path(folder)
    features = records.FEATURES
    eval_questions = questions if eval_questions is None else eval_questions
    configs = {}
    for variant in variants:
        config = f"{dataset}-{variant}"
        splits = records.train_splits(variant) + ("validation", "test")
        for split in splits:
            if split in ("validation", "test"):
                rows = [row for q in eval_questions for row in eval_rows(q, variant)]
            else:
                rows = [row for q in questions for row in train_rows(q, variant, split)]
            write_split(folder, config, split, rows, features)
        configs[config] = splits
    write_card(folder, configs_metadata(folder, configs, default=f"{dataset}-{variants[0]}"),
               f"# {dataset} toy stage data (tests)")
    return folder


def stage_records(questions: Sequence[ToyQuestion] = TOY_QUESTIONS, variant: str = "full") -> list[tuple[str, str]]:
    """(input, target) of every training record of a variant, for the test's own training loop."""
    return [(row["input"], row["target"]) for split in records.train_splits(variant) if split != "recall_single"
            for q in questions for row in train_rows(q, variant, split)]


def all_texts(questions: Sequence[ToyQuestion] = TOY_QUESTIONS) -> list[str]:
    """Every text a student sees in any stage variant (to train its tokenizer on; the baselines' texts
    are left out, so the toy students' tokenizers stay as they were)."""
    return [text for variant in records.VARIANTS if variant not in protocol.BASELINES
            for pair in stage_records(questions, variant) for text in pair]


# --- tiny students trained to answer the toy questions (shared by the students/pipeline tests) ----

TOY_CAPS = {"recall": 24, "analyze": 24, "summarize": 12}  # max_new_tokens that fit every toy text


def toy_items(questions: Sequence[ToyQuestion] = TOY_QUESTIONS):
    from tinythinker.data.splits import Item

    return [Item(q.id, q.text, q.letters, q.answer) for q in questions]


def mislabelled(questions: Sequence[ToyQuestion], wrong: Sequence[str]) -> tuple[ToyQuestion, ...]:
    """``questions`` with the answer of each id in ``wrong`` moved to the next letter: a student taught
    them answers those questions wrong, and only those, by construction."""
    import dataclasses

    def moved(q: ToyQuestion) -> ToyQuestion:
        return dataclasses.replace(q, answer=q.letters[(q.letters.index(q.answer) + 1) % len(q.letters)])

    return tuple(moved(q) if q.id in wrong else q for q in questions)


@functools.lru_cache(maxsize=None)
def overfit_student(kind: str, folder: str, wrong: tuple[str, ...] = ()):
    """A tiny ``kind`` student (saved under ``folder``, reloaded like any checkpoint) trained with a
    plain loop on Student.encode batches of every full-variant record until the greedy pipeline
    reproduces every stage text and answers all toy questions as taught: right, except the ids in
    ``wrong``, whose summary it was taught to give another letter (:func:`mislabelled`); their recall
    and analyses stay the teacher's. Cached: each test process trains each kind once."""
    import torch

    from tinythinker.evaluate.engine import accuracy, run_pipeline
    from tinythinker.students import Student, make_tiny_student

    taught = mislabelled(TOY_QUESTIONS, wrong)
    torch.set_num_threads(1)  # the machine is shared: one thread is faster than two contended ones
    name = f"toy-{kind}" + "".join(f"-{qid}" for qid in wrong)
    student = Student.load(make_tiny_student(kind, all_texts(), Path(folder) / name, seed=0), device="cpu")
    records = stage_records(taught)
    batch = student.encode([p for p, _ in records], [t for _, t in records])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=1e-2)
    for step in range(1, 601):
        student.model.train()
        loss = student.model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.2 and step % 10 == 0:
            traces = run_pipeline(student, toy_items(taught), progress=False, max_new_tokens=TOY_CAPS)
            learned = all(t.recall == q.recall and t.analyses == q.analysis_map for t, q in zip(traces, taught))
            if learned and accuracy(traces)["accuracy"] == 1.0:
                student.model.eval()
                return student
    raise AssertionError(f"the tiny {kind} student did not learn the toy questions in {step} steps (loss {loss.item():.3f})")
