"""The lm-eval tasks' documents (``eval_tasks/*.yaml``): which data set each task reads, and its docs.

Task kinds (one lm-eval task per data set and kind, see ``docs/evaluation.md``):

* ``full``: the student's own Recall -> Analyze -> Summarize (REFERENCE 8); scored on the whole trace.
* ``analyze_oracle``: the teacher's recall is given; the student analyzes and summarizes.
* ``summarize_oracle``: the teacher's recall and analyses are given; the student only summarizes
  (an ordinary generate_until prompt, so any lm-eval model can run it).
* ``sc``: several sampled traces per question, majority vote on their answers (self-consistency).

Every doc carries its ``kind`` and ``variant``: the lm-eval model reads them to decide what to run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

from tinythinker.artifacts import checkpoint_provenance
from tinythinker.data.splits import load_split
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import (VARIANT_STAGES, VARIANTS, analyze_prompt, config_parts, ensure_period, first_prompts,
                                  letters_for, summarize_prompt, summarize_target)

log = logging.getLogger(__name__)

KINDS = ("full", "analyze_oracle", "summarize_oracle", "sc")
MODEL_NAME = "tinythinker"  # the lm-eval model that runs the full, analyze_oracle and sc kinds (lm_eval_model.py)

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
    """The card record of a local checkpoint trained on a config of ``dataset`` ({} otherwise)."""
    info = checkpoint_provenance(pretrained)
    return info if info.get("data") and config_parts(str(info.get("config", "")))[0] == dataset else {}


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


def task_names(config: str, *, self_consistency: bool = False) -> list[str]:
    """The tasks `tinythinker eval --config {dataset}-{variant}` runs: the pipeline task, plus the
    two oracle tasks for the full variant (so the report can attribute errors) and optionally the
    self-consistency task."""
    from tinythinker.data.sources import get_spec

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
