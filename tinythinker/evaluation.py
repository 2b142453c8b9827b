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
import contextlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import TinyThinkerError
from .protocol import (VARIANT_STAGES, VARIANTS, analyze_prompt, config_name, config_parts, ensure_period, first_prompts,
                       letters_for, majority, parse_answer, summarize_prompt, summarize_target)

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

    ``acc``: the majority answer is gold (first seen wins a tie; an unanswered sample votes for "no
    answer", as the reference's ``Counter.most_common`` and :func:`tinythinker.pipeline.vote` count);
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
    if not isinstance(info, dict) or not info.get("data") or config_parts(str(info.get("config", "")))[0] != dataset:
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
    return load_stage_split(folder, config_name(dataset, variant), split, revision)


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

    dataset, variant = config_parts(config)
    get_spec(dataset)
    if variant is None:
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
                 data_revision: str | None = None, student_revision: str | None = None, progress: bool = True) -> list[str]:
    """lm-eval ``run`` arguments for `tinythinker eval`: its own options translated, ``extra``
    (any lm_eval arguments) passed through unchanged after them.

    ``batch_size`` is the generation batch: ``--model_args gen_batch_size=N`` for the ``tinythinker``
    model (whose engine batch lm-eval's ``--batch_size`` does not set), and lm-eval's ``--batch_size``
    for any other model; ``progress=False`` hides the ``tinythinker`` model's bars. ``data_revision`` and
    ``student_revision`` are Hub commits (see :func:`tinythinker.hub.pin`): they go to the tasks'
    metadata and the model's arguments, so lm-eval's results file records them."""
    extra = list(extra)
    given = {arg.split("=", 1)[0] for arg in extra if arg.startswith("-")}
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise TinyThinkerError(f"--gen-batch-size {batch_size!r}: give the number of sequences per generation batch, at least 1")
    argv: list[str] = []
    if "--include_path" not in given:
        argv += ["--include_path", str(tasks_folder())]
    model_args = []
    variant = None
    if config is not None:
        variant = config_parts(config)[1]
        if "--tasks" not in given and "-t" not in given:
            argv += ["--tasks", ",".join(task_names(config, self_consistency=self_consistency))]
    elif "--tasks" not in given and "-t" not in given:
        raise TinyThinkerError("say what to evaluate: --config {dataset}-{variant} (e.g. csqa-full) or lm_eval's --tasks")
    if student is not None:
        if given & {"--model", "-M", "-m"}:
            raise TinyThinkerError("give either --student or lm_eval's --model/--model_args, not both")
        argv += ["--model", MODEL_NAME]
        model_args += [f"pretrained={student}"]
        if student_revision:
            model_args.append(f"revision={student_revision}")
        if variant:
            model_args.append(f"variant={variant}")
    ours = student is not None or _named_model(extra) == MODEL_NAME
    if batch_size is not None and ours:
        model_args.append(f"gen_batch_size={batch_size}")
    if not progress and ours:
        model_args.append("progress=False")
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


def _named_model(argv: Sequence[str]) -> str | None:
    """The ``--model`` an lm-eval argument list names (its last), if any."""
    model = None
    for k, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--model", "-M", "-m"):
            model = value if eq else (argv[k + 1] if k + 1 < len(argv) else None)
    return model


# --- lm-eval's `run` options, parsed here: `tinythinker eval` calls lm-eval's public API --------------

def _key_values(text: str) -> dict:
    """``k=v,k2=v2`` (values typed as lm-eval's CLI types them) or a JSON object."""
    import ast

    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise TinyThinkerError(f"{text[:60]!r}: not a JSON object ({error})") from None
        if not isinstance(value, dict):
            raise TinyThinkerError(f"{text[:60]!r}: not a JSON object")
        return value
    out = {}
    depth, quote, part, parts = 0, None, [], []
    for char in text:  # split on commas outside brackets and quotes (lm-eval's rule)
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append("".join(part))
            part = []
            continue
        part.append(char)
    parts.append("".join(part))
    for item in filter(None, parts):
        key, eq, value = item.partition("=")
        if not eq:
            raise TinyThinkerError(f"expected key=value, got {item!r}")
        if value.lower() in ("true", "false"):
            typed = value.lower() == "true"
        elif value.isnumeric():
            typed = int(value)
        else:
            try:
                typed = float(value)
            except ValueError:
                try:
                    typed = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    typed = value
        out[key] = typed
    return out


