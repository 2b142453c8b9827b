"""Evaluation: what a three-stage trace says about each stage, which stage caused each error, and
the data side of the lm-eval tasks in ``eval_tasks/``.

Task kinds (one lm-eval task per data set and kind, see ``docs/evaluation.md``):

* ``full``: the student's own Recall -> Analyze -> Summarize (REFERENCE 8); scored on the whole trace.
* ``analyze_oracle``: the teacher's recall is given; the student analyzes and summarizes.
* ``summarize_oracle``: the teacher's recall and analyses are given; the student only summarizes
  (an ordinary generate_until prompt, so any lm-eval model can run it).
* ``sc``: several sampled traces per question, majority vote on their answers (self-consistency).

Attribution: a question the full pipeline gets wrong is blamed on the first stage whose oracle
repairs it: right with the teacher's recall -> ``recall``; still wrong with it but right with the
teacher's analyses too -> ``analyze``; wrong even then -> ``summarize``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import TinyThinkerError
from .protocol import (VARIANT_STAGES, VARIANTS, analyze_prompt, ensure_period, first_prompts, letters_for, parse_answer,
                       summarize_prompt, summarize_target)

log = logging.getLogger(__name__)

MODEL_NAME = "tinythinker"  # the lm-eval model (tinythinker/lm_eval_model.py)
KINDS = ("full", "analyze_oracle", "summarize_oracle", "sc")
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

    ``acc``: the majority answer (first seen wins a tie; unanswered samples do not vote) is gold;
    ``sample_acc``: mean accuracy of the single samples; ``vote_share``: fraction of the samples
    that gave the majority answer."""
    answers = [t.get("answer") for t in traces]
    voted = majority([a for a in answers if a is not None])
    metrics = {
        "acc": float(voted is not None and voted == doc["GT"]),
        "answer_found": float(voted is not None),
        "sample_acc": _mean([float(a is not None and a == doc["GT"]) for a in answers]) if answers else 0.0,
    }
    if voted is not None:
        metrics["vote_share"] = answers.count(voted) / len(answers)
    return metrics


def majority(answers: Sequence[str]) -> str | None:
    """Most frequent answer; a tie goes to the answer seen first (REFERENCE 5.1, 8)."""
    if not answers:
        return None
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


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


# --- responses: a trace travels through lm-eval as one JSON string ------------------------------

