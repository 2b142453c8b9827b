"""The text protocol: REFERENCE 2 (rendering), 4 (parsing one teacher sample), 6 and 8 (prompts)."""

from __future__ import annotations

import random
import string

import pytest

from tinythinker import protocol
from tinythinker.protocol import ParsedSample, Rejected, parse_teacher_sample

Q = protocol.render_question("Where do fish live?", ("water", "trees, mostly", "deserts"))


def sample(general="Fish need water to breathe", lines=None, head="Key Information: "):
    lines = lines if lines is not None else [
        "Explanations: A is correct. Because fish breathe with gills in water",
        "B is incorrect. Because birds live in trees",
        "C is incorrect. Because deserts have no water",
    ]
    return f"{head}{general}\n" + "\n".join(lines)


# --- sections 2, 6, 8 ---------------------------------------------------------------------------

def test_render_question_keeps_commas_in_options():
    assert Q == "Where do fish live?\n(A) water (B) trees, mostly (C) deserts"


def test_stage_prompts_and_targets():
    assert protocol.recall_prompt(Q) == f"{Q}\nRecall:"
    assert protocol.analyze_prompt(Q, "B", "gk.") == f"{Q}\nRecall: gk.\nAnalyze: For option B,"
    assert protocol.analyze_prompt(Q, "B") == f"{Q}\nAnalyze: For option B,"
    analyses = {"B": "b.", "A": "a.", "C": "c."}
    full = f"{Q}\nRecall: gk.\nAnalyze: For option A, a. For option B, b. For option C, c.\nSummarize:"
    assert protocol.summarize_prompt(Q, "gk.", analyses) == full  # a mapping is listed in label order
    assert protocol.summarize_prompt(Q, "gk.", [("B", "b."), ("A", "a.")]) == f"{Q}\nRecall: gk.\nAnalyze: For option B, b. For option A, a.\nSummarize:"
    assert protocol.summarize_prompt(Q) == f"{Q}\nSummarize:"
    assert protocol.summarize_prompt(Q, recall="gk.") == f"{Q}\nRecall: gk.\nSummarize:"
    assert protocol.summarize_target("C") == "So the answer is option C."
    assert protocol.first_prompts(Q, "ABC", "no_recall")[1] == ("B", f"{Q}\nAnalyze: For option B,")
    assert protocol.first_prompts(Q, "ABC", "summarize_only") == [("", f"{Q}\nSummarize:")]


def test_answer_regex():
    assert protocol.parse_answer("So the answer is option C.") == "C"
    assert protocol.parse_answer("so the answer is option C") is None
    assert protocol.parse_answer("the answer is option (C).") is None


# --- section 4 -----------------------------------------------------------------------------------

def test_good_sample():
    parsed = parse_teacher_sample(sample(), 3)
    assert parsed == ParsedSample(
        "Fish need water to breathe.",
        (("A", "fish breathe with gills in water."), ("B", "birds live in trees."), ("C", "deserts have no water.")),
        "A",
    )


def test_rule1_cut_off_sample_is_rejected():
    assert parse_teacher_sample(sample(), 3, "length") == Rejected(protocol.REJECT_TRUNCATED)


def test_rule2_key_block_becomes_first_line_and_text_before_it_is_dropped():
    text = "Sure, here it is.\nKey Information:\n  Fish need\n water.\nExplanations:\n\nA is correct. Because fish swim\nB is incorrect. Because no\nC is incorrect. Because no"
    parsed = parse_teacher_sample(text, 3)
    assert parsed.general == "Fish need water."
    assert parsed.explanations[0] == ("A", "fish swim.")


def test_rule2_explanations_marker_without_space_is_normalised():
    text = sample(lines=["Explanations:A is correct. Because yes", "B is incorrect. Because no", "C is incorrect. Because no"])
    assert parse_teacher_sample(text, 3).answer == "A"


def test_rule3_first_line_must_hold_key_information():
    assert parse_teacher_sample(sample(head="Key facts: "), 3) == Rejected(protocol.REJECT_NO_KEY_INFORMATION)
    assert parse_teacher_sample("", 3) == Rejected(protocol.REJECT_NO_KEY_INFORMATION)


@pytest.mark.parametrize("general,expected", [("ends plain", "ends plain."), ("ends.", "ends."),
                                              ('says "hi"', 'says "hi"'), ("it's 'x'", "it's 'x'")])
def test_rule3_period_appended_unless_ending_in_period_or_quote(general, expected):
    assert parse_teacher_sample(sample(general=general), 3).general == expected


def test_rule3_empty_key_information_is_kept_with_recall_a_period():
    # the reference appends "." to whatever follows `Key Information:`, the empty text too
    for text in (sample(general=""), sample(general="   ")):
        parsed = parse_teacher_sample(text, 3)
        assert isinstance(parsed, ParsedSample) and parsed.general == "." and parsed.answer == "A"


def test_rule4_only_n_lines_after_the_first_are_looked_at():
    lines = ["Explanations: A is correct. Because a", "B is incorrect. Because b", "Note: thinking", "C is incorrect. Because c"]
    # the note uses up C's place: C's line is never read -> incomplete
    assert parse_teacher_sample(sample(lines=lines), 3) == Rejected(protocol.REJECT_INCOMPLETE)


