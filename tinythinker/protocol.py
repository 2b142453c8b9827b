"""The coarse-to-fine text protocol: the ONLY module that writes or reads TinyThinker's stage text.

REFERENCE.md sections 2 (question rendering), 4 (teacher-sample parsing), 6 (stage records) and
8 (three-stage inference prompts and the answer regex). Every other module calls these functions;
nobody else formats "Recall:" / "Analyze:" / "Summarize:" strings or parses teacher text.

Stages are written so that every ablation variant is the same function with a part left out:
``summarize_prompt(q)`` is the summarize-only input, ``summarize_prompt(q, recall=gk)`` the
without-analyze input, ``summarize_prompt(q, analyses=...)`` the without-recall input. The
baselines (``cot``, ``dsbs``) reuse the same lines: their targets are the stage texts of one rationale
joined in order (:func:`cot_target`, :func:`rationale_text`), their answers read by the same regex.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence

LETTERS = "ABCDEFGHIJ"

RECALL, ANALYZE, SUMMARIZE = "recall", "analyze", "summarize"
# The baselines' one-pass stages: standard CoT distillation (Magister et al. 2023) writes the whole
# rationale and the answer in one pass; Distilling step-by-step (Hsieh et al. 2023) learns a label task
# and a rationale task, told apart by a task prefix, and answers with the label task alone.
COT, LABEL, RATIONALE = "cot", "label", "rationale"

# Which stages each data set variant (ablation or baseline) runs at inference, in pipeline order (REFERENCE 6).
VARIANT_STAGES: dict[str, tuple[str, ...]] = {
    "full": (RECALL, ANALYZE, SUMMARIZE),
    "no_recall": (ANALYZE, SUMMARIZE),
    "no_analyze": (RECALL, SUMMARIZE),
    "summarize_only": (SUMMARIZE,),
    "cot": (COT,),
    "dsbs": (LABEL,),
}
VARIANTS = tuple(VARIANT_STAGES)
BASELINES = ("cot", "dsbs")  # the variants that are other methods, not TinyThinker ablations
# Which stages each variant trains on (its training splits): what it runs, except that DSbS also
# learns the rationale task it never runs.
TRAINED_STAGES: dict[str, tuple[str, ...]] = {**VARIANT_STAGES, "dsbs": (LABEL, RATIONALE)}
# The stage texts a one-pass stage's target holds, in order (the engine sums their token caps).
ONE_PASS_TEXTS: dict[str, tuple[str, ...]] = {COT: (RECALL, ANALYZE, SUMMARIZE), LABEL: (SUMMARIZE,), RATIONALE: (RECALL, ANALYZE)}
# Distilling step-by-step's task prefixes (its paper: "[label] " / "[rationale] " before the input); CoT has none.
TASK_PREFIXES = {COT: "", LABEL: "[label] ", RATIONALE: "[rationale] "}
ONE_PASS_CUE = "Answer:"  # ends every one-pass input, as a stage cue ends every stage input

REFERENCE_MAX_LENGTH = 200  # the reference's token cap (SFT targets, DPO prompts and responses)


def config_name(dataset: str, variant: str) -> str:
    """The data set config of a variant: ``csqa``, ``no_recall`` -> ``csqa-no_recall``."""
    return f"{dataset}-{variant}"


def config_parts(config: str) -> tuple[str, str | None]:
    """:func:`config_name` undone: ``csqa-no_recall`` -> (``csqa``, ``no_recall``). A name that ends in
    no variant (a preference config ``csqa-dpo-iter1``) gives its part before the first ``-`` and None."""
    for variant in sorted(VARIANTS, key=len, reverse=True):
        if config.endswith("-" + variant):
            return config[: -len(variant) - 1], variant
    return config.partition("-")[0], None

ANSWER_RE = re.compile(r"the answer is option ([A-Z])\.")


def majority(answers: Iterable[Hashable]):
    """The most frequent answer, a tie going to the answer seen first; None when there is none.

    The reference's vote (REFERENCE 5.1 and 8: ``Counter(answers).most_common(1)``): a None answer
    (a run with nothing parsable) votes like any other; callers that let only answers vote drop the
    Nones first."""
    counts = Counter(answers)
    return counts.most_common(1)[0][0] if counts else None  # most_common keeps first-seen order among equal counts


def letters_for(n_options: int) -> str:
    if not 2 <= n_options <= len(LETTERS):
        raise ValueError(f"a question needs 2 to {len(LETTERS)} options, got {n_options}")
    return LETTERS[:n_options]


def ensure_period(text: str) -> str:
    """Strip, then end the text with '.' unless it already ends with '.', '"' or "'" (REFERENCE 4.3, 8);
    an empty text becomes "." as in the reference."""
    text = text.strip()
    if text and text[-1] in ".\"'":
        return text
    return text + "."


# --- section 2: how a question is shown to the student -------------------------------------------

def render_question(stem: str, options: Sequence[str]) -> str:
    """`{stem}\\n(A) opt (B) opt ...` from structured options (never re-parsed from rendered text)."""
    letters = letters_for(len(options))
    return stem + "\n" + " ".join(f"({x}) {text}" for x, text in zip(letters, options))


# --- sections 6 and 8: stage inputs and targets --------------------------------------------------

def recall_prompt(question: str) -> str:
    return f"{question}\nRecall:"


def analyze_prompt(question: str, letter: str, recall: str | None = None) -> str:
    """Analyze input for one option; ``recall=None`` gives the without-recall variant."""
    head = question if recall is None else f"{question}\nRecall: {recall}"
    return f"{head}\nAnalyze: For option {letter},"


def summarize_prompt(
    question: str,
    recall: str | None = None,
    analyses: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
) -> str:
    """Summarize input. ``analyses`` is (letter, text) pairs in the order to list them; a mapping is
    listed in label order (what inference does, REFERENCE 10)."""
    return "\n".join([question, *_rationale_lines(recall, analyses), "Summarize:"])


def _rationale_lines(recall: str | None, analyses: Sequence[tuple[str, str]] | Mapping[str, str] | None) -> list[str]:
    """The `Recall: ...` and `Analyze: For option A, ...` lines (those given) of a summarize input."""
    lines = []
    if recall is not None:
        lines.append(f"Recall: {recall}")
    if analyses is not None:
        pairs = analyses if isinstance(analyses, (list, tuple)) else sorted(analyses.items()) if isinstance(analyses, Mapping) else list(analyses)
        lines.append("Analyze: " + " ".join(f"For option {x}, {text}" for x, text in pairs))
    return lines


def summarize_target(letter: str) -> str:
    return f"So the answer is option {letter}."


# --- the baselines' one-pass records (one input, the stage texts of one rationale as one target) ---

def one_pass_prompt(question: str, stage: str) -> str:
    """`{prefix}{Q}\nAnswer:`: the input of a one-pass stage (``cot``, ``label``, ``rationale``)."""
    return f"{TASK_PREFIXES[stage]}{question}\n{ONE_PASS_CUE}"


def rationale_text(recall: str, analyses: Sequence[tuple[str, str]] | Mapping[str, str]) -> str:
    """`Recall: {gk}\nAnalyze: For option A, ...`: the recall and analyze lines of the full summarize
    input, word for word (DSbS's rationale target)."""
    return "\n".join(_rationale_lines(recall, analyses))


def cot_target(recall: str, analyses: Sequence[tuple[str, str]] | Mapping[str, str], letter: str) -> str:
    """`Recall: ...\nAnalyze: ...\nSummarize: So the answer is option X.`: the three stage texts of one
    rationale in order, as one sequence (what follows `{Q}\n` in a full summarize input and its target)."""
    return f"{rationale_text(recall, analyses)}\nSummarize: {summarize_target(letter)}"


def one_pass_target(stage: str, recall: str, analyses: Sequence[tuple[str, str]] | Mapping[str, str], letter: str) -> str:
    """The target of a one-pass stage for one rationale."""
    if stage == COT:
        return cot_target(recall, analyses, letter)
    if stage == RATIONALE:
        return rationale_text(recall, analyses)
    return summarize_target(letter)


def first_prompts(question: str, letters: str, variant: str) -> list[tuple[str, str]]:
    """The (option, input) pairs a validation/test record of ``variant`` starts from (REFERENCE 6):
    one `...Recall:` input, one `...Summarize:` input, one one-pass `...Answer:` input (baselines), or
    one `...Analyze: For option X,` per option."""
    first = VARIANT_STAGES[variant][0]
    if first in ONE_PASS_TEXTS:
        return [("", one_pass_prompt(question, first))]
    if first == RECALL:
        return [("", recall_prompt(question))]
    if first == ANALYZE:
        return [(x, analyze_prompt(question, x)) for x in letters]
    return [("", summarize_prompt(question))]


def parse_answer(summary: str) -> str | None:
    """The letter of `the answer is option X.` in a generated summary; None when absent."""
    match = ANSWER_RE.search(summary)
    return match.group(1) if match else None


# --- section 4: parsing one teacher sample -------------------------------------------------------

DELIMITERS = ("Because ", "Because, ", "Although ", "While ")
_PREFIX_RE = re.compile(r"^[A-E] is (correct|incorrect)\.$")
_KEY, _EXPLANATIONS = "Key Information", "Explanations:"
_EXPLANATIONS_WS_RE = re.compile(r"Explanations:\s*")

# Rejection reasons (stable strings: they are counted in cards and reports).
REJECT_TRUNCATED = "truncated"
REJECT_NO_KEY_INFORMATION = "no_key_information"
REJECT_EMPTY_KNOWLEDGE = "empty_knowledge"
REJECT_BAD_PREFIX = "bad_explanation_prefix"
REJECT_NO_CORRECT = "no_correct_option"
REJECT_INCOMPLETE = "incomplete_options"
REJECT_TOO_LONG = "too_long"  # not the reference's: a reply far beyond any token budget is refused unread
# A sample longer than this (characters) is rejected before it is parsed: the reference's budgets (256 tokens,
# doubled per round for cut-off ones) give a few thousand characters at most; a reply of megabytes would otherwise
# reach every parquet file and the students' batches.
MAX_SAMPLE_CHARS = 20_000
REJECT_REASONS = (
    REJECT_TOO_LONG,
    REJECT_TRUNCATED,
    REJECT_NO_KEY_INFORMATION,
    REJECT_EMPTY_KNOWLEDGE,
    REJECT_BAD_PREFIX,
    REJECT_NO_CORRECT,
    REJECT_INCOMPLETE,
)


@dataclass(frozen=True)
class ParsedSample:
    """One accepted teacher sample: general knowledge, per-option specific knowledge, its answer.

    ``explanations`` keeps the teacher's order (the reference's summarize order); use
    :meth:`analyses` for label order."""

    general: str
    explanations: tuple[tuple[str, str], ...]
    answer: str

    def analyses(self) -> dict[str, str]:
        return dict(sorted(self.explanations))


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str = field(default="", compare=False)


def normalise_teacher_text(text: str) -> list[str]:
    """REFERENCE 4.2: the text from `Key Information` up to `Explanations:` becomes the first line
    (anything before it is dropped, as the reference does; its own line breaks become spaces),
    `Explanations:` and the whitespace after it become `Explanations: `, then non-empty stripped lines."""
    start = text.find(_KEY)
    end = text.find(_EXPLANATIONS, start + len(_KEY)) if start != -1 else -1
    if end != -1:
        parts = text[start + len(_KEY) : end].splitlines()
        block = parts[0].strip() if len(parts) == 1 else " ".join(p for p in map(str.strip, parts) if p)
        text = _KEY + block + "\n" + text[end:]
    if _EXPLANATIONS in text:
        text = _EXPLANATIONS_WS_RE.sub("Explanations: ", text)
    return [line for line in map(str.strip, text.split("\n")) if line]


def parse_teacher_sample(text: str, n_options: int, finish_reason: str | None = "stop") -> ParsedSample | Rejected:
    """Parse one teacher completion by REFERENCE 4 (with the section-10 rule: split at the first
    occurrence of the delimiter; completeness checked here, before any selection)."""
    if len(text or "") > MAX_SAMPLE_CHARS:
        return Rejected(REJECT_TOO_LONG, f"{len(text):,} characters")
    if finish_reason == "length":
        return Rejected(REJECT_TRUNCATED)
    letters = letters_for(n_options)
    lines = normalise_teacher_text(text or "")
    if not lines or "Key Information:" not in lines[0]:
        return Rejected(REJECT_NO_KEY_INFORMATION)
    # an empty Key Information is kept, its recall "." (REFERENCE 4.3: the reference appends "." to any text)
    general = ensure_period(lines[0].split("Key Information:", 1)[1])

    explanations: list[tuple[str, str]] = []
    answer = None
    for line in lines[1 : 1 + n_options]:
        if "Explanations:" in line and "correct" in line:
            line = line.split("Explanations: ")[-1]  # the text after the last marker, as the reference
        elif "is correct" not in line and "is incorrect" not in line:
            continue
        for delimiter in DELIMITERS:
            if delimiter in line:
                break
        else:
            continue  # no delimiter: the line is skipped
        prefix, knowledge = line.split(delimiter, 1)
        prefix = prefix.strip()
        verdict = _PREFIX_RE.match(prefix)
        if not verdict:
            return Rejected(REJECT_BAD_PREFIX, prefix[:80])
        knowledge = knowledge.strip()
        if not knowledge:
            return Rejected(REJECT_EMPTY_KNOWLEDGE, f"option {prefix[0]}")
        knowledge = ensure_period(knowledge)
        if verdict.group(1) == "correct":
            answer = prefix[0]  # several "is correct": the last wins (REFERENCE 4.5)
        explanations.append((prefix[0], knowledge))

    if answer is None:
        return Rejected(REJECT_NO_CORRECT)
    seen = [x for x, _ in explanations]
    if sorted(seen) != list(letters):
        return Rejected(REJECT_INCOMPLETE, "".join(seen))
    return ParsedSample(general=general, explanations=tuple(explanations), answer=answer)
