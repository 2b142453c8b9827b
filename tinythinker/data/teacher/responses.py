"""Teacher responses in: the files a teacher run leaves behind, matched back to their questions.

Two line shapes are read (a file may mix them; ``.gz`` files are read transparently):

(a) the reference's JSONL of ``[request, response]`` pairs (its ``openai_request.py``): ``request``
    is the chat-completions body that was sent (or a Batch-API input line ``{custom_id, body}``),
    ``response`` an OpenAI chat-completion object, or a list of error strings when the request failed.
    A pair is matched to its question by ``custom_id`` when the request has one that names a
    question; otherwise by its text: the user message's part before ``Key Information:`` (the stem
    and the ``Options: A. x, B. y`` line), whitespace removed, must equal that part of the user
    message :func:`tinythinker.data.teacher.requests.user_message` writes for exactly one question.
(b) OpenAI Batch API output lines ``{custom_id, response: {status_code, body}, error}`` whose
    ``custom_id`` is the question id (what ``teacher/requests.build_request`` writes). The optional
    fields ``round`` and ``max_tokens`` that ``tinythinker teach`` adds to its lines are used.

Several files may be given, one per teacher round: file *i* (1-based) is round *i* unless a line
names its round. Samples keep their ``finish_reason`` and the ``max_tokens`` they were asked with
(known from the request of shape (a), or a line's ``max_tokens``), so that selection can double the
budget where samples were cut off.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from tinythinker.errors import TinyThinkerError, where
from tinythinker.data.sources import Question, QuestionSet
from tinythinker.data.teacher.requests import match_key, question_match_key


class TeacherSample(NamedTuple):  # a tuple: a CSQA-sized build holds ~80k of them
    """One completion (one of the ``n`` choices of a request)."""

    text: str
    finish_reason: str | None
    max_tokens: int | None  # the budget it was asked with; None when the file does not say
    round: int
    source: str  # "file:line#choice", for error messages and provenance


@dataclass
class QuestionResponses:
    """Everything the teacher answered for one question, over all files, in file order."""

    question_id: str
    samples: list[TeacherSample] = field(default_factory=list)
    requests: int = 0
    failed_requests: int = 0
    max_tokens: list[int] = field(default_factory=list)  # budgets of its requests that say one


@dataclass
class TeacherResponses:
    by_question: dict[str, QuestionResponses]
    files: list[str]
    rounds: int
    lines: int = 0
    requests: int = 0
    failed_requests: int = 0
    samples: int = 0
    models: Counter = field(default_factory=Counter)  # requested model (else the responding one)
    temperatures: Counter = field(default_factory=Counter)
    max_tokens: Counter = field(default_factory=Counter)
    n: Counter = field(default_factory=Counter)
    matched_by_text: int = 0
    split_seeds: Counter = field(default_factory=Counter)  # lines by the --seed their questions were asked from

    def get(self, question_id: str) -> QuestionResponses | None:
        return self.by_question.get(question_id)

    def teacher_model(self) -> str | None:
        return self.models.most_common(1)[0][0] if self.models else None


# --- reading lines -------------------------------------------------------------------------------

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        opener = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")
        with opener as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield number, line
    except FileNotFoundError:
        raise TinyThinkerError(f"{path}: responses file not found; pass --responses the JSONL file(s) the teacher run wrote") from None
    except IsADirectoryError:
        raise TinyThinkerError(f"{path}: is a folder; pass --responses the JSONL file(s) the teacher run wrote") from None
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as error:
        raise TinyThinkerError(
            f"{path}: cannot read responses ({error.__class__.__name__}); it must be UTF-8 JSONL (optionally gzipped)"
        ) from None


def _shape_error(origin: str, what: str) -> TinyThinkerError:
    return TinyThinkerError(
        f"{origin}: unknown response shape ({what}); expected the reference's [request, response] pairs "
        "or OpenAI Batch API output lines {custom_id, response: {status_code, body}}"
    )


def _text_of(content) -> str | None:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str) or content is None:
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return None


def _user_text(body: dict) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return None


def _choices(completion: dict, origin: str) -> list[tuple[str, str | None]]:
    """(text, finish_reason) of each choice of a chat completion, in choice-index order."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise _shape_error(origin, "a completion without a 'choices' list")
    ordered = sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)
    out = []
    for choice in ordered:
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = _text_of(message.get("content"))
        if text is None and isinstance(choice.get("text"), str):  # completions-API style
            text = choice["text"]
        out.append((text or "", choice.get("finish_reason")))
    return out


class _Matcher:
    """Question lookup by id (aliases included) and, built on first use, by request text."""

    def __init__(self, questions: QuestionSet):
        self.dataset = questions.dataset
        self.questions = questions
        self.by_id = questions.by_id()
        self._by_text: dict[str, Question | None] | None = None

    def by_text(self, user_text: str) -> Question | None:
        if self._by_text is None:
            index: dict[str, Question | None] = {}
            for q in self.questions.all():
                key = question_match_key(q)
                index[key] = q if key not in index else None  # None: two questions read the same
            self._by_text = index
        return self._by_text.get(match_key(user_text))  # None: no question, or several

    def ambiguous(self, user_text: str) -> bool:
        key = match_key(user_text)
        return self._by_text is not None and key in self._by_text and self._by_text[key] is None


