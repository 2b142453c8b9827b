"""Selection (REFERENCE 5 with the section-10 rules) on hand-made teacher samples."""

from __future__ import annotations

import json
import random
import string

from tinythinker.protocol import majority
from tinythinker.data.sources import Question, QuestionSet
from tinythinker.data.teacher.responses import QuestionResponses, TeacherResponses, TeacherSample
from tinythinker.data.teacher.select import (
    RoundNeed,
    choose_diverse,
    next_round_requests,
    select_rationales,
    write_request_file,
)

LETTERS = "ABCD"


def text(answer: str, general: str = "Plants need sunlight to grow", tag: str = "") -> str:
    lines = [f"{x} is {'correct' if x == answer else 'incorrect'}. Because reason {x}{tag}" for x in LETTERS]
    return f"Key Information: {general}\nExplanations: " + "\n".join(lines)


def question(qid: str, answer: str = "A", split: str = "train") -> Question:
    return Question(qid, f"Question {qid}?", ("w", "x", "y", "z"), answer, split)


def make(samples_by_q: dict[str, list], splits=None, max_tokens=256, failed=()) -> tuple[QuestionSet, TeacherResponses]:
    """samples: list of text or (text, finish_reason)."""
    splits = splits or {"train": [question(q) for q in samples_by_q], "validation": [], "test": []}
    by_question = {}
    for qid, samples in samples_by_q.items():
        entry = QuestionResponses(qid, requests=1, max_tokens=[max_tokens] if max_tokens else [])
        for i, s in enumerate(samples):
            t, finish = (s, "stop") if isinstance(s, str) else s
            entry.samples.append(TeacherSample(t, finish, max_tokens, 1, f"f:1#{i}"))
        by_question[qid] = entry
    for qid in failed:
        by_question[qid] = QuestionResponses(qid, requests=1, failed_requests=1, max_tokens=[max_tokens])
    responses = TeacherResponses(by_question, ["f"], 1)
    responses.models["gpt-4o-2024-05-13"] += 1
    return QuestionSet("obqa", splits, 42, "mem", "rev"), responses


def distinct_generals(n: int) -> list[str]:
    """n general-knowledge strings more than 10 edits apart from each other."""
    return ["".join(random.Random(i).choices(string.ascii_lowercase + " ", k=40)) + "." for i in range(n)]


def test_majority_tie_goes_to_the_answer_seen_first():
    assert majority(["B", "A", "A", "B"]) == "B"
    assert majority(["C", "A", "A"]) == "A"
    assert majority([None, "A", None]) is None and majority([]) is None  # a None votes; no answers: None


def test_vote_corrects_the_label_and_keeps_agreeing_samples():
    gks = distinct_generals(4)
    qs, responses = make({"q": [text("B", gks[0]), text("B", gks[1]), text("A", gks[2]), text("C", gks[3])]})
    selection = select_rationales(qs, responses)
    assert selection.labels["q"] == "B" and selection.corrections == {"q": ("A", "B")}
    assert [r.general for r in selection.rationales["q"]] == [gks[0], gks[1]]
    counts = selection.counts["train"]
    assert (counts.accepted, counts.kept, counts.label_corrections) == (4, 2, 1)
    assert counts.rejected == {"disagrees_with_label": 2}


def test_no_correction_of_evaluation_labels():
    gks = distinct_generals(3)
    splits = {"train": [], "validation": [question("v", "A", "validation")], "test": []}
    qs, responses = make({"v": [text("B", gks[0]), text("B", gks[1]), text("A", gks[2])]}, splits=splits)
    selection = select_rationales(qs, responses)
    assert selection.labels["v"] == "A" and selection.corrections == {}
    assert selection.first("v").label == "B"  # the teacher's consensus rationale feeds oracle evaluation
    assert selection.needs_round == []


def test_rejections_are_counted_by_reason_before_selection():
    good = text("A", "Key facts about plants")
    missing = "\n".join(text("A", "gk two").split("\n")[:-1])
    qs, responses = make({"q": [good, (good, "length"), missing, "no structure at all", text("D", "gk").replace("is correct", "is incorrect")]})
    counts = select_rationales(qs, responses).counts["train"]
    assert counts.rejected == {"truncated": 1, "incomplete_options": 1, "no_key_information": 1, "no_correct_option": 1}
    assert (counts.samples, counts.accepted, counts.selected) == (5, 1, 1)