def encode_trace(trace) -> str:
    """One lm-eval response: the whole trace (``Trace`` or its dict) as compact JSON."""
    data = trace.to_dict() if hasattr(trace, "to_dict") else dict(trace)
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def decode_trace(response: str, task: str) -> dict:
    """The trace in one lm-eval response; a clear error when the model did not run the pipeline."""
    try:
        data = json.loads(response)
    except (TypeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or "summary" not in data or "analyses" not in data:
        raise TinyThinkerError(
            f"{task}: the model's response is not a TinyThinker trace ({str(response)[:60]!r}); run this task with "
            "--model tinythinker (the *_summarize_oracle tasks are the ones any generate_until model can run)"
        )
    return data


# --- task data: which data set folder, and the docs of each task kind ---------------------------

DATA_ENV = "TINYTHINKER_DATA"


def data_source(dataset: str, metadata: Mapping) -> str:
    """Where a task reads its data set folder: lm-eval metadata ``data_<dataset>`` or ``data``
    (``--metadata data=PATH``), else the environment ``TINYTHINKER_DATA_<DATASET>`` or
    ``TINYTHINKER_DATA``, else the data the student was trained on (its card, when ``pretrained``
    is a TinyThinker checkpoint of this data set), else ``world`` (the generated learnable world,
    :func:`world_folder`). A local folder, a Hub id, or ``world`` (``demo``: a deprecated alias)."""
    for value in (metadata.get(f"data_{dataset}"), metadata.get("data"),
                  os.environ.get(f"{DATA_ENV}_{dataset.upper()}"), os.environ.get(DATA_ENV)):
        if value not in (None, ""):
            return str(value)
    trained_on = _student_data(metadata.get("pretrained"), dataset)
    if trained_on:
        log.warning("%s: reading %s, the data set the student's card names (--metadata data=... to choose another)", dataset, trained_on)
        return trained_on
    log.warning("%s: no data set given (--metadata data=PATH_OR_HUB_ID, or %s); using the generated world data", dataset, DATA_ENV)
    return "world"


def _student_card(pretrained, dataset: str) -> dict:
    """The ``tinythinker`` card metadata of a local checkpoint trained on a config of ``dataset`` ({} otherwise)."""
    from .artifacts import read_card_metadata

    if not pretrained or not Path(str(pretrained)).is_dir():
        return {}
    try:
        info = read_card_metadata(Path(str(pretrained))).get("tinythinker") or {}
    except Exception:  # noqa: BLE001 - an unreadable card only loses this default
        return {}
    if not isinstance(info, dict) or not info.get("data") or str(info.get("config", "")).partition("-")[0] != dataset:
        return {}
    return info


def _student_data(pretrained, dataset: str) -> str | None:
    """The ``data`` a TinyThinker checkpoint's card records, when its config is of ``dataset``."""
    info = _student_card(pretrained, dataset)
    return str(info["data"]) if info else None


def data_revision(dataset: str, metadata: Mapping, source: str) -> str | None:
    """The Hub commit to read ``source`` at: lm-eval metadata ``data_revision`` (`tinythinker eval
    --revision`, pinned to a commit id), else the commit the student's card names when ``source``
    is the data set it was trained on, else None (the main branch)."""
    given = metadata.get("data_revision")
    if given not in (None, ""):
        return str(given)
    info = _student_card(metadata.get("pretrained"), dataset)
    if info and str(info.get("data")) == source and info.get("data_revision"):
        return str(info["data_revision"])
    return None


WORLD_SOURCE = "world"  # data=world: the generated world (world_folder); "demo" is a deprecated alias


@functools.lru_cache(maxsize=None)
def _world_digest(dataset: str, seed: int, questions: int) -> str:
    """A hash of the generated world's files (generating the default world takes seconds: once a process)."""
    import hashlib

    from .world import world_files

    digest = hashlib.sha256()
    for path, text in sorted(world_files(dataset, seed=seed, questions=questions).items()):
        digest.update(path.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:12]


def world_folder(dataset: str, *, seed: int = 42, questions: int | None = None) -> Path:
    """The generated learnable world of ``dataset`` (``tinythinker world``: seed 42, the default size)
    built once into the user cache (``TINYTHINKER_CACHE``, default ``~/.cache/tinythinker``), under a
    name keyed by a hash of the generated files: a change of the generator builds it again."""
    import tempfile

    from dataset_builders.build import build_dataset

    from .world import DEFAULT_QUESTIONS, write_world

    questions = questions or DEFAULT_QUESTIONS
    cache = Path(os.environ.get("TINYTHINKER_CACHE") or Path.home() / ".cache" / "tinythinker")
    out = cache / "world" / f"{dataset}-{_world_digest(dataset, seed, questions)}"
    if not (out / "README.md").exists():
        log.warning("%s: building the generated world data into %s (once)", dataset, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dataset}-world-", dir=out.parent) as tmp:
            world = write_world(dataset, Path(tmp) / "world", seed=seed, questions=questions)
            try:
                build_dataset(dataset, world / "raw", [world / "teacher.jsonl"], out, seed=seed)
            except TinyThinkerError:
                if not (out / "README.md").exists():  # not merely another process finishing it first
                    raise
    return out


_warned_demo: list[bool] = []


def load_split(source: str, dataset: str, variant: str, split: str, revision: str | None = None):
    """One split of config ``{dataset}-{variant}`` of a data set folder, Hub id (at ``revision``), or ``world``."""
    from .pipeline import load_stage_split  # the engine's loader: one set of checks and messages

    if source == "demo":  # the embedded demo data is gone; its keyword still works
        if not _warned_demo:
            _warned_demo.append(True)
            log.warning("data=demo is deprecated: reading data=world (the generated world data) instead")
        source = WORLD_SOURCE
    folder = world_folder(dataset) if source == WORLD_SOURCE else Path(source).expanduser()
    # datasets reads a relative folder such as "." as a Hub name: hand it an absolute path
    folder = folder.resolve() if folder.exists() else source
    return load_stage_split(folder, f"{dataset}-{variant}", split, revision)


def task_docs(rows: Iterable[Mapping], kind: str, variant: str = "full") -> list[dict]:
    """The docs of one task kind: one per question id (file order), each with ``prompt`` (what the
    model is given) and ``target`` (the gold summary). Oracle kinds keep only questions with the
    teacher's text."""
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}")
    docs, seen = [], set()
    for row in rows:
        if row["id"] in seen:
            continue  # no_recall validation/test rows: one per option
        seen.add(row["id"])
        letters = letters_for(len(row["choices"]))
        # period-terminated as the engine's given_recalls / given_analyses are (REFERENCE 8)
        teacher_recall = ensure_period(row["teacher_recall"]) if row.get("teacher_recall") else ""
        teacher_analyses = [ensure_period(text) if text else "" for text in row.get("teacher_analyses") or []]
        question = row["question"]
        if kind in ("full", "sc"):
            prompt = first_prompts(question, letters, variant)[0][1]
        elif kind == "analyze_oracle":
            if not teacher_recall:
                continue
            prompt = analyze_prompt(question, letters[0], recall=teacher_recall)
        else:
            if not teacher_recall or len(teacher_analyses) != len(letters):
                continue
            prompt = summarize_prompt(question, teacher_recall, dict(zip(letters, teacher_analyses)))
        docs.append({
            "id": row["id"], "question": question, "choices": list(row["choices"]), "GT": row["GT"],
            "teacher_recall": teacher_recall, "teacher_analyses": teacher_analyses,
            "variant": variant, "kind": kind, "prompt": prompt, "target": summarize_target(row["GT"]),
        })
    return docs


