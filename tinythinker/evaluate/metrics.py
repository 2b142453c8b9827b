"""Metrics of three-stage traces: what a trace says about each stage, and which stage caused each error.

Attribution: a question the full pipeline gets wrong is blamed on the first stage whose oracle
repairs it: right with the teacher's recall -> ``recall``; still wrong with it but right with the
teacher's analyses too -> ``analyze``; wrong even then -> ``summarize``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Mapping, Sequence

from tinythinker.protocol import letters_for, majority

STAGES = ("recall", "analyze", "summarize")
OUTCOMES = ("correct", *STAGES, "unattributed")  # attribution of one question

# --- text measures -------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenisation (lowercase, runs of [a-z0-9]; no stemming)."""
    return _TOKEN_RE.findall(text.lower())


def rouge_l(prediction: str, reference: str) -> float:
    """Sentence-level ROUGE-L F1: longest common subsequence of words, F = 2PR / (P + R).

    Equals ``rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction).fmeasure``
    (same tokens, beta = 1) without the extra dependency."""
    from rapidfuzz.distance import LCSseq

    pred, ref = rouge_tokens(prediction or ""), rouge_tokens(reference or "")
    if not pred or not ref:
        return 0.0
    lcs = LCSseq.similarity(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def word_count(text: str | None) -> int:
    return len((text or "").split())


# --- which option do the analyses call correct? -------------------------------------------------
# The teacher's "X is (in)correct." verdicts are cut off the analyses the student learns (REFERENCE
# 4.4 keeps only the text after "Because"), so an analysis states its verdict in words: rejections
# ("not", "contrary to", "ignores", ...) or endorsements ("aligns with", "designed for", ...).
# verdict_score counts them; the option the analyses call correct is the one with the strictly
# highest score. A lexical rule, so it is a diagnostic, not a judgement: docs/evaluation.md gives
# how often it recovers the teacher's own verdicts.
_REJECT_RE = re.compile(
    r"\b(?:not|no|never|cannot|incorrect|wrong|unlikely|unrelated|irrelevant|contrary|contradict\w*|oppos\w*"
    r"|conflict\w*|ignor\w*|impossible|instead|lacks?|lacking|fails?|neither|nor|dismiss\w*|den(?:y|ies|ying)"
    r"|disregard\w*|inappropriate|unnecessary|mismatch\w*|too (?:general|broad|narrow|specific|vague))\b|n't\b",
    re.IGNORECASE,
)
_ENDORSE_RE = re.compile(
    r"\b(?:correct(?:ly)?|consistent|align\w*|match\w*|fits?|suitable|appropriate|ideal|best|directly|exactly"
    r"|precisely|designed|reflect\w*|supports?|confirms?|indeed|plausible)\b",
    re.IGNORECASE,
)


def verdict_score(analysis: str) -> int:
    """Endorsing cues minus rejecting cues in one analysis (higher: the analysis favours its option)."""
    return len(_ENDORSE_RE.findall(analysis or "")) - len(_REJECT_RE.findall(analysis or ""))


def analyses_pick(analyses: Mapping[str, str]) -> str | None:
    """The option the analyses call correct: strictly highest :func:`verdict_score`; None on a tie."""
    if not analyses:
        return None
    scores = {letter: verdict_score(text) for letter, text in analyses.items()}
    best = max(scores.values())
    top = [letter for letter, score in scores.items() if score == best]
    return top[0] if len(top) == 1 else None


# --- per-stage diagnostics of one trace ---------------------------------------------------------

def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def trace_metrics(trace: Mapping, doc: Mapping, kind: str = "full") -> dict[str, float]:
    """lm-eval metrics of one pipeline trace (``Trace.to_dict()``) for one task doc.

    A metric that does not apply is left out (not zero): no recall stage, no teacher text to
    compare with, or a summary whose pick the analyses leave undetermined. lm-eval then averages
    each metric over the docs that have it."""
    letters = letters_for(len(doc["choices"]))
    answer = trace.get("answer")
    metrics: dict[str, float] = {
        "acc": float(answer is not None and answer == doc["GT"]),
        "answer_found": float(answer is not None),
        "summary_words": float(word_count(trace.get("summary"))),
    }
    recall = trace.get("recall")
    if kind == "full" and recall is not None:
        metrics["recall_words"] = float(word_count(recall))
        if doc.get("teacher_recall"):
            metrics["recall_rougeL"] = rouge_l(recall, doc["teacher_recall"])
    analyses = trace.get("analyses") or {}
    if kind in ("full", "analyze_oracle") and analyses:
        produced = {x: (analyses.get(x) or "").strip() for x in letters}
        metrics["analyses_complete"] = float(all(produced[x].strip(" .") for x in letters))
        metrics["analysis_words"] = _mean([float(word_count(produced[x])) for x in letters])
        teacher = dict(zip(letters, doc.get("teacher_analyses") or []))
        if len(teacher) == len(letters):
            metrics["analysis_rougeL"] = _mean([rouge_l(produced[x], teacher[x]) for x in letters])
        pick = analyses_pick(produced)
        if pick is not None and answer is not None:
            metrics["summary_consistent"] = float(pick == answer)
    return metrics


def vote_metrics(traces: Sequence[Mapping], doc: Mapping) -> dict[str, float]:
    """Self-consistency metrics of several sampled traces of one question.

    ``acc``: the majority answer is gold (first seen wins a tie; an unanswered sample votes for "no
    answer", as the reference's ``Counter.most_common`` and :func:`tinythinker.evaluate.engine.vote` count);
    ``sample_acc``: mean accuracy of the single samples; ``vote_share``: fraction of the samples
    that gave the majority answer."""
    answers = [t.get("answer") for t in traces]
    voted = majority(answers)
    metrics = {
        "acc": float(voted is not None and voted == doc["GT"]),
        "answer_found": float(voted is not None),
        "sample_acc": _mean([float(a is not None and a == doc["GT"]) for a in answers]) if answers else 0.0,
    }
    if voted is not None:
        metrics["vote_share"] = answers.count(voted) / len(answers)
    return metrics


# --- stage attribution --------------------------------------------------------------------------

def attribute(full: bool | None, analyze_oracle: bool | None, summarize_oracle: bool | None) -> str:
    """Which stage caused a question's error (module docstring); ``correct`` when the full pipeline
    is right, ``unattributed`` when the oracle result needed to decide is missing."""
    if full is None:
        return "unattributed"
    if full:
        return "correct"
    if analyze_oracle is None:
        return "unattributed"
    if analyze_oracle:
        return "recall"
    if summarize_oracle is None:
        return "unattributed"
    return "analyze" if summarize_oracle else "summarize"


def attribution(
    full: Mapping[str, bool],
    analyze_oracle: Mapping[str, bool] | None = None,
    summarize_oracle: Mapping[str, bool] | None = None,
) -> dict[str, str]:
    """Per question id of the full run: its :func:`attribute` outcome."""
    analyze_oracle, summarize_oracle = analyze_oracle or {}, summarize_oracle or {}
    return {qid: attribute(ok, analyze_oracle.get(qid), summarize_oracle.get(qid)) for qid, ok in full.items()}


def attribution_summary(outcomes: Mapping[str, str]) -> dict[str, float | int]:
    """Counts and fractions of every outcome; ``errors`` and each stage's share of the errors."""
    counts = Counter(outcomes.values())
    total = len(outcomes)
    errors = total - counts["correct"]
    summary: dict[str, float | int] = {"questions": total, "errors": errors}
    for outcome in OUTCOMES:
        summary[outcome] = counts[outcome]
        summary[f"{outcome}_rate"] = counts[outcome] / total if total else 0.0
    for stage in (*STAGES, "unattributed"):
        summary[f"{stage}_error_share"] = counts[stage] / errors if errors else 0.0
    return summary
