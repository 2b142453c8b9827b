"""Stage records (REFERENCE 6) for every variant, and reproduction of the reference's records on
real questions of all three data sets (with the section-10 rules)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from tinythinker import protocol
from tinythinker.data.records import COLUMNS, FEATURES, build_split, variant_splits
from tinythinker.data.sources import Question, QuestionSet, load_questions
from tinythinker.data.teacher.requests import build_request
from tinythinker.data.teacher.responses import read_responses
from tinythinker.data.teacher.select import select_rationales

from helpers_records import Q1, Q2, QS, QT, QV, SELECTION, pairs, rows


def test_full_recall_and_recall_single():
    t1, t2 = Q1.text, Q2.text
    assert pairs("full", "recall") == [("q1", f"{t1}\nRecall:", "Fish swim."), ("q1", f"{t1}\nRecall:", "Fish breathe water."),
                                       ("q2", f"{t2}\nRecall:", "Blades cut.")]
    assert pairs("full", "recall_single") == [("q1", f"{t1}\nRecall:", "Fish swim."), ("q2", f"{t2}\nRecall:", "Blades cut.")]


def test_full_analyze_in_label_order_with_duplicates_removed():
    got = pairs("full", "analyze")
    assert len(got) == 9  # 3 options x (2 distinct rationales of q1 + 1 of q2)
    assert got[:3] == [("q1", f"{Q1.text}\nRecall: Fish swim.\nAnalyze: For option {x},", f"{x} because Fish swim.") for x in "ABC"]
    assert [r["option"] for r in rows("full", "analyze")][3:6] == ["A", "B", "C"]  # label order, not the teacher's ACB


def test_full_summarize_label_order_and_reference_order():
    head = f"{Q1.text}\nRecall: Fish breathe water.\nAnalyze: "
    label = [r for r in pairs("full", "summarize") if "breathe" in r[1]][0]
    assert label[1] == head + "For option A, A because Fish breathe water. For option B, B because Fish breathe water. For option C, C because Fish breathe water.\nSummarize:"
    assert label[2] == "So the answer is option A."
    teacher = [r for r in pairs("full", "summarize", reference_order=True) if "breathe" in r[1]][0]
    assert teacher[1] == head + "For option A, A because Fish breathe water. For option C, C because Fish breathe water. For option B, B because Fish breathe water.\nSummarize:"
    assert [r["option"] for r in rows("full", "analyze", True)][3:6] == ["A", "C", "B"]


def test_ablation_variants():
    assert pairs("summarize_only", "summarize") == [("q1", f"{Q1.text}\nSummarize:", "So the answer is option A."),
                                                     ("q2", f"{Q2.text}\nSummarize:", "So the answer is option B.")]
    no_analyze = pairs("no_analyze", "summarize")
    assert no_analyze[0] == ("q1", f"{Q1.text}\nRecall: Fish swim.\nSummarize:", "So the answer is option A.") and len(no_analyze) == 3
    no_recall = pairs("no_recall", "analyze")
    assert no_recall[0] == ("q1", f"{Q1.text}\nAnalyze: For option A,", "A because Fish swim.") and len(no_recall) == 9
    summary = pairs("no_recall", "summarize")[0]
    assert summary[1] == f"{Q1.text}\nAnalyze: For option A, A because Fish swim. For option B, B because Fish swim. For option C, C because Fish swim.\nSummarize:"


def test_validation_and_test_rows():
    full = rows("full", "validation")
    assert full == [{"id": "v1", "stage": "recall", "option": "", "question": QV.text, "choices": list(QV.options),
                     "input": f"{QV.text}\nRecall:", "target": "So the answer is option B.", "GT": "B",
                     "teacher_recall": "Ice is frozen.",
                     "teacher_analyses": ["A because Ice is frozen.", "B because Ice is frozen.", "C because Ice is frozen."]}]
    test = rows("full", "test")[0]  # no teacher responses for it
    assert (test["teacher_recall"], test["teacher_analyses"]) == ("", [])
    per_option = rows("no_recall", "validation")
    assert [(r["stage"], r["option"], r["input"]) for r in per_option] == [
        ("analyze", x, f"{QV.text}\nAnalyze: For option {x},") for x in "ABC"]
    assert rows("summarize_only", "test")[0]["input"] == f"{QT.text}\nSummarize:"
    assert rows("no_analyze", "test")[0]["stage"] == "recall"


def test_every_split_has_the_contract_columns():
    assert COLUMNS == ("id", "stage", "option", "question", "choices", "input", "target", "GT", "teacher_recall", "teacher_analyses")
    for variant in protocol.VARIANTS:
        for split in variant_splits(variant):
            table = build_split(QS, SELECTION, variant, split)
            assert table.schema.equals(FEATURES.arrow_schema, check_metadata=False)
            if split not in ("validation", "test"):
                assert set(table.column("teacher_recall").to_pylist()) == {""}
                assert set(map(len, table.column("teacher_analyses").to_pylist())) == {0}


# --- reproduction on real questions ----------------------------------------------------------------

def _teacher_text(q: Question, rng: random.Random, k: int) -> tuple[str, str]:
    """A plausible teacher sample naming the question's options (commas included), sometimes bad."""
    answer = q.answer if k % 5 != 3 else rng.choice([x for x in q.letters if x != q.answer])
    general = f"Sample {k}: " + " ".join(rng.sample(q.stem.split(), min(6, len(q.stem.split())))) + f" {rng.random():.6f}"
    lines = [f"{x} is {'correct' if x == answer else 'incorrect'}. Because {text} {'fits' if x == answer else 'does not fit'}"
             for x, text in zip(q.letters, q.options)]
    lines = lines[answer != q.answer:] + lines[: answer != q.answer]  # vary the teacher's order
    if k == 2 and rng.random() < 0.3:
        lines = lines[:-1]  # an option missing
    finish = "length" if k == 1 and rng.random() < 0.2 else "stop"
    return f"Key Information: {general}\nExplanations: " + "\n".join(lines), finish