def test_diversity_distinct_means_distance_above_10():
    base = "The sun gives plants energy."
    near = base.replace("gives", "offers")  # distance 5: neither is distinct
    far = "Water and light are what every green plant needs most."
    chosen = choose_diverse([base, near, far], 3, random.Random(0))
    assert chosen[0] == 2 and sorted(chosen) == [0, 1, 2]  # the distinct one first, then the fill
    assert choose_diverse(["x" * 10, "", "y" * 40], 1, random.Random(0)) == [2]  # 10 apart: not distinct
    assert choose_diverse(["x" * 11, "", "y" * 40], 1, random.Random(0)) == [0]  # 11 apart: distinct
    assert sorted(choose_diverse(["x" * 10, ""], 4, random.Random(0))) == [0, 1]  # fewer than asked: all


def test_distinct_first_in_order_then_seeded_random_fill():
    gks = distinct_generals(3) + ["Same text again.", "Same text again!", "Same text again?"]
    order = [gks[3], gks[0], gks[4], gks[1], gks[5], gks[2]]
    qs, responses = make({"q": [text("A", g) for g in order]})
    chosen = [r.general for r in select_rationales(qs, responses).rationales["q"]]  # obqa: num_augment 4
    assert chosen[:3] == [gks[0], gks[1], gks[2]]  # the distinct ones, in sample order
    assert chosen[3] in gks[3:] and len(chosen) == 4
    again = [r.general for r in select_rationales(qs, responses).rationales["q"]]
    other_seed = {select_rationales(qs, responses, seed=s).rationales["q"][3].general for s in range(20)}
    assert chosen == again and len(other_seed) > 1  # seeded, and the seed matters


def test_distinct_ones_are_capped_at_num_augment():
    gks = distinct_generals(6)
    qs, responses = make({"q": [text("A", g) for g in gks]})
    selection = select_rationales(qs, responses)
    assert [r.general for r in selection.rationales["q"]] == gks[:4]
    assert selection.counts["train"].surplus == 2 and selection.needs_round == []


def test_rounds_missing_counts_and_doubled_max_tokens():
    gks = distinct_generals(3)
    samples = {
        "short": [text("A", gks[0]), (text("A", gks[1]), "length")],  # 1 kept, cut off at 256 -> 512
        "fine": [text("A", g) for g in distinct_generals(4)],
        "bad": ["nothing useful"],
    }
    qs, responses = make(samples, failed=["down"])
    qs.splits["train"].append(question("down"))
    qs.splits["train"].append(question("never"))
    selection = select_rationales(qs, responses)
    assert selection.needs_round == [
        RoundNeed("short", 3, 512, "too_few_samples"),
        RoundNeed("bad", 4, 256, "no_accepted_sample"),
        RoundNeed("down", 4, 256, "failed_request"),
        RoundNeed("never", 4, 256, "no_response"),
    ]
    counts = selection.counts["train"]
    assert counts.without_rationales == {"no_accepted_sample": 1, "failed_request": 1, "no_response": 1}
    assert (counts.needs_round, counts.missing_samples) == (4, 15)


def test_budget_is_not_doubled_again_after_a_larger_round():
    qs, responses = make({"q": [(text("A"), "length")]}, max_tokens=256)
    responses.by_question["q"].max_tokens.append(512)  # round 2 asked with 512 and was not cut off
    assert select_rationales(qs, responses).needs_round[0].max_tokens == 512


def test_next_round_request_file(tmp_path):
    qs, responses = make({"q": [text("A")]})
    selection = select_rationales(qs, responses)
    lines = next_round_requests(selection, qs)
    assert len(lines) == 1
    line = lines[0]
    assert line["custom_id"] == "q" and line["url"] == "/v1/chat/completions"
    assert (line["body"]["n"], line["body"]["max_tokens"], line["body"]["model"]) == (3, 256, "gpt-4o-2024-05-13")
    assert line["body"]["messages"][1]["content"].startswith("Question q?\nOptions: A. w, B. x, C. y, D. z")
    path = write_request_file(tmp_path / "next.jsonl", lines)
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines
    assert next_round_requests(selection, qs, model="other")[0]["body"]["model"] == "other"


def test_same_inputs_same_selection():
    qs, responses = make({f"q{i}": [text("A", g) for g in distinct_generals(2) + ["dup.", "dup.", "dup!"]] for i in range(5)})
    first = select_rationales(qs, responses, seed=3)
    second = select_rationales(qs, responses, seed=3)
    assert first.rationales == second.rationales
