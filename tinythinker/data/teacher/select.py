"""Choosing what to keep for each question (REFERENCE 4-5 with the section-10 rules), seeded.

The API that ``tinythinker build`` and ``tinythinker teach --rounds`` call::

    from tinythinker.data.sources import load_questions
    from tinythinker.data.teacher.responses import read_responses
    from tinythinker.data.teacher.select import select_rationales, next_round_requests, write_request_file

    questions = load_questions("csqa", raw, seed=42)
    responses = read_responses(["round1.jsonl", "round2.jsonl"], questions)
    selection = select_rationales(questions, responses, seed=42)
    selection.rationales   # {question id: [Rationale, ...]} in selection order, questions with any
    selection.labels       # {question id: label the records use} (majority-corrected on train)
    selection.counts       # {split: SelectionCounts}: every rejected sample and every question
                           #   without rationales, by reason
    selection.needs_round  # [RoundNeed(question_id, missing, max_tokens, reason)], train questions
    lines = next_round_requests(selection, questions)   # Batch-API request lines for the next round
    write_request_file("round3.requests.jsonl", lines)

Per question: every sample is parsed (``protocol.parse_teacher_sample``; cut-off samples are
rejected); a majority vote over the accepted answers (a tie goes to the answer seen first) replaces
the data set's label of a training question when they differ; only samples agreeing with the label
are kept; of these, the *distinct* ones (Levenshtein distance of the general knowledge > 10 to every
other kept sample) are taken in order up to ``num_augment`` and the rest is filled at random from
the remaining kept samples, with one generator per (seed, question). A training question with fewer
than ``num_augment`` kept samples needs another round asking for exactly the missing number, with
``max_tokens`` doubled when one of its samples was cut off at the largest budget it was asked with.

Validation and test questions go through the same procedure so that their rationale (the first
selected) can feed oracle evaluation: their kept samples are those agreeing with the teacher's
majority, their label is never changed and they never need a round.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from rapidfuzz.distance import Levenshtein

from tinythinker.artifacts import atomic_write_text
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import ParsedSample, REJECT_TRUNCATED, Rejected, majority, parse_teacher_sample
from tinythinker.data.sources import SPLITS, QuestionSet, get_spec
from tinythinker.data.teacher.requests import MAX_TOKENS, build_request
from tinythinker.data.teacher.responses import TeacherResponses

DISTINCT_DISTANCE = 10  # REFERENCE 5.2: distinct means a distance > 10 to every other kept sample

# Sample outcomes counted besides the parsing rejections of protocol.REJECT_REASONS.
REJECT_DISAGREES = "disagrees_with_label"
# Why a question has no rationale.
NO_RESPONSE = "no_response"
FAILED_REQUEST = "failed_request"
NO_ACCEPTED_SAMPLE = "no_accepted_sample"
# Why a training question needs another round (one of the above, or this).
TOO_FEW_SAMPLES = "too_few_samples"


@dataclass(frozen=True)
class Rationale:
    """One selected teacher sample of a question."""

    question_id: str
    general: str  # general knowledge (the recall target)
    explanations: tuple[tuple[str, str], ...]  # (letter, specific knowledge) in the teacher's order
    label: str  # the answer the sample argues for (= the question's label after the vote)
    source: str  # "file:line#choice"

    def analyses(self) -> dict[str, str]:
        """Specific knowledge per option in label order."""
        return dict(sorted(self.explanations))

    def ordered(self, reference_order: bool = False) -> list[tuple[str, str]]:
        """(letter, text) pairs in label order, or in the teacher's order (the reference's)."""
        return list(self.explanations) if reference_order else sorted(self.explanations)


@dataclass(frozen=True)
class RoundNeed:
    question_id: str
    missing: int  # samples to ask for
    max_tokens: int
    reason: str  # no_response / failed_request / no_accepted_sample / too_few_samples


@dataclass
class SelectionCounts:
    """What happened to the questions and samples of one split."""

    questions: int = 0
    with_rationales: int = 0
    requests: int = 0
    failed_requests: int = 0
    samples: int = 0
    accepted: int = 0  # parsed samples
    kept: int = 0  # accepted and agreeing with the label
    selected: int = 0  # rationales that make records
    surplus: int = 0  # kept beyond num_augment
    label_corrections: int = 0
    needs_round: int = 0
    missing_samples: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # samples, by reason
    without_rationales: dict[str, int] = field(default_factory=dict)  # questions, by reason

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rejected"] = dict(sorted(self.rejected.items()))
        out["without_rationales"] = dict(sorted(self.without_rationales.items()))
        return out


@dataclass
class Selection:
    dataset: str
    seed: int
    num_augment: int
    rationales: dict[str, list[Rationale]]
    labels: dict[str, str]
    corrections: dict[str, tuple[str, str]]  # train question id -> (data set label, majority)
    counts: dict[str, SelectionCounts]
    needs_round: list[RoundNeed]
    next_round: int  # round index of the next teacher round
    teacher_model: str | None

    def first(self, question_id: str) -> Rationale | None:
        found = self.rationales.get(question_id)
        return found[0] if found else None


def _add(counter: dict[str, int], key: str, n: int = 1) -> None:
    if n:
        counter[key] = counter.get(key, 0) + n


def choose_diverse(generals: Sequence[str], num_augment: int, rng: random.Random) -> list[int]:
    """Indices chosen by REFERENCE 5.2: distinct ones in order up to ``num_augment``, then a seeded
    random fill from the remaining ones."""
    n = len(generals)
    close = [False] * n  # within DISTINCT_DISTANCE of some other sample
    for i in range(n):
        for j in range(i + 1, n):
            if close[i] and close[j]:
                continue  # the pair cannot change anything
            if Levenshtein.distance(generals[i], generals[j], score_cutoff=DISTINCT_DISTANCE) <= DISTINCT_DISTANCE:
                close[i] = close[j] = True
    chosen = [i for i in range(n) if not close[i]][:num_augment]
    if len(chosen) < num_augment:
        taken = set(chosen)
        remaining = [i for i in range(n) if i not in taken]
        chosen += rng.sample(remaining, min(num_augment - len(chosen), len(remaining)))
    return chosen


def selection_rng(seed: int, question_id: str) -> random.Random:
    """One generator per (seed, question): selection does not depend on order or on other questions."""
    return random.Random(f"{seed}:select:{question_id}")


def _next_budget(budgets: list[int], truncated: list[int | None]) -> int:
    """The next round's max_tokens: the largest budget asked so far, doubled when a sample was cut
    off at it (a cut-off with an unknown budget counts as cut off at the largest)."""
    base = max(budgets, default=MAX_TOKENS)
    return base * 2 if any(t is None or t >= base for t in truncated) else base


def _parse_entry(entry, n_options: int, tally: SelectionCounts) -> tuple[list[tuple[ParsedSample, str]], list[int | None]]:
    """The accepted samples of one question's responses (with their sources), and the token budgets
    of its truncated ones; counts requests, samples and rejections into ``tally``."""
    parsed: list[tuple[ParsedSample, str]] = []
    truncated: list[int | None] = []
    if entry is None:
        return parsed, truncated
    tally.requests += entry.requests
    tally.failed_requests += entry.failed_requests
    tally.samples += len(entry.samples)
    for sample in entry.samples:
        result = parse_teacher_sample(sample.text, n_options, sample.finish_reason)
        if isinstance(result, Rejected):
            _add(tally.rejected, result.reason)
            if result.reason == REJECT_TRUNCATED:
                truncated.append(sample.max_tokens)
        else:
            parsed.append((result, sample.source))
    return parsed, truncated


def select_rationales(
    questions: QuestionSet,
    responses: TeacherResponses,
    *,
    seed: int = 42,
    num_augment: int | None = None,
    on_question: Callable[[], None] | None = None,
) -> Selection:
    """Parse, vote, filter and choose the rationales of every question of ``questions``."""
    spec = get_spec(questions.dataset)
    num_augment = spec.num_augment if num_augment is None else num_augment
    n_options = spec.n_options
    rationales: dict[str, list[Rationale]] = {}
    labels: dict[str, str] = {}
    corrections: dict[str, tuple[str, str]] = {}
    counts = {split: SelectionCounts() for split in SPLITS}
    needs: list[RoundNeed] = []

    for split in SPLITS:
        tally = counts[split]
        train = split == "train"
        for q in questions.splits.get(split, []):
            tally.questions += 1
            entry = responses.get(q.id)
            parsed, truncated = _parse_entry(entry, n_options, tally)
            budgets = entry.max_tokens if entry is not None else []
            if on_question is not None:
                on_question()

            if not parsed:
                reason = NO_RESPONSE if entry is None else FAILED_REQUEST if not entry.samples else NO_ACCEPTED_SAMPLE
                _add(tally.without_rationales, reason)
                if train:
                    needs.append(RoundNeed(q.id, num_augment, _next_budget(budgets, truncated), reason))
                continue

            tally.accepted += len(parsed)
            voted = majority([sample.answer for sample, _ in parsed])
            label = voted if train else q.answer  # evaluation labels are never changed
            if label != q.answer:  # the reference's label correction
                corrections[q.id] = (q.answer, voted)
                tally.label_corrections += 1
            # Every question keeps the samples agreeing with the vote: on train that is the label,
            # on validation/test the teacher's consensus rationale (for oracle evaluation).
            kept = [(sample, source) for sample, source in parsed if sample.answer == voted]
            _add(tally.rejected, REJECT_DISAGREES, len(parsed) - len(kept))
            tally.kept += len(kept)

            chosen = choose_diverse([sample.general for sample, _ in kept], num_augment, selection_rng(seed, q.id))
            tally.selected += len(chosen)
            tally.surplus += len(kept) - len(chosen)
            tally.with_rationales += 1
            labels[q.id] = label
            rationales[q.id] = [
                Rationale(q.id, kept[i][0].general, kept[i][0].explanations, kept[i][0].answer, kept[i][1]) for i in chosen
            ]
            missing = num_augment - len(kept)
            if train and missing > 0:
                needs.append(RoundNeed(q.id, missing, _next_budget(budgets, truncated), TOO_FEW_SAMPLES))

    train_tally = counts["train"]
    train_tally.needs_round = len(needs)
    train_tally.missing_samples = sum(need.missing for need in needs)
    return Selection(
        dataset=questions.dataset,
        seed=seed,
        num_augment=num_augment,
        rationales=rationales,
        labels=labels,
        corrections=corrections,
        counts=counts,
        needs_round=needs,
        next_round=responses.rounds + 1,
        teacher_model=responses.teacher_model(),
    )


def next_round_requests(
    selection: Selection,
    questions: QuestionSet,
    *,
    model: str | None = None,
    seed: int | None = None,
) -> list[dict]:
    """Batch-API request lines (``teacher/requests.build_request``) for every question that needs
    another round: ``n`` = the missing count, ``max_tokens`` as :func:`select_rationales` decided.

    ``model`` defaults to the teacher model of the responses, ``seed`` to the selection's seed (the
    one the requests were built with)."""
    model = model or selection.teacher_model
    if selection.needs_round and not model:
        raise TinyThinkerError("the responses name no teacher model; pass the model for the next round's requests")
    by_id = questions.by_id()
    return [
        build_request(
            by_id[need.question_id],
            dataset=selection.dataset,
            model=model,
            seed=selection.seed if seed is None else seed,
            n=need.missing,
            max_tokens=need.max_tokens,
        )
        for need in selection.needs_round
    ]


def write_request_file(path: str | Path, lines: Sequence[dict]) -> Path:
    """Write request lines as JSONL, atomically (an empty file when no question needs a round)."""
    path = Path(path)
    try:
        atomic_write_text(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    except OSError as error:
        raise TinyThinkerError(f"{path}: cannot write the request file ({error.strerror or error}); choose another path") from None
    return path