def _lm_eval_parser():
    """lm-eval's ``run`` options that `tinythinker eval` takes (the same names and meanings)."""
    import argparse

    class Merge(argparse.Action):  # repeatable key=value options merge, later keys win
        def __call__(self, parser, namespace, values, option_string=None):
            merged = dict(getattr(namespace, self.dest, None) or {})
            for value in values:
                merged.update(_key_values(value))
            setattr(namespace, self.dest, merged)

    class Split(argparse.Action):  # --tasks a,b c
        def __call__(self, parser, namespace, values, option_string=None):
            items = list(getattr(namespace, self.dest, None) or [])
            items += [name for value in values for name in value.split(",") if name]
            setattr(namespace, self.dest, items)

    def seeds(text: str) -> list[int | None]:
        values = [None if v.strip().lower() == "none" else int(v) for v in text.split(",")]
        default = [0, 1234, 1234, 1234]
        return values * 4 if len(values) == 1 else (values + default[len(values):])[:4]

    parser = argparse.ArgumentParser(prog="tinythinker eval", add_help=False, allow_abbrev=False)
    add = parser.add_argument
    add("--tasks", "-t", nargs="+", action=Split, default=[])
    add("--model", "-M", "-m", default="hf")
    add("--model_args", "-a", nargs="+", action=Merge, default={})
    add("--metadata", nargs="+", action=Merge, default={})
    add("--gen_kwargs", nargs="+", action=Merge, default=None)
    add("--hf_hub_log_args", nargs="+", action=Merge, default={})
    add("--include_path", action="append", default=[])
    add("--limit", "-L", type=float)
    add("--samples", "-E")
    add("--use_cache", "-c")
    add("--cache_requests", choices=["true", "refresh", "delete"], nargs="?", const="true")
    add("--num_fewshot", "-f", type=int)
    add("--batch_size", "-b", default=None)
    add("--max_batch_size", type=int)
    add("--device")
    add("--output_path", "-o")
    add("--log_samples", "-s", action="store_true")
    add("--predict_only", "-x", action="store_true")
    add("--write_out", "-w", action="store_true")
    add("--show_config", action="store_true")
    add("--check_integrity", action="store_true")
    add("--system_instruction")
    add("--apply_chat_template", nargs="?", const=True, default=False)
    add("--fewshot_as_multiturn", nargs="?", const="true", default=None)
    add("--verbosity", "-v", type=str.upper)
    add("--seed", type=seeds, default=[0, 1234, 1234, 1234])
    add("--trust_remote_code", action="store_true")
    add("--confirm_run_unsafe_code", action="store_true")
    return parser


def parse_lm_eval_args(argv: Sequence[str]):
    """lm-eval ``run`` arguments (as :func:`lm_eval_argv` makes them) -> an argparse namespace;
    options `tinythinker eval` does not take are a :class:`TinyThinkerError`."""
    args, unknown = _lm_eval_parser().parse_known_args(list(argv))
    if unknown:
        raise TinyThinkerError(f"tinythinker eval does not take {' '.join(unknown)}; it takes lm_eval run's options for the "
                               "evaluation itself (--tasks, --model_args, --metadata, --limit, --output_path, --log_samples, ...). "
                               "For the others (--config, --wandb_args, ...) run lm_eval itself with the task YAML paths (docs/evaluation.md)")
    if not args.tasks:
        raise TinyThinkerError("say what to evaluate: --config {dataset}-{variant} (e.g. csqa-full) or lm_eval's --tasks")
    if args.samples and args.limit is not None:
        raise TinyThinkerError("lm_eval's --samples and --limit exclude each other")
    if (args.log_samples or args.predict_only) and not args.output_path:
        raise TinyThinkerError("--log_samples / --predict_only need an output folder (--out)")
    if isinstance(args.samples, str):
        text = args.samples
        args.samples = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    if args.fewshot_as_multiturn is not None:
        args.fewshot_as_multiturn = str(args.fewshot_as_multiturn).lower() in ("true", "1", "yes")
    return args