def _reference_parse(text: str, finish: str, n: int):
    """REFERENCE 4, written out again independently: (general, [(letter, text)], answer) or None."""
    if finish == "length" or "Key Information" not in text:
        return None
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    general = lines[0].split("Key Information:", 1)[1].strip()
    general += "" if general.endswith((".", '"', "'")) else "."
    found, answer = [], None
    for line in lines[1 : n + 1]:
        line = line.split("Explanations: ")[-1]
        prefix, knowledge = line.split("Because ", 1)
        if prefix.strip().endswith("is correct."):
            answer = prefix.strip()[0]
        found.append((prefix.strip()[0], knowledge.strip() + ("" if knowledge.strip().endswith(".") else ".")))
    if answer is None or sorted(x for x, _ in found) != list("ABCDE"[:n]):
        return None
    return general, found, answer


def _expected(qs: QuestionSet, texts: dict[str, list[tuple[str, str]]], n: int):
    """The reference's records (REFERENCE 5-6 + 10) as sets: {(variant, split): {(id, input, target, GT)}}."""
    out: dict = {}
    for q in qs.splits["train"]:
        parsed = [p for p in (_reference_parse(t, f, n) for t, f in texts[q.id]) if p]
        if not parsed:
            continue
        votes = Counter(p[2] for p in parsed)
        label = max(votes, key=lambda a: (votes[a], -[p[2] for p in parsed].index(a)))
        for general, found, _ in [p for p in parsed if p[2] == label]:
            analyses = dict(found)
            line = " ".join(f"For option {x}, {analyses[x]}" for x in q.letters)
            target = f"So the answer is option {label}."
            Q = q.stem + "\n" + " ".join(f"({x}) {o}" for x, o in zip(q.letters, q.options))
            for variant, split, inp, tgt in [
                ("full", "recall", f"{Q}\nRecall:", general), ("no_analyze", "recall", f"{Q}\nRecall:", general),
                ("full", "summarize", f"{Q}\nRecall: {general}\nAnalyze: {line}\nSummarize:", target),
                ("no_analyze", "summarize", f"{Q}\nRecall: {general}\nSummarize:", target),
                ("no_recall", "summarize", f"{Q}\nAnalyze: {line}\nSummarize:", target),
                ("summarize_only", "summarize", f"{Q}\nSummarize:", target),
            ] + [("full", "analyze", f"{Q}\nRecall: {general}\nAnalyze: For option {x},", analyses[x]) for x in q.letters] \
              + [("no_recall", "analyze", f"{Q}\nAnalyze: For option {x},", analyses[x]) for x in q.letters]:
                out.setdefault((variant, split), set()).add((q.id, inp, tgt, label))
    return out


