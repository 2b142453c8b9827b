"""A tiny question set and teacher selection (obqa-shaped, 3 options) whose stage and baseline records
test_records and test_baselines check."""

from __future__ import annotations

from tinythinker.data.records import build_split
from tinythinker.data.sources import Question, QuestionSet
from tinythinker.data.teacher.select import Rationale, Selection, SelectionCounts

Q1 = Question("q1", "Where do fish live?", ("water", "trees, mostly", "deserts"), "A")
Q2 = Question("q2", "What cuts paper?", ("spoon", "scissors", "soap"), "B")
QV = Question("v1", "What is ice?", ("fire", "frozen water", "wind"), "B", "validation")
QT = Question("t1", "What is hot?", ("snow", "ice", "fire"), "C", "test")
QS = QuestionSet("obqa", {"train": [Q1, Q2], "validation": [QV], "test": [QT]}, 42, "mem", "rev")


def rationale(q, general, order, label=None):
    return Rationale(q.id, general, tuple((x, f"{x} because {general}") for x in order), label or q.answer, "f:1#0")


RATIONALES = {
    "q1": [rationale(Q1, "Fish swim.", "ABC"), rationale(Q1, "Fish breathe water.", "ACB"),
           rationale(Q1, "Fish swim.", "ABC")],  # an exact duplicate of the first
    "q2": [rationale(Q2, "Blades cut.", "BAC")],
    "v1": [rationale(QV, "Ice is frozen.", "BAC")],
}
SELECTION = Selection("obqa", 42, 4, RATIONALES, {"q1": "A", "q2": "B", "v1": "B"}, {},
                      {s: SelectionCounts() for s in ("train", "validation", "test")}, [], 2, "m")


def rows(variant, split, reference_order=False):
    return build_split(QS, SELECTION, variant, split, reference_order=reference_order).to_pylist()


def pairs(variant, split, reference_order=False):
    return [(r["id"], r["input"], r["target"]) for r in rows(variant, split, reference_order)]
