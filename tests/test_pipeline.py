"""The three-stage engine: answers, prompts of every variant, batching, sampling, oracles, vote, data."""

from __future__ import annotations

import json

import pytest

from helpers_data import TOY_CAPS, TOY_QUESTIONS, all_texts, toy_items, write_stage_data
from tinythinker import protocol
from tinythinker.errors import TinyThinkerError
from tinythinker.data.splits import Item, items_from_dataset, oracles_from_dataset
from tinythinker.evaluate.engine import Sampling, Trace, accuracy, generate_analyses, generate_recalls, generate_summaries, run_pipeline, vote
from tinythinker.students import Student, make_tiny_student

KINDS = ("seq2seq", "causal")
SAMPLED = Sampling(do_sample=True, temperature=1.0)


class RecordingStudent(Student):
    """A real Student that also keeps every prompt the engine hands it (to check the prompts)."""

    def __init__(self, student: Student):
        super().__init__(student.model, student.tokenizer, device=student.device)
        self.prompts: list[str] = []

    def tokenize_prompts(self, prompts):
        self.prompts += list(prompts)
        return super().tokenize_prompts(prompts)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Student:
    return Student.load(make_tiny_student("causal", all_texts(), tmp_path_factory.mktemp("untrained") / "s", seed=3), device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_stage_data(tmp_path_factory.mktemp("data") / "toy")


def test_overfit_student_answers_its_training_questions(trained):
    traces = run_pipeline(trained, toy_items(), progress=False, max_new_tokens=TOY_CAPS)
    assert [t.answer for t in traces] == [q.answer for q in TOY_QUESTIONS]
    assert all(t.correct for t in traces)
    for trace, q in zip(traces, TOY_QUESTIONS):  # every stage's text is recorded
        assert trace.recall == q.recall
        assert trace.analyses == q.analysis_map
        assert trace.summary == protocol.summarize_target(q.answer)
        assert set(trace.stage_seconds) == {"recall", "analyze", "summarize"}
        assert trace.seconds == pytest.approx(sum(trace.stage_seconds.values())) and trace.seconds > 0


def test_batch_size_does_not_change_greedy_traces(trained):
    def texts(batch_size):
        traces = run_pipeline(trained, toy_items(), batch_size=batch_size, progress=False, max_new_tokens=TOY_CAPS)
        return [(t.recall, t.analyses, t.summary, t.answer) for t in traces]

    assert texts(1) == texts(16)


@pytest.mark.parametrize("variant", protocol.VARIANTS)
def test_every_variant_sends_the_protocol_prompts(untrained, variant):
    student = RecordingStudent(untrained)
    items = toy_items()[:2]
    traces = run_pipeline(student, items, variant=variant, progress=False, max_new_tokens={"recall": 4, "analyze": 4, "summarize": 4})
    stages = protocol.VARIANT_STAGES[variant]
    expected = []
    if stages[0] in protocol.ONE_PASS_TEXTS:  # a baseline: one pass, no stage prompts
        expected += [protocol.one_pass_prompt(item.question, stages[0]) for item in items]
    elif "recall" in stages:
        expected += [protocol.recall_prompt(item.question) for item in items]
    if "analyze" in stages:
        expected += [protocol.analyze_prompt(item.question, x, t.recall) for item, t in zip(items, traces) for x in item.letters]
    expected += [protocol.summarize_prompt(item.question, t.recall, t.analyses if "analyze" in stages else None)
                 for item, t in zip(items, traces) if stages[0] not in protocol.ONE_PASS_TEXTS]
    assert student.prompts == expected
    for t in traces:
        assert (t.recall is not None) == ("recall" in stages)
        assert bool(t.analyses) == ("analyze" in stages)
        assert set(t.stage_seconds) == set(stages)
        if t.recall:
            assert t.recall.endswith((".", '"', "'"))  # REFERENCE 8.1


def test_given_texts_replace_the_students(untrained):
    student = RecordingStudent(untrained)
    items = toy_items()
    q1, q2 = TOY_QUESTIONS[:2]
    traces = run_pipeline(student, items, progress=False, max_new_tokens={"recall": 4, "analyze": 4, "summarize": 4},
                          given_recalls={q1.id: q1.recall, q2.id: "Fish swim"},
                          given_analyses={q1.id: q1.analysis_map})
    assert traces[0].recall == q1.recall and traces[1].recall == "Fish swim."  # a period is appended
    assert traces[0].analyses == q1.analysis_map
    recall_prompts = [p for p in student.prompts if p.endswith("\nRecall:")]
    assert recall_prompts == [protocol.recall_prompt(item.question) for item in items[2:]]
    analyze_prompts = [p for p in student.prompts if "\nAnalyze: For option " in p and not p.endswith("Summarize:")]
    assert not any(p.startswith(items[0].question + "\n") for p in analyze_prompts)  # q1 fully given
    assert protocol.analyze_prompt(items[1].question, "A", "Fish swim.") in analyze_prompts
    assert protocol.summarize_prompt(items[0].question, q1.recall, q1.analysis_map) in student.prompts


def test_oracle_with_the_teachers_texts_answers_right(trained):
    given_recalls = {q.id: q.recall for q in TOY_QUESTIONS}
    given_analyses = {q.id: q.analysis_map for q in TOY_QUESTIONS}
    traces = run_pipeline(trained, toy_items(), progress=False, max_new_tokens=TOY_CAPS,
                          given_recalls=given_recalls, given_analyses=given_analyses)
    assert all(t.correct for t in traces)
    assert all(set(t.stage_seconds.values()) != {0.0} for t in traces)


def test_sampled_runs_are_seeded_and_voted(untrained):
    items = toy_items()
    caps = {"recall": 6, "analyze": 6, "summarize": 4}
    first = run_pipeline(untrained, items, samples=3, sampling=SAMPLED, seed=5, progress=False, max_new_tokens=caps)
    again = run_pipeline(untrained, items, samples=3, sampling=SAMPLED, seed=5, progress=False, max_new_tokens=caps)
    other = run_pipeline(untrained, items, samples=3, sampling=SAMPLED, seed=6, progress=False, max_new_tokens=caps)
    assert [t.to_dict() | {"seconds": 0, "stage_seconds": {}} for t in first] == [
        t.to_dict() | {"seconds": 0, "stage_seconds": {}} for t in again]
    assert [t.recall for t in first] != [t.recall for t in other]
    assert [(t.id, t.sample) for t in first] == [(item.id, s) for item in items for s in range(3)]
    assert len({t.recall for t in first}) > len(items)  # samples of one question differ
    with pytest.raises(ValueError, match="sampling"):
        run_pipeline(untrained, items, samples=2, progress=False)


def test_no_recall_variant_samples_several_analyses_per_prompt(untrained):
    student = RecordingStudent(untrained)
    traces = run_pipeline(student, toy_items()[:1], variant="no_recall", samples=3, sampling=SAMPLED, progress=False,
                          max_new_tokens={"analyze": 6, "summarize": 4})
    analyze_prompts = [p for p in student.prompts if p.endswith(",")]
    assert len(analyze_prompts) == 3  # one per option, each drawn 3 times
    assert len(traces) == 3 and len({tuple(t.analyses.values()) for t in traces}) > 1


def test_stage_primitives(trained):
    items = toy_items()
    recalls = generate_recalls(trained, items, max_new_tokens=24)
    assert recalls == {q.id: [q.recall] for q in TOY_QUESTIONS}
    runs = generate_analyses(trained, [(item, recalls[item.id][0]) for item in items], max_new_tokens=24)
    assert [r[0] for r in runs] == [q.analysis_map for q in TOY_QUESTIONS]
    sampled = generate_analyses(trained, [(items[0], recalls[items[0].id][0])], n=4, sampling=Sampling(do_sample=True), seed=1)
    assert len(sampled) == 1 and len(sampled[0]) == 4 and all(set(run) == set("ABC") for run in sampled[0])
    summaries = generate_summaries(trained, [(item, recalls[item.id][0], r[0]) for item, r in zip(items, runs)])
    assert summaries == [(protocol.summarize_target(q.answer), q.answer) for q in TOY_QUESTIONS]


def _trace(qid, sample, answer, gold="A"):
    return Trace(qid, sample, None, {}, "", answer, gold, answer == gold, 0.0)


def test_vote_majority_ties_and_no_answer():
    traces = [_trace("a", 0, "B"), _trace("a", 1, "A"), _trace("a", 2, "A"),  # majority A
              _trace("b", 2, "C"), _trace("b", 0, "D"), _trace("b", 1, None),  # tie: lowest sample's answer
              _trace("c", 0, None), _trace("c", 1, None),  # nothing parsable
              _trace("d", 0, "A"), _trace("d", 1, None), _trace("d", 2, None)]  # no answer wins, as in the reference
    assert vote(traces) == {"a": "A", "b": "D", "c": None, "d": None}
    scores = accuracy(traces)
    assert scores["questions"] == 4 and scores["accuracy"] == pytest.approx(1 / 4)
    assert scores["sample_accuracy"] == pytest.approx(3 / 11)


def test_trace_round_trips_through_json():
    trace = Trace("q", 1, "r.", {"A": "x."}, "So the answer is option A.", "A", "A", True, 0.5, {"recall": 0.5})
    assert Trace.from_dict(json.loads(json.dumps(trace.to_dict()))) == trace


def test_items_and_oracles_from_a_data_set_folder(data):
    items = items_from_dataset(data, "toy-full", "test")
    assert items == toy_items()
    assert items_from_dataset(data, "toy-no_recall", "validation") == toy_items()  # one item per id, not per option row
    recalls, analyses = oracles_from_dataset(data, "toy-full", "test")
    assert recalls == {q.id: q.recall for q in TOY_QUESTIONS}
    assert analyses == {q.id: q.analysis_map for q in TOY_QUESTIONS}


def test_data_set_errors_name_the_choices(data, tmp_path):
    with pytest.raises(TinyThinkerError, match="no config 'toy-other'; choose one of toy-cot, toy-dsbs, toy-full"):
        items_from_dataset(data, "toy-other", "test")
    with pytest.raises(TinyThinkerError, match="no split 'train'; choose one of recall"):
        items_from_dataset(data, "toy-full", "train")
    with pytest.raises(TinyThinkerError, match="no such data set folder"):
        items_from_dataset(tmp_path / "nothing", "toy-full", "test")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TinyThinkerError, match="not a data set folder"):
        items_from_dataset(tmp_path / "plain", "toy-full", "test")


def test_unknown_variant_is_a_user_error(untrained):
    with pytest.raises(TinyThinkerError, match="unknown variant"):
        run_pipeline(untrained, [Item("x", "q\n(A) a (B) b", "AB", "A")], variant="everything", progress=False)


def test_no_items_no_traces(untrained):
    assert run_pipeline(untrained, [], progress=False) == []
    assert generate_recalls(untrained, []) == {}