@pytest.mark.parametrize("dataset", ["csqa", "obqa", "strategyqa"])
def test_reproduces_the_reference_records_on_real_questions(raw_dir, tmp_path, dataset):
    full = load_questions(dataset, raw_dir / dataset)
    train = full.splits["train"][:40]
    if dataset == "obqa":  # make sure options with ", " are in (the reference mangled them)
        train += [q for q in full.splits["train"][40:] if any(", " in o for o in q.options)][:10]
    qs = QuestionSet(dataset, {"train": train, "validation": full.splits["validation"][:5], "test": full.splits["test"][:5]},
                     42, full.source, full.source_revision)
    n = len(train[0].options)
    rng = random.Random(dataset)
    texts = {q.id: [_teacher_text(q, rng, k) for k in range(4)] for q in qs.all()}
    lines = []
    for q in qs.all():  # the reference's format: [request body, completion], matched back by text
        choices = [{"index": k, "message": {"role": "assistant", "content": t}, "finish_reason": f} for k, (t, f) in enumerate(texts[q.id])]
        lines.append(json.dumps([build_request(q, dataset=dataset, model="gpt-4o-2024-05-13")["body"], {"choices": choices}]))
    path = tmp_path / "teacher.jsonl"
    path.write_text("\n".join(lines) + "\n")

    responses = read_responses([path], qs)
    assert responses.matched_by_text == len(qs.all())
    selection = select_rationales(qs, responses)
    counts = selection.counts["train"]
    assert counts.rejected["disagrees_with_label"] == len(train)  # every 4th sample argues for another option
    assert counts.with_rationales == len(train) and sum(counts.rejected.values()) > len(train)
    expected = _expected(qs, texts, n)
    assert len(expected[("full", "analyze")]) > 40 * n
    for (variant, split), want in expected.items():
        got = {(r["id"], r["input"], r["target"], r["GT"]) for r in build_split(qs, selection, variant, split).to_pylist()}
        assert got == want, (variant, split)
    single = build_split(qs, selection, "full", "recall_single").to_pylist()
    assert len(single) == len({r["id"] for r in single}) == len({x[0] for x in expected[("full", "recall")]})

    by_id = {q.id: q for q in qs.all()}
    for row in build_split(qs, selection, "full", "validation").to_pylist():
        q = by_id[row["id"]]
        assert row["question"] == protocol.render_question(q.stem, q.options) and row["choices"] == list(q.options)
        parsed = [p for p in (_reference_parse(t, f, n) for t, f in texts[q.id]) if p]
        match = [p for p in parsed if p[0] == row["teacher_recall"]]
        assert match and row["teacher_analyses"] == [dict(match[0][1])[x] for x in q.letters]
    if dataset == "obqa":
        commas = [q for q in train if any(", " in o for o in q.options)]
        assert commas
        for q in commas:
            rendered = q.text.split("\n")[1]
            mangled = " ".join(f"({o[0]}) {o[3:]}" for o in ", ".join(f"{x}. {t}" for x, t in zip(q.letters, q.options)).split(", "))
            assert rendered != mangled and all(f"({x}) {t}" in rendered for x, t in zip(q.letters, q.options))