def load_task_docs(dataset: str, kind: str, **metadata):
    """lm-eval ``custom_dataset``: ``{"test": docs}`` for one data set and task kind.

    lm-eval calls it with the task's metadata, which holds ``--metadata`` and ``--model_args``:
    ``data``/``data_<dataset>`` (:func:`data_source`), ``data_revision`` (:func:`data_revision`),
    ``split`` (default test), ``variant`` (default full; the oracle kinds always read the full config)."""
    import datasets

    split = str(metadata.get("split") or "test")
    variant = str(metadata.get("variant") or "full") if kind in ("full", "sc") else "full"
    if variant not in VARIANTS:
        raise TinyThinkerError(f"variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if kind == "analyze_oracle" and "recall" not in VARIANT_STAGES[variant]:
        raise TinyThinkerError("analyze_oracle needs a variant with a recall stage")
    source = data_source(dataset, metadata)
    docs = task_docs(load_split(source, dataset, variant, split, data_revision(dataset, metadata, source)), kind, variant)
    if not docs:
        raise TinyThinkerError(
            f"{source}: no {split} question of {dataset}-{variant} has the teacher's text that the {kind} task needs; "
            "build the data set with teacher responses for its validation/test questions"
        )
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def parse_summary_response(response: str) -> dict:
    """A summarize-oracle response: plain generated text, or a trace when our model returned one."""
    try:
        data = json.loads(response)
    except (TypeError, json.JSONDecodeError):
        data = None
    if isinstance(data, dict) and "summary" in data:
        return {"summary": data["summary"], "answer": data.get("answer")}
    summary = (response or "").strip()
    return {"summary": summary, "answer": parse_answer(summary)}


# --- running lm-eval ------------------------------------------------------------------------------

def task_names(config: str, *, self_consistency: bool = False) -> list[str]:
    """The tasks `tinythinker eval --config {dataset}-{variant}` runs: the pipeline task, plus the
    two oracle tasks for the full variant (so the report can attribute errors) and optionally the
    self-consistency task."""
    from .sources import get_spec

    dataset, _, variant = config.partition("-")
    get_spec(dataset)
    if variant not in VARIANTS:
        raise TinyThinkerError(f"config {config!r}: expected {{dataset}}-{{variant}} with variant one of {', '.join(VARIANTS)}")
    names = [f"tinythinker_{dataset}"]
    if variant == "full":
        names += [f"tinythinker_{dataset}_analyze_oracle", f"tinythinker_{dataset}_summarize_oracle"]
    if self_consistency:
        names.append(f"tinythinker_{dataset}_sc")
    return names


def tasks_folder() -> Path:
    """The installed ``eval_tasks`` folder (what ``--include_path`` should name)."""
    from importlib import resources

    return Path(str(resources.files("eval_tasks")))


def _student_fingerprint(student: str, revision: str | None = None) -> str:
    """Identity of a checkpoint for the request cache: its path and its files' sizes and times (a Hub
    student: its id and commit)."""
    import hashlib

    path = Path(student)
    parts = [str(path.resolve()) if path.exists() else f"{student}@{revision or 'main'}"]
    if path.is_dir():
        parts += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.iterdir()) if p.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def lm_eval_argv(extra: Sequence[str] = (), *, student: str | None = None, data: str | None = None, config: str | None = None,
                 split: str | None = None, output_path: str | None = None, limit: float | None = None,
                 batch_size: int | None = None, device: str | None = None, self_consistency: bool = False,
                 data_revision: str | None = None, student_revision: str | None = None) -> list[str]:
    """``lm_eval run`` arguments for `tinythinker eval`: its own options translated, ``extra``
    (any lm_eval arguments) passed through unchanged after them. ``data_revision`` and
    ``student_revision`` are Hub commits (see :func:`tinythinker.hub.pin`): they go to the tasks'
    metadata and the model's arguments, so lm-eval's results file records them."""
    extra = list(extra)
    given = {arg.split("=", 1)[0] for arg in extra if arg.startswith("-")}
    argv: list[str] = []
    if "--include_path" not in given:
        argv += ["--include_path", str(tasks_folder())]
    model_args = []
    variant = None
    if config is not None:
        variant = config.partition("-")[2]
        if "--tasks" not in given and "-t" not in given:
            argv += ["--tasks", ",".join(task_names(config, self_consistency=self_consistency))]
    elif "--tasks" not in given and "-t" not in given:
        raise TinyThinkerError("say what to evaluate: --config {dataset}-{variant} (e.g. csqa-full) or lm_eval's --tasks")
    if student is not None:
        if "--model" in given or "-m" in given:
            raise TinyThinkerError("give either --student or lm_eval's --model/--model_args, not both")
        argv += ["--model", MODEL_NAME]
        model_args += [f"pretrained={student}"]
        if student_revision:
            model_args.append(f"revision={student_revision}")
        if variant:
            model_args.append(f"variant={variant}")
    if model_args:
        argv += ["--model_args", *model_args]
    metadata = ([f"data={data}"] if data else []) + ([f"data_revision={data_revision}"] if data_revision else []) \
        + ([f"split={split}"] if split else [])
    if variant and student is None:
        metadata.append(f"variant={variant}")
    if metadata:
        argv += ["--metadata", *metadata]
    if output_path is not None:
        argv += ["--output_path", str(output_path)]
        if "--log_samples" not in given and "-s" not in given:
            argv.append("--log_samples")
        if student is not None and "--use_cache" not in given and "-c" not in given:
            # greedy responses are cached per finished engine call: rerunning resumes (lm-eval appends _rank0.db)
            argv += ["--use_cache", str(Path(output_path) / ".requests-cache" / _student_fingerprint(student, student_revision))]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if batch_size is not None or ("--batch_size" not in given and "-b" not in given):
        argv += ["--batch_size", str(batch_size or 64)]
    if device is not None:
        argv += ["--device", device]
    return argv + extra


def run_lm_eval(argv: Sequence[str]) -> None:
    """Run lm-eval's own CLI (``lm_eval run ARGV``) in this process, with ``--model tinythinker``
    registered first (the plain ``lm_eval`` command creates the model before it loads our tasks)."""
    import sys

    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    from .lm_eval_model import register

    register()
    saved = sys.argv
    sys.argv = ["lm_eval", "run", *argv]
    try:
        setup_logging()
        parser = HarnessCLI()
        parser.execute(parser.parse_args())
    finally:
        sys.argv = saved
