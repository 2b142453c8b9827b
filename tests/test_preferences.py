"""Preference pairs (REFERENCE 9) on hand-made traces: every rule, its count, and the folder layout."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from tinythinker.artifacts import read_card_metadata, split_path
from tinythinker.data.splits import Item
from tinythinker.evaluate.engine import Trace
from tinythinker.data.preferences import (
    ANALYZE_RULES,
    PairSet,
    RECALL_RULES,
    analyze_pairs,
    chosen_recalls,
    config_name,
    pair_rng,
    recall_pairs,
    teacher_analyses,
    teacher_recalls,
    write_preference_config,
)
from tinythinker.protocol import analyze_prompt, recall_prompt

Q1 = Item(id="q1", question="Where do fish live?\n(A) water (B) sky (C) desert", letters="ABC", gold="A")
Q2 = Item(id="q2", question="What melts ice?\n(A) cold (B) heat (C) dark", letters="ABC", gold="B")
QUESTIONS = {"q1": Q1, "q2": Q2}


def trace(qid: str, recall: str, answer: str | None, analyses: dict[str, str] | None = None, sample: int = 0) -> Trace:
    gold = QUESTIONS[qid].gold
    return Trace(id=qid, sample=sample, recall=recall, analyses=analyses or {}, summary="", answer=answer, gold=gold,
                 correct=answer == gold, seconds=0.0)


def recall_set(traces, teacher=None, seed=0):
    return recall_pairs(traces, QUESTIONS, teacher or {}, np.random.default_rng(seed))


def pairs_of(pair_set: PairSet, qid: str) -> list[tuple[str, str]]:
    return [(row["chosen"], row["rejected"]) for row in pair_set.rows if row["id"] == qid]


# --- recall pairs -------------------------------------------------------------------------------

def test_recall_pairs_in_order_with_the_recall_prompt():
    result = recall_set([trace("q1", "r1", "A"), trace("q1", "w1", "B"), trace("q1", "r2", "A"), trace("q1", "w2", "C")])
    assert pairs_of(result, "q1") == [("r1", "w1"), ("r2", "w2")]
    assert {row["prompt"] for row in result.rows} == {recall_prompt(Q1.question)}
    assert {row["stage"] for row in result.rows} == {"recall"}
    assert set(result.rows[0]) == {"id", "stage", "prompt", "chosen", "rejected"}
    assert result.counts["pairs"] == 2 and result.counts["questions"] == 1 and result.counts["samples"] == 4
    assert set(result.counts) == set(RECALL_RULES)


def test_recall_duplicates_are_dropped_on_each_side():
    result = recall_set([trace("q1", "r1", "A"), trace("q1", "r1", "A"), trace("q1", "w1", "B"), trace("q1", "w1", "C"), trace("q1", "w2", "B"), trace("q1", "r2", "A")])
    assert pairs_of(result, "q1") == [("r1", "w1"), ("r2", "w2")]
    assert result.counts["duplicate_chosen"] == 1 and result.counts["duplicate_rejected"] == 1


def test_a_recall_found_right_and_wrong_is_removed_from_both_sides():
    result = recall_set([trace("q1", "both", "A"), trace("q1", "both", "C"), trace("q1", "r1", "A"), trace("q1", "w1", "B")])
    assert pairs_of(result, "q1") == [("r1", "w1")]
    assert result.counts["shared"] == 1


def test_no_answer_counts_as_wrong_for_recall_pairs():
    result = recall_set([trace("q1", "r1", "A"), trace("q1", "mute", None)])
    assert pairs_of(result, "q1") == [("r1", "mute")]


def test_a_question_with_no_rejected_recall_is_skipped():
    all_right = [trace("q1", "r1", "A"), trace("q1", "r2", "A")]
    only_shared = [trace("q2", "x", "B"), trace("q2", "x", "A"), trace("q2", "y", "B")]
    result = recall_set(all_right + only_shared)
    assert result.rows == []
    assert result.counts["skipped_no_rejected"] == 2 and result.counts["shared"] == 1


def test_more_chosen_than_rejected_resamples_the_rejected_with_replacement():
    traces = [trace("q1", f"r{i}", "A") for i in range(5)] + [trace("q1", "w1", "B"), trace("q1", "w2", "C")]
    result = recall_set(traces, seed=3)
    pairs = pairs_of(result, "q1")
    assert [c for c, _ in pairs] == [f"r{i}" for i in range(5)]  # every chosen, in order
    assert {r for _, r in pairs} <= {"w1", "w2"} and len(pairs) == 5
    assert result.counts["rejected_resampled"] == 1 and result.counts["rejected_added"] == 3
    assert result.counts["teacher_added"] == 0


def test_more_rejected_than_chosen_adds_the_teacher_recalls_as_chosen():
    traces = [trace("q1", "r1", "A")] + [trace("q1", f"w{i}", "B") for i in range(3)]
    result = recall_set(traces, teacher={"q1": ["t1", "t2", "t3"]}, seed=1)
    pairs = pairs_of(result, "q1")
    assert [r for _, r in pairs] == ["w0", "w1", "w2"]  # the rejected are kept, in order
    assert pairs[0][0] == "r1"
    added = [c for c, _ in pairs[1:]]
    assert len(set(added)) == 2 and set(added) <= {"t1", "t2", "t3"}  # without replacement while there are enough
    assert result.counts["teacher_filled"] == 1 and result.counts["teacher_added"] == 2


def test_teacher_recalls_are_drawn_with_replacement_when_too_few():
    traces = [trace("q1", f"w{i}", "B") for i in range(4)]
    result = recall_set(traces, teacher={"q1": ["t1"]})
    assert pairs_of(result, "q1") == [("t1", f"w{i}") for i in range(4)]
    assert result.counts["teacher_added"] == 4


def test_without_teacher_recalls_pairs_are_cut_or_the_question_dropped():
    traces = [trace("q1", "r1", "A"), trace("q1", "w1", "B"), trace("q1", "w2", "C"), trace("q2", "w", "A")]
    result = recall_set(traces)
    assert pairs_of(result, "q1") == [("r1", "w1")]
    assert pairs_of(result, "q2") == []
    assert result.counts["unbalanced_no_teacher"] == 2 and result.counts["skipped_no_chosen"] == 1


def test_recall_pairs_are_seeded():
    traces = [trace("q1", f"r{i}", "A") for i in range(8)] + [trace("q1", f"w{i}", "B") for i in range(3)]
    runs = [recall_set(traces, seed=seed).rows for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    # the pair-building generator of a step depends on seed, iteration and stage
    draws = [pair_rng(42, it, stage).integers(0, 10**9) for it, stage in ((1, "recall"), (1, "recall"), (2, "recall"), (1, "analyze"))]
    assert draws[0] == draws[1] and len(set(draws[1:])) == 3


def test_questions_are_visited_in_question_order_and_chosen_recalls_are_distinct():
    traces = [trace("q2", "b-right", "B"), trace("q2", "b-wrong", "A"), trace("q1", "a-right", "A"), trace("q1", "a-wrong", "C")]
    result = recall_set(traces, teacher={"q1": ["t"]})
    assert [row["id"] for row in result.rows] == ["q1", "q2"]
    assert chosen_recalls(result) == [("q1", "a-right"), ("q2", "b-right")]
    doubled = PairSet("recall", result.rows + result.rows)
    assert chosen_recalls(doubled) == chosen_recalls(result)


# --- analyze pairs ------------------------------------------------------------------------------

def run(qid, recall, answer, texts: str, sample=0):
    """An analysis run whose analysis of option X is f"{texts}-{X}"."""
    return trace(qid, recall, answer, {x: f"{texts}-{x}" for x in QUESTIONS[qid].letters}, sample)


def analyze_set(traces, teacher=None, seed=0):
    return analyze_pairs(traces, QUESTIONS, teacher or {}, np.random.default_rng(seed))


def test_each_run_pair_gives_a_gold_option_pair_and_a_predicted_option_pair():
    result = analyze_set([run("q1", "rec", "A", "good"), run("q1", "rec", "C", "bad")])
    assert result.rows == [
        {"id": "q1", "stage": "analyze", "prompt": analyze_prompt(Q1.question, "A", "rec"), "chosen": "good-A", "rejected": "bad-A"},
        {"id": "q1", "stage": "analyze", "prompt": analyze_prompt(Q1.question, "C", "rec"), "chosen": "good-C", "rejected": "bad-C"},
    ]
    assert result.counts["pairs_gold"] == 1 and result.counts["pairs_predicted"] == 1 and result.counts["pairs"] == 2
    assert set(result.counts) == set(ANALYZE_RULES)


def test_runs_without_an_answer_among_the_options_are_dropped():
    result = analyze_set([run("q1", "rec", "A", "good"), run("q1", "rec", None, "mute"), run("q1", "rec", "Z", "odd"), run("q1", "rec", "B", "bad")])
    assert [(r["chosen"], r["rejected"]) for r in result.rows] == [("good-A", "bad-A"), ("good-B", "bad-B")]
    assert result.counts["dropped_no_answer"] == 2


def test_analyze_duplicates_and_shared_runs():
    traces = [
        run("q1", "rec", "A", "good"), run("q1", "rec", "A", "good"),  # duplicate chosen run
        run("q1", "rec", "A", "both"), run("q1", "rec", "B", "both"),  # the same run right and wrong
        run("q1", "rec", "B", "bad"), run("q1", "rec", "B", "bad"),  # duplicate rejected run
    ]
    result = analyze_set(traces)
    assert [(r["chosen"], r["rejected"]) for r in result.rows] == [("good-A", "bad-A"), ("good-B", "bad-B")]
    assert result.counts["duplicate_chosen"] == 1 and result.counts["duplicate_rejected"] == 1 and result.counts["shared"] == 1


def test_recalls_are_separate_groups_and_one_without_rejected_runs_is_skipped():
    traces = [run("q1", "rec1", "A", "g1"), run("q1", "rec1", "B", "b1"), run("q1", "rec2", "A", "g2"), run("q2", "rec3", "B", "g3")]
    result = analyze_set(traces)
    assert {row["prompt"].split("\nAnalyze")[0] for row in result.rows} == {f"{Q1.question}\nRecall: rec1"}
    assert result.counts["recalls"] == 3 and result.counts["skipped_no_rejected"] == 2


def test_analyze_balancing_resamples_rejected_or_adds_teacher_analyses():
    more_chosen = [run("q1", "rec", "A", f"g{i}") for i in range(3)] + [run("q1", "rec", "B", "bad")]
    result = analyze_set(more_chosen)
    assert [r["chosen"] for r in result.rows] == ["g0-A", "g0-B", "g1-A", "g1-B", "g2-A", "g2-B"]
    assert {r["rejected"] for r in result.rows} == {"bad-A", "bad-B"}
    assert result.counts["rejected_resampled"] == 1 and result.counts["rejected_added"] == 2

    more_rejected = [run("q1", "rec", "A", "good"), run("q1", "rec", "B", "b1"), run("q1", "rec", "C", "b2")]
    teacher = {"q1": [{"A": "tA", "B": "tB", "C": "tC"}]}
    result = analyze_set(more_rejected, teacher)
    assert [(r["chosen"], r["rejected"]) for r in result.rows] == [("good-A", "b1-A"), ("good-B", "b1-B"), ("tA", "b2-A"), ("tC", "b2-C")]
    assert result.counts["teacher_filled"] == 1 and result.counts["teacher_added"] == 1

    no_chosen = [run("q1", "rec", "B", "b1")]
    assert [r["chosen"] for r in analyze_set(no_chosen, teacher).rows] == ["tA", "tB"]
    empty = analyze_set(no_chosen)
    assert empty.rows == [] and empty.counts["skipped_no_chosen"] == 1 and empty.counts["unbalanced_no_teacher"] == 1


# --- the teacher's records ----------------------------------------------------------------------

def test_teacher_records_from_the_stage_data_set_rows():
    recall_rows = [{"id": "q1", "target": "gk one."}, {"id": "q1", "target": "gk two."}, {"id": "q2", "target": "gk three."}]
    analyze_rows = [{"id": "q1", "input": analyze_prompt(Q1.question, x, "gk one."), "target": f"one {x}."} for x in "ABC"]
    analyze_rows += [{"id": "q1", "input": analyze_prompt(Q1.question, x, "gk two."), "target": f"two {x}."} for x in "AB"]  # C missing
    analyze_rows += [{"id": "q2", "input": analyze_prompt(Q2.question, x, "gk three."), "target": f"three {x}."} for x in "CBA"]
    assert teacher_recalls(recall_rows) == {"q1": ["gk one.", "gk two."], "q2": ["gk three."]}
    runs = teacher_analyses(recall_rows, analyze_rows, QUESTIONS)
    assert runs == {"q1": [{"A": "one A.", "B": "one B.", "C": "one C."}], "q2": [{"A": "three A.", "B": "three B.", "C": "three C."}]}


# --- the preference-set folder ------------------------------------------------------------------

INFO = {"student": "runs/x/best", "samples": 4, "sampling": {"do_sample": True, "temperature": 0.7, "top_k": 0}, "seed": 42,
        "data": "out/csqa", "config": "csqa-full"}


def test_preference_folder_accumulates_one_loadable_config_per_iteration(tmp_path):
    folder = tmp_path / "preferences"
    recall = recall_set([trace("q1", "r1", "A"), trace("q1", "w1", "B")])
    analyze = analyze_set([run("q1", "r1", "A", "good"), run("q1", "r1", "C", "bad")])
    assert write_preference_config(folder, dataset="csqa", iteration=1, pair_sets=[recall, analyze], info=INFO) == "csqa-dpo-iter1"
    first_file = split_path(folder, "csqa-dpo-iter1", "recall")
    first_bytes = first_file.read_bytes()
    # iteration 2 has no analyze pair: its config has the recall split only
    write_preference_config(folder, dataset="csqa", iteration=2, pair_sets=[recall, PairSet("analyze", [], {"pairs": 0})], info=INFO)
    # iteration 3 has no pair at all: recorded in the card, no config
    assert write_preference_config(folder, dataset="csqa", iteration=3, pair_sets=[PairSet("recall", [], {"pairs": 0})], info=INFO) is None

    one = datasets.load_dataset(str(folder), config_name("csqa", 1))
    assert set(one) == {"recall", "analyze"}
    assert one["recall"][0] == recall.rows[0] and one["analyze"].num_rows == 2
    assert one["recall"].column_names == ["id", "stage", "prompt", "chosen", "rejected"]
    two = datasets.load_dataset(str(folder), "csqa-dpo-iter2")
    assert set(two) == {"recall"}
    assert split_path(folder, "csqa-dpo-iter1", "recall") == first_file and first_file.read_bytes() == first_bytes

    meta = read_card_metadata(folder)
    assert [c["config_name"] for c in meta["configs"]] == ["csqa-dpo-iter1", "csqa-dpo-iter2"]
    recorded = meta["tinythinker"]["iterations"]
    assert recorded["csqa-dpo-iter1"]["counts"]["recall"]["pairs"] == 1 and recorded["csqa-dpo-iter3"]["splits"] == []
    card = (folder / "README.md").read_text()
    assert "runs/x/best" in card and "csqa-dpo-iter3" in card and "seed" in card
    assert RECALL_RULES["shared"] in card and ANALYZE_RULES["pairs_predicted"] in card

    # rewriting an iteration replaces it and keeps the others
    write_preference_config(folder, dataset="csqa", iteration=1, pair_sets=[recall], info=INFO)
    assert set(datasets.load_dataset(str(folder), "csqa-dpo-iter1")) == {"recall"}
    assert set(datasets.load_dataset(str(folder), "csqa-dpo-iter2")) == {"recall"}
    assert not list((folder / "data/csqa-dpo-iter1").glob("analyze-*"))
    assert not list(tmp_path.glob(".preferences.partial-*"))


@pytest.mark.parametrize("seed", range(5))
def test_pair_invariants_on_random_traces(seed):
    """Fuzz: whatever the samples, pairs are balanced, chosen is right, rejected is wrong, no text on both sides."""
    rng = np.random.default_rng(seed)
    texts = [f"t{i}" for i in range(6)]
    traces = [trace(qid, str(rng.choice(texts)), rng.choice(["A", "B", "C", None]), sample=i)
              for qid in QUESTIONS for i in range(int(rng.integers(0, 12)))]
    result = recall_set(traces, teacher={"q1": ["teacher"]}, seed=seed)
    right = {(t.id, t.recall) for t in traces if t.answer == t.gold} | {("q1", "teacher")}
    wrong = {(t.id, t.recall) for t in traces if t.answer != t.gold}
    for row in result.rows:
        assert (row["id"], row["chosen"]) in right - wrong or row["chosen"] == "teacher"
        assert (row["id"], row["rejected"]) in wrong - right
    assert result.counts["pairs"] == len(result.rows)