def read_responses(
    paths: Iterable[str | Path],
    questions: QuestionSet,
    *,
    on_file: Callable[[Path], None] | None = None,
) -> TeacherResponses:
    """Read teacher response files (one per round, in round order) for ``questions``.

    Raises :class:`TinyThinkerError` naming file and line for a line that is not JSON, has an
    unknown shape, or matches no question."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise TinyThinkerError("no responses file given; pass --responses FILE (one per teacher round)")
    matcher = _Matcher(questions)
    result = TeacherResponses(by_question={}, files=[str(p) for p in paths], rounds=len(paths))
    for round_index, path in enumerate(paths, 1):
        for number, line in _lines(path):
            origin = where(path, number)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise TinyThinkerError(
                    f"{origin}: not valid JSON ({error.msg}); a responses file is JSONL: one JSON value per line"
                ) from None
            result.lines += 1
            if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], dict):
                _read_pair(obj[0], obj[1], origin, round_index, matcher, result)
            elif isinstance(obj, dict) and "custom_id" in obj and ("response" in obj or "error" in obj):
                _read_batch_line(obj, origin, round_index, matcher, result)
            else:
                what = f"a JSON {type(obj).__name__}" + (f" with keys {sorted(obj)[:5]}" if isinstance(obj, dict) else "")
                raise _shape_error(origin, what)
        if on_file is not None:
            on_file(path)
    return result


def _record(
    result: TeacherResponses,
    question: Question,
    round_index: int,
    origin: str,
    choices: list[tuple[str, str | None]] | None,
    max_tokens: int | None,
) -> None:
    entry = result.by_question.get(question.id)
    if entry is None:
        entry = result.by_question[question.id] = QuestionResponses(question.id)
    entry.requests += 1
    result.requests += 1
    if max_tokens is not None:
        entry.max_tokens.append(max_tokens)
    if choices is None:
        entry.failed_requests += 1
        result.failed_requests += 1
        return
    for index, (text, finish_reason) in enumerate(choices):
        entry.samples.append(TeacherSample(text, finish_reason, max_tokens, round_index, f"{origin}#{index}"))
    result.samples += len(choices)


def _no_question(origin: str, what: str, dataset: str) -> TinyThinkerError:
    return TinyThinkerError(
        f"{origin}: response matches no question of {dataset} ({what}); check --raw, the data set name "
        "and that these responses were made for these questions"
    )


def _read_pair(request: dict, response, origin: str, round_index: int, matcher: _Matcher, result: TeacherResponses) -> None:
    body = request.get("body") if isinstance(request.get("body"), dict) else request
    if isinstance(response, list) or (isinstance(response, dict) and "error" in response and "choices" not in response):
        choices = None  # the reference writes a failed request's error messages as a list
    elif isinstance(response, dict) and "choices" in response:
        choices = _choices(response, origin)
    else:
        raise _shape_error(origin, f"a response that is a {type(response).__name__} without 'choices'")
    question = None
    custom_id = request.get("custom_id")
    if isinstance(custom_id, str):
        question = matcher.by_id.get(custom_id)
    if question is None:
        user_text = _user_text(body)
        if user_text is None:
            if isinstance(custom_id, str):
                raise _no_question(origin, f"custom_id {custom_id!r}", matcher.dataset)
            raise _shape_error(origin, "a request without a user message")
        question = matcher.by_text(user_text)
        if question is None:
            stem = " ".join(user_text.split())[:70]
            if matcher.ambiguous(user_text):
                raise TinyThinkerError(f"{origin}: response text {stem!r} matches several questions; give requests a custom_id")
            raise _no_question(origin, f"question text {stem!r}", matcher.dataset)
        result.matched_by_text += 1

    model = body.get("model")
    if isinstance(response, dict) and isinstance(response.get("model"), str) and not isinstance(model, str):
        model = response["model"]
    if isinstance(model, str):
        result.models[model] += 1
    for counter, key in ((result.temperatures, "temperature"), (result.max_tokens, "max_tokens"), (result.n, "n")):
        if isinstance(body.get(key), (int, float)) and not isinstance(body.get(key), bool):
            counter[body[key]] += 1
    max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else None
    _record(result, question, round_index, origin, choices, max_tokens)


def _read_batch_line(obj: dict, origin: str, round_index: int, matcher: _Matcher, result: TeacherResponses) -> None:
    custom_id = obj.get("custom_id")
    question = matcher.by_id.get(custom_id) if isinstance(custom_id, str) else None
    if question is None:
        raise _no_question(origin, f"custom_id {custom_id!r}", matcher.dataset)
    response = obj.get("response")
    if response is not None and not isinstance(response, dict):
        raise _shape_error(origin, "a Batch API line whose 'response' is not an object")
    body = response.get("body") if isinstance(response, dict) else None
    ok = isinstance(response, dict) and response.get("status_code", 200) == 200 and isinstance(body, dict) and "choices" in body
    if ok and isinstance(body.get("model"), str):
        result.models[body["model"]] += 1
    line_round = obj.get("round")
    if isinstance(line_round, int) and not isinstance(line_round, bool) and line_round >= 1:
        round_index = line_round  # one output file may hold several rounds (tinythinker teach)
        result.rounds = max(result.rounds, line_round)
    max_tokens = obj.get("max_tokens") if isinstance(obj.get("max_tokens"), int) else None
    if max_tokens is not None:
        result.max_tokens[max_tokens] += 1
    split_seed = obj.get("split_seed")
    if isinstance(split_seed, int) and not isinstance(split_seed, bool):
        result.split_seeds[split_seed] += 1
    _record(result, question, round_index, origin, _choices(body, origin) if ok else None, max_tokens)