def resolve_tasks(tasks: Sequence[str], include_path: Sequence[str] = (), metadata: Mapping | None = None):
    """``(TaskManager, task specs)`` for lm-eval's ``simple_evaluate``: a task manager over the
    ``include_path`` folders only (ours: 16 YAMLs, milliseconds), not lm-eval's ~14,000 built-in task
    files (6-14 s to index); names only lm-eval's built-in index knows (``--model hf --tasks hellaswag``)
    make it index them too. Task YAML paths and folders of them are taken as they are."""
    import glob

    from lm_eval.tasks import TaskManager

    include = [str(p) for p in include_path] or None
    specs: list[str] = []
    for task in dict.fromkeys(tasks):
        if task.endswith((".yaml", ".yml")):
            found = sorted(glob.glob(task))
            if not found:
                raise TinyThinkerError(f"task file {task}: no such file")
            specs += [str(Path(f).absolute()) for f in found]
        elif Path(task).is_dir() and any(Path(task).glob("*.yaml")):
            specs += [str(Path(f).absolute()) for f in sorted(Path(task).glob("*.yaml"))]
        else:
            specs.append(task)
    names = [spec for spec in specs if not spec.endswith((".yaml", ".yml"))]
    for defaults in (False, True):
        manager = TaskManager(include_path=include, include_defaults=defaults, metadata=dict(metadata or {}))
        missing = [name for name in names if not manager.match_tasks([name])]
        if not missing:
            break
        if not defaults:
            log.info("%s: not among the included tasks; indexing lm-eval's built-in tasks too", ", ".join(missing))
    else:
        raise TinyThinkerError(f"tasks not found: {', '.join(missing)} (our tasks: tinythinker_{{csqa,obqa,strategyqa}}[_analyze_oracle|"
                               "_summarize_oracle|_sc], the group tinythinker; `lm_eval ls tasks` lists lm-eval's)")
    matched: list[str] = []
    for spec in specs:
        for name in ([spec] if spec.endswith((".yaml", ".yml")) else manager.match_tasks([spec])):
            if name not in matched:
                matched.append(name)
    return manager, matched


def run_lm_eval(argv: Sequence[str]) -> dict | None:
    """`tinythinker eval`: lm-eval ``run`` arguments (:func:`lm_eval_argv`) -> :func:`evaluate_tasks`,
    then lm-eval's results table on stdout. Returns lm-eval's results (None on the other processes
    of a data-parallel run)."""
    from lm_eval.utils import handle_non_serializable, make_table, setup_logging

    args = parse_lm_eval_args(argv)
    setup_logging(args.verbosity or "INFO")
    model_args = dict(args.model_args)
    if args.trust_remote_code:
        import datasets

        datasets.config.HF_DATASETS_TRUST_REMOTE_CODE = True
        model_args["trust_remote_code"] = True
    cache = {"true": (True, False, False), "refresh": (True, True, False), "delete": (False, False, True)}.get(args.cache_requests, (False, False, False))
    results = evaluate_tasks(
        args.model, model_args=model_args, tasks=args.tasks, include_path=args.include_path, metadata=args.metadata,
        output_path=args.output_path, log_samples=args.log_samples, hf_hub_log_args=args.hf_hub_log_args,
        num_fewshot=args.num_fewshot, batch_size=args.batch_size if args.batch_size is not None else 1,
        max_batch_size=args.max_batch_size, device=args.device, use_cache=args.use_cache,
        cache_requests=cache[0], rewrite_requests_cache=cache[1], delete_requests_cache=cache[2],
        limit=args.limit, samples=args.samples, check_integrity=args.check_integrity, write_out=args.write_out,
        system_instruction=args.system_instruction, apply_chat_template=args.apply_chat_template,
        fewshot_as_multiturn=bool(args.fewshot_as_multiturn), gen_kwargs=args.gen_kwargs, predict_only=args.predict_only,
        random_seed=args.seed[0], numpy_random_seed=args.seed[1], torch_random_seed=args.seed[2], fewshot_random_seed=args.seed[3],
        confirm_run_unsafe_code=args.confirm_run_unsafe_code,
    )
    if results is None:  # another process of a data-parallel run: rank 0 wrote the results
        return None
    if args.show_config:
        shown = {k: v for k, v in results.items() if k != "samples"}
        print(json.dumps(shown, indent=2, default=handle_non_serializable, ensure_ascii=False))
    shown_args = {k: v for k, v in model_args.items() if k != "trust_remote_code"}
    print(f"{args.model} ({shown_args}), gen_kwargs: ({args.gen_kwargs}), limit: {args.limit}, num_fewshot: {args.num_fewshot}, "
          f"batch_size: {args.batch_size or 1}")
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    return results


