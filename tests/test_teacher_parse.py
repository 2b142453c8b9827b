"""Teacher responses in: the reference's [request, response] pairs and Batch API output lines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tinythinker.errors import TinyThinkerError
from tinythinker.data.sources import Question, QuestionSet
from tinythinker.data.teacher.requests import build_request, exemplars, instruction, match_key, question_match_key, render_exemplar, user_message
from tinythinker.data.teacher.responses import read_responses

QUESTIONS = [
    Question("q1", "Where do fish live?", ("water", "trees, mostly", "deserts", "caves", "clouds"), "A"),
    Question("q2", "What cuts paper?", ("spoon", "pillow", "scissors", "soap", "milk"), "C", aliases=("q2-copy",)),
]
QS = QuestionSet("csqa", {"train": QUESTIONS, "validation": [], "test": []}, 42, "mem", "rev")


def completion(*texts, finish=None, model="gpt-4o-2024-05-13"):
    finish = finish or ["stop"] * len(texts)
    return {"id": "x", "object": "chat.completion", "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        for i, (t, f) in enumerate(zip(texts, finish))]}


def pair(question, response, *, with_id=False, max_tokens=256):
    line = build_request(question, dataset="csqa", model="gpt-4o-2024-05-13", max_tokens=max_tokens)
    return [line if with_id else line["body"], response]


def write(path: Path, lines, gz=False) -> Path:
    data = "".join(json.dumps(line) + "\n" for line in lines)
    if gz:
        path.write_bytes(gzip.compress(data.encode()))
    else:
        path.write_text(data)
    return path


def test_reference_pairs_are_matched_by_text(tmp_path):
    path = write(tmp_path / "r.jsonl", [pair(QUESTIONS[1], completion("t1", "t2", finish=["stop", "length"]))])
    responses = read_responses([path], QS)
    entry = responses.get("q2")
    assert [(s.text, s.finish_reason, s.max_tokens, s.round) for s in entry.samples] == [
        ("t1", "stop", 256, 1), ("t2", "length", 256, 1)]
    assert entry.samples[1].source == f"{path}:1#1"
    assert responses.matched_by_text == 1
    assert responses.teacher_model() == "gpt-4o-2024-05-13"
    assert responses.temperatures == {0.8: 1} and responses.n == {8: 1}


@pytest.mark.parametrize("dataset,k", [("csqa", 8), ("obqa", 7), ("strategyqa", 8)])
def test_every_request_of_a_data_set_carries_one_system_message(dataset, k):
    """REFERENCE 3: the reference drew its k exemplars once per data set; every request (and round) shares them."""
    questions = [Question(f"q{i}", f"Question {i}?", ("yes", "no"), "A") for i in range(20)]
    systems = {build_request(q, dataset=dataset, model="m", seed=7, n=n, max_tokens=t)["body"]["messages"][0]["content"]
               for q in questions for n, t in ((None, 256), (3, 512))}
    assert len(systems) == 1
    system = systems.pop()
    rendered = [render_exemplar(e) for e in exemplars(dataset)]
    assert system.startswith(instruction()) and sum(r.strip() in system for r in rendered) == k
    # the seed picks the draw (recorded in the card), still one for the whole data set
    other = {build_request(q, dataset=dataset, model="m", seed=8)["body"]["messages"][0]["content"] for q in questions}
    assert len(other) == 1 and other != {system}


def test_text_match_ignores_whitespace_of_unstripped_raw_text():
    # the reference built its requests from unstripped raw stems and options
    raw = "Where do fish  live? \nOptions: A. water , B. trees, mostly, C. deserts, D. caves, E. clouds\nKey Information:\nExplanations: A is correct. Because"
    assert match_key(raw) == question_match_key(QUESTIONS[0]) == match_key(user_message(QUESTIONS[0]))
    assert question_match_key(QUESTIONS[0]) != question_match_key(QUESTIONS[1])


def test_custom_id_and_aliases(tmp_path):
    request = build_request(QUESTIONS[1], dataset="csqa", model="m")
    request["custom_id"] = "q2-copy"  # a merged duplicate's id reaches the kept question
    path = write(tmp_path / "r.jsonl", [[request, completion("a")]])
    assert read_responses([path], QS).get("q2").samples[0].text == "a"


def test_failed_request_is_a_list(tmp_path):
    path = write(tmp_path / "r.jsonl", [pair(QUESTIONS[0], ["RateLimitError: slow down"])])
    entry = read_responses([path], QS).get("q1")
    assert (entry.requests, entry.failed_requests, entry.samples) == (1, 1, [])


def test_batch_api_output_lines(tmp_path):
    lines = [
        {"id": "b1", "custom_id": "q1", "response": {"status_code": 200, "request_id": "r", "body": completion("x", "y")}, "error": None},
        {"id": "b2", "custom_id": "q2", "response": {"status_code": 500, "body": {"error": {"message": "boom"}}}, "error": None},
        {"id": "b3", "custom_id": "q2", "response": None, "error": {"code": "batch_expired", "message": "expired"}},
    ]
    responses = read_responses([write(tmp_path / "out.jsonl", lines)], QS)
    assert [s.text for s in responses.get("q1").samples] == ["x", "y"]
    assert responses.get("q1").samples[0].max_tokens is None  # Batch output lines do not say
    assert (responses.get("q2").requests, responses.get("q2").failed_requests) == (2, 2)


def test_batch_lines_may_name_their_round_and_budget(tmp_path):
    lines = [  # what `tinythinker teach` writes: all rounds in one file
        {"custom_id": "q1", "response": {"status_code": 200, "body": completion("a", finish=["length"])}, "round": 1, "max_tokens": 256},
        {"custom_id": "q1", "response": {"status_code": 200, "body": completion("b")}, "round": 2, "max_tokens": 512},
    ]
    responses = read_responses([write(tmp_path / "out.jsonl", lines)], QS)
    assert [(s.text, s.round, s.max_tokens) for s in responses.get("q1").samples] == [("a", 1, 256), ("b", 2, 512)]
    assert responses.rounds == 2 and responses.get("q1").max_tokens == [256, 512]


def test_several_files_are_rounds_and_gzip_is_read(tmp_path):
    first = write(tmp_path / "r1.jsonl", [pair(QUESTIONS[0], completion("a"))])
    second = write(tmp_path / "r2.jsonl.gz", [pair(QUESTIONS[0], completion("b"), max_tokens=512)], gz=True)
    responses = read_responses([first, second], QS)
    assert [(s.text, s.round, s.max_tokens) for s in responses.get("q1").samples] == [("a", 1, 256), ("b", 2, 512)]
    assert responses.rounds == 2 and responses.get("q1").max_tokens == [256, 512]


def test_content_parts_and_null_content(tmp_path):
    response = completion("x")
    response["choices"][0]["message"]["content"] = [{"type": "text", "text": "Key "}, {"type": "text", "text": "Information"}]
    refusal = completion("y")
    refusal["choices"][0]["message"]["content"] = None
    path = write(tmp_path / "r.jsonl", [pair(QUESTIONS[0], response), pair(QUESTIONS[0], refusal)])
    assert [s.text for s in read_responses([path], QS).get("q1").samples] == ["Key Information", ""]


# --- bad input: one line naming file:line --------------------------------------------------------

def _error(tmp_path, content: str) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TinyThinkerError) as info:
        read_responses([path], QS)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_not_jsonl(tmp_path):
    good = json.dumps(pair(QUESTIONS[0], completion("a")))
    message = _error(tmp_path, good + "\n[{\n")
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}:2: not valid JSON") and "JSONL" in message


def test_a_whole_json_array_is_not_jsonl(tmp_path):
    lines = [pair(QUESTIONS[0], completion("a")), pair(QUESTIONS[1], completion("b"))]
    assert ":1: not valid JSON" in _error(tmp_path, json.dumps(lines, indent=2))


@pytest.mark.parametrize("line,what", [
    ('{"choices": []}', "keys ['choices']"),
    ('"text"', "a JSON str"),
    ('[{"model": "m", "messages": []}, {"answer": 1}]', "without 'choices'"),
    ('[{"model": "m"}, {"choices": []}]', "without a user message"),
    ('[{"model": "m", "messages": [{"role": "user", "content": "x"}]}, {"choices": "no"}]', "without a 'choices' list"),
])
def test_unknown_shapes(tmp_path, line, what):
    message = _error(tmp_path, line + "\n")
    assert ":1: unknown response shape" in message and what in message


def test_responses_matching_no_question(tmp_path):
    stranger = Question("zz", "Who am I?", ("a", "b", "c", "d", "e"), "A")
    message = _error(tmp_path, json.dumps(pair(stranger, completion("a"))) + "\n")
    assert ":1: response matches no question of csqa (question text 'Who am I? Options: A. a" in message
    batch = {"custom_id": "nope", "response": {"status_code": 200, "body": completion("a")}}
    assert "custom_id 'nope'" in _error(tmp_path, json.dumps(batch) + "\n")


def test_missing_responses_file(tmp_path):
    with pytest.raises(TinyThinkerError, match="responses file not found"):
        read_responses([tmp_path / "absent.jsonl"], QS)
    with pytest.raises(TinyThinkerError, match="no responses file given"):
        read_responses([], QS)