def test_rule4_lines_without_verdict_or_delimiter_are_skipped_but_use_their_place():
    lines = ["Explanations: A is correct. Because a", "B is incorrect, since b", "C is incorrect. Because c"]
    assert parse_teacher_sample(sample(lines=lines), 3) == Rejected(protocol.REJECT_INCOMPLETE)


@pytest.mark.parametrize("delimiter", ["Because ", "Because, ", "Although ", "While "])
def test_rule4_every_delimiter(delimiter):
    lines = [f"Explanations: A is correct. {delimiter}a", "B is incorrect. Because b", "C is incorrect. Because c"]
    assert parse_teacher_sample(sample(lines=lines), 3).explanations[0] == ("A", "a.")


def test_rule4_split_at_the_first_occurrence():
    lines = ["Explanations: A is correct. Because gills work. Because of that, x", "B is incorrect. Because b", "C is incorrect. Because c"]
    # REFERENCE 10: a line with two "Because " no longer breaks the parser
    assert parse_teacher_sample(sample(lines=lines), 3).explanations[0] == ("A", "gills work. Because of that, x.")


def test_rule4_the_first_delimiter_of_the_list_is_used_even_if_another_comes_earlier():
    lines = ["Explanations: A is correct. While wet, Because gills work", "B is incorrect. Because b", "C is incorrect. Because c"]
    # "Because " comes first in the list, so the prefix is "A is correct. While wet," -> rejected
    assert parse_teacher_sample(sample(lines=lines), 3).reason == protocol.REJECT_BAD_PREFIX


def test_rule4_bad_prefix_rejects_the_sample():
    lines = ["Explanations: A is correct. Because a", "Option B is incorrect. Because b", "C is incorrect. Because c"]
    assert parse_teacher_sample(sample(lines=lines), 3).reason == protocol.REJECT_BAD_PREFIX


def test_rule4_explanations_prefix_is_removed_from_its_line():
    lines = ["Explanations: A is incorrect. Because a", "Explanations: B is correct. Because b", "C is incorrect. Because c"]
    assert parse_teacher_sample(sample(lines=lines), 3).answer == "B"


def test_rule2_lines_before_explanations_join_the_key_information():
    lines = ["A is incorrect. Because a", "Explanations: B is correct. Because b", "C is incorrect. Because c"]
    parsed = parse_teacher_sample(sample(lines=lines), 3)
    assert parsed == Rejected(protocol.REJECT_INCOMPLETE)  # A's line became part of the general knowledge


def test_rule5_last_correct_wins_and_no_correct_rejects():
    lines = ["Explanations: A is correct. Because a", "B is correct. Because b", "C is incorrect. Because c"]
    assert parse_teacher_sample(sample(lines=lines), 3).answer == "B"
    lines = ["Explanations: A is incorrect. Because a", "B is incorrect. Because b", "C is incorrect. Because c"]
    assert parse_teacher_sample(sample(lines=lines), 3) == Rejected(protocol.REJECT_NO_CORRECT)


def test_rule6_exactly_one_explanation_per_option():
    missing = ["Explanations: A is correct. Because a", "B is incorrect. Because b"]
    twice = ["Explanations: A is correct. Because a", "A is incorrect. Because b", "C is incorrect. Because c"]
    foreign = ["Explanations: A is correct. Because a", "B is incorrect. Because b", "E is incorrect. Because e"]
    for lines in (missing, twice, foreign):
        assert parse_teacher_sample(sample(lines=lines), 3) == Rejected(protocol.REJECT_INCOMPLETE)


def test_teacher_order_is_kept_and_label_order_available():
    lines = ["Explanations: C is correct. Because c", "A is incorrect. Because a", "B is incorrect. Because b"]
    parsed = parse_teacher_sample(sample(lines=lines), 3)
    assert [x for x, _ in parsed.explanations] == ["C", "A", "B"]
    assert list(parsed.analyses()) == ["A", "B", "C"]


def test_fuzz_parse_never_raises():
    rng = random.Random(0)
    pieces = ["Key Information:", "Explanations:", " is correct.", " is incorrect.", "Because ", "Because, ",
              "Although ", "While ", "\n", "A", "B", "C", "D", "E", " ", ".", '"', "\r\n", "\t"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) if rng.random() < 0.7 else rng.choice(string.printable) for _ in range(rng.randint(0, 80)))
        result = parse_teacher_sample(text, rng.choice([2, 4, 5]), rng.choice(["stop", "length", None]))
        assert isinstance(result, (ParsedSample, Rejected))
        if isinstance(result, ParsedSample):
            assert result.answer in "ABCDE" and result.general


def test_a_reply_far_beyond_any_token_budget_is_rejected_unread():
    long = sample().replace("Fish need water to breathe", "Fish need water. " * (protocol.MAX_SAMPLE_CHARS // 10))
    assert parse_teacher_sample(long, 3) == Rejected(protocol.REJECT_TOO_LONG)
    assert parse_teacher_sample(long, 3).detail == f"{len(long):,} characters"
    fits = sample().replace("Fish need water to breathe", "x" * (protocol.MAX_SAMPLE_CHARS - len(sample()) + 26))
    assert len(fits) == protocol.MAX_SAMPLE_CHARS and isinstance(parse_teacher_sample(fits, 3), ParsedSample)