def evaluate_tasks(model, *, tasks: Sequence[str], model_args: Mapping | None = None, include_path: Sequence[str] = (),
                   metadata: Mapping | None = None, output_path: str | None = None, log_samples: bool = False,
                   hf_hub_log_args: Mapping | None = None, **evaluate_args) -> dict | None:
    """One lm-eval evaluation with lm-eval's public API, as the ``lm_eval`` command runs it but without
    its index of every built-in task: :func:`resolve_tasks` (our tasks, then ``include_path``),
    ``lm_eval.simple_evaluate(model, model_args, ..., **evaluate_args)``, and lm-eval's
    ``EvaluationTracker`` writing the results and, with ``log_samples``, the per-question samples under
    ``output_path`` in the ``lm_eval`` command's layout (``OUT/<model>/results_<date>.json``,
    ``samples_<task>_<date>.jsonl``). ``model``: a name (``tinythinker``, ``hf``, ...) or a loaded lm-eval LM.
    Returns the results, with ``samples`` when logged (None on the other processes of a data-parallel run)."""
    import os

    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    from .lm_eval_model import register

    register()
    model_args = dict(model_args or {})
    metadata = {**model_args, **(metadata or {})}  # as lm_eval's CLI: the tasks see the model arguments too
    ours = str(tasks_folder())  # first: a folder given after it can override our tasks
    include = [ours, *[str(p) for p in include_path if Path(p).absolute() != Path(ours).absolute()]]
    manager, specs = resolve_tasks(tasks, include, metadata)
    hub_args = dict(hf_hub_log_args or {})
    if output_path:
        hub_args["output_path"] = str(output_path)
    if os.environ.get("HF_TOKEN"):
        hub_args["token"] = os.environ["HF_TOKEN"]
    tracker = EvaluationTracker(**hub_args)
    with _environment_report_ahead():
        results = simple_evaluate(model=model, model_args=model_args if isinstance(model, str) else None, tasks=specs,
                                  task_manager=manager, metadata=metadata, log_samples=log_samples, evaluation_tracker=tracker,
                                  **evaluate_args)
    if results is None:
        return None
    samples = results.pop("samples", None) if log_samples or evaluate_args.get("predict_only") else None
    tracker.save_results_aggregated(results=results, samples=samples)
    if samples is not None:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        results["samples"] = samples
    if tracker.push_results_to_hub or tracker.push_samples_to_hub:
        tracker.recreate_metadata_card()
    return results


def _user_cache() -> Path:
    return Path(os.environ.get("TINYTHINKER_CACHE") or Path.home() / ".cache" / "tinythinker")


def _environment_key() -> str:
    """What torch's environment report depends on: this machine since its last boot (drivers, GPUs,
    OS), this Python, what is installed in it (the mtimes of the folders packages install into change
    when a package is installed or removed), the tools on PATH and the visible devices."""
    import hashlib
    import platform
    import site
    import sys

    boot = Path("/proc/sys/kernel/random/boot_id")
    folders = sorted({*site.getsitepackages(), site.getusersitepackages(),
                      *[p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]})
    parts = [platform.node(), boot.read_text().strip() if boot.exists() else "", sys.executable, sys.version,
             os.environ.get("PATH", ""), os.environ.get("CUDA_VISIBLE_DEVICES", "-"), os.environ.get("CONDA_PREFIX", "")]
    for folder in folders:
        try:
            parts.append(f"{folder}:{os.stat(folder).st_mtime_ns}")
        except OSError:
            parts.append(f"{folder}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def environment_report(compute) -> str:
    """``compute()`` (torch's ``get_pretty_env_info``), kept in the user cache per environment
    (:func:`_environment_key`): the same text, without a dozen subprocesses (``pip list`` is most of
    it) on every evaluation."""
    from .artifacts import atomic_write_text

    path = _user_cache() / "env-report" / f"{_environment_key()}.txt"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    report = compute()
    try:
        atomic_write_text(path, report)
    except OSError as error:  # a read-only home only loses the cache
        log.debug("environment report not cached: %s", error)
    return report


@contextlib.contextmanager
def _environment_report_ahead():
    """lm-eval's results record torch's environment report (``torch.utils.collect_env``: ``pip list``,
    compiler and driver versions, a dozen subprocesses: about a second of CPU, 2-17 s of wall time on
    the busy 2-core machine, more than a tiny student's whole evaluation) and collect it after the
    evaluation. Here it comes from :func:`environment_report` (cached per environment), fetched in a
    thread from the start, while the model loads and generates; lm-eval receives it when it asks.
    Only the process that writes the results (rank 0) fetches it."""
    from concurrent.futures import ThreadPoolExecutor

    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    from torch.utils import collect_env

    original = collect_env.get_pretty_env_info
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="env-report")
    report = pool.submit(environment_report, original)
    collect_env.get_pretty_env_info = lambda: report.result()  # an error in the thread reaches lm-eval, which records it
    try:
        yield
    finally:
        collect_env.get_pretty_env_info = original
        pool.shutdown(wait=False, cancel_futures=True)
