"""Preference pairs from the student's own samples (REFERENCE 9) and the preference-set folder.

Pair building is pure: sampled traces (``pipeline.Trace``-like objects with ``id``, ``recall``,
``analyses``, ``answer``, ``gold``) and the teacher's records in, pair rows and per-rule counts out.
The table work (right/wrong split, de-duplication, removal of texts found on both sides) is polars;
balancing draws from one seeded numpy generator per pair set, in question order, so the same
traces and seed always give the same pairs.

Rules, per question (recall pairs) or per chosen recall (analyze pairs):

1. chosen = distinct samples whose final answer is right, rejected = distinct samples whose answer
   is wrong (recall: no parsable answer counts as wrong; analyze: runs with no parsable answer,
   or an answer outside the question's options, are dropped);
2. samples found on both sides are removed from both;
3. no rejected left: the group is skipped;
4. more chosen than rejected: the rejected are resampled with replacement to the chosen count;
   more rejected than chosen: the teacher's records of that question (SFT data) are added as chosen
   until the counts match (drawn without replacement while there are enough, else with);
5. chosen and rejected are paired in order; an analyze pair of runs gives two pairs, one for the
   gold option and one for the option the rejected run predicted.

The preference-set folder (``runs/x/preferences``) is laid out like a Hub data set repo and holds
one config ``{dataset}-dpo-iter{k}`` per iteration, splits ``recall`` and ``analyze`` (a split with
no pairs is left out: ``datasets`` cannot load an empty parquet file), columns
``id, stage, prompt, chosen, rejected``.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from tinythinker.artifacts import configs_metadata, read_card_metadata, split_path, staged_folder, write_card, write_split
from tinythinker.cards import render_card
from tinythinker.protocol import ANALYZE, RECALL, analyze_prompt, recall_prompt

PAIR_COLUMNS = ("id", "stage", "prompt", "chosen", "rejected")
PAIR_STAGES = (RECALL, ANALYZE)

# Counts reported for each pair set, in the order the card lists them (rule -> what it counts).
RECALL_RULES = {
    "questions": "training questions sampled",
    "samples": "sampled recalls (completed greedily)",
    "duplicate_chosen": "right recalls dropped as duplicates",
    "duplicate_rejected": "wrong recalls dropped as duplicates",
    "shared": "recalls found both right and wrong, removed from both sides",
    "skipped_no_rejected": "questions skipped: no wrong recall left",
    "rejected_resampled": "questions whose wrong recalls were resampled with replacement",
    "rejected_added": "wrong recalls added by that resampling",
    "teacher_filled": "questions filled up with the teacher's recalls as chosen",
    "teacher_added": "teacher recalls added as chosen",
    "unbalanced_no_teacher": "questions with too few chosen and no teacher recall to add (pairs cut to the shorter side)",
    "skipped_no_chosen": "questions left with no pair (no chosen recall at all)",
    "pairs": "recall pairs",
}
ANALYZE_RULES = {
    "recalls": "chosen recalls whose analyses were sampled",
    "samples": "sampled analysis runs (every option; summarized greedily)",
    "dropped_no_answer": "runs dropped: no parsable answer among the options",
    "duplicate_chosen": "right runs dropped as duplicates",
    "duplicate_rejected": "wrong runs dropped as duplicates",
    "shared": "runs found both right and wrong, removed from both sides",
    "skipped_no_rejected": "recalls skipped: no wrong run left",
    "rejected_resampled": "recalls whose wrong runs were resampled with replacement",
    "rejected_added": "wrong runs added by that resampling",
    "teacher_filled": "recalls filled up with the teacher's analyses as chosen",
    "teacher_added": "teacher analysis runs added as chosen",
    "unbalanced_no_teacher": "recalls with too few chosen and no teacher analyses to add (pairs cut to the shorter side)",
    "skipped_no_chosen": "recalls left with no pair (no chosen run at all)",
    "pairs_gold": "analyze pairs on the gold option",
    "pairs_predicted": "analyze pairs on the option the wrong run predicted",
    "pairs": "analyze pairs",
}


@dataclass
class PairSet:
    """The pairs of one stage and how many samples each rule touched."""

    stage: str
    rows: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def pair_features():
    """The ``datasets`` Features of a pair split (all strings; the column names DPO tools read)."""
    import datasets

    return datasets.Features({name: datasets.Value("string") for name in PAIR_COLUMNS})


def pair_rng(seed: int, iteration: int, stage: str) -> np.random.Generator:
    """The one generator of a pair-building step (recall and analyze draw independently)."""
    return np.random.default_rng([seed, iteration, PAIR_STAGES.index(stage)])


def _is_correct(answer: str | None, gold: str | None) -> bool:
    return answer is not None and gold is not None and answer == gold


# --- the teacher's records (SFT data) ----------------------------------------------------------

def teacher_recalls(recall_rows: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Question id -> the teacher's recalls (the ``recall`` split of the stage data set), file order."""
    out: dict[str, list[str]] = {}
    for row in recall_rows:
        out.setdefault(row["id"], []).append(row["target"])
    return out


def teacher_analyses(
    recall_rows: Iterable[Mapping[str, Any]], analyze_rows: Iterable[Mapping[str, Any]], questions: Mapping[str, Any]
) -> dict[str, list[dict[str, str]]]:
    """Question id -> the teacher's complete analysis runs ({letter: analysis}), one per teacher recall.

    A run is the analyze records whose input is that recall's analyze prompt for each option
    (matched on the prompt text :func:`protocol.analyze_prompt` writes); a recall missing an option
    gives no run."""
    analyze = pl.DataFrame(
        [{"id": r["id"], "input": r["input"], "target": r["target"]} for r in analyze_rows],
        schema={"id": pl.String, "input": pl.String, "target": pl.String},
    ).unique(["id", "input"], keep="first", maintain_order=True)
    wanted = []
    for order, row in enumerate(recall_rows):
        question = questions.get(row["id"])
        if question is None:
            continue
        for letter in question.letters:
            wanted.append({"order": order, "id": row["id"], "letter": letter, "input": analyze_prompt(question.question, letter, row["target"])})
    if not wanted:
        return {}
    found = (
        pl.DataFrame(wanted)
        .join(analyze, on=["id", "input"], how="inner")
        .group_by("order", maintain_order=True)
        .agg(pl.col("id").first(), pl.col("letter"), pl.col("target"))
        .sort("order")
    )
    out: dict[str, list[dict[str, str]]] = {}
    for row in found.iter_rows(named=True):
        letters = questions[row["id"]].letters
        run = dict(zip(row["letter"], row["target"]))
        if sorted(run) == list(letters):
            out.setdefault(row["id"], []).append(run)
    return out


# --- balancing (rules 3-5), shared by both stages ------------------------------------------------

def _pair_group(chosen: list, rejected: list, teacher: Sequence, rng: np.random.Generator, counts: Counter) -> list[tuple]:
    if not rejected:
        counts["skipped_no_rejected"] += 1
        return []
    if len(chosen) > len(rejected):
        picks = rng.integers(0, len(rejected), size=len(chosen))
        counts["rejected_resampled"] += 1
        counts["rejected_added"] += len(chosen) - len(rejected)
        rejected = [rejected[i] for i in picks]
    elif len(rejected) > len(chosen):
        need = len(rejected) - len(chosen)
        if teacher:
            picks = rng.choice(len(teacher), size=need, replace=need > len(teacher))
            chosen = chosen + [teacher[i] for i in picks]
            counts["teacher_filled"] += 1
            counts["teacher_added"] += need
        else:
            counts["unbalanced_no_teacher"] += 1
    pairs = list(zip(chosen, rejected))
    if not pairs:
        counts["skipped_no_chosen"] += 1
    return pairs


def _split_runs(runs: pl.DataFrame, keys: list[str], counts: Counter) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rules 1-2: distinct right / wrong runs per group, minus the ones found on both sides."""
    right = runs.filter(pl.col("correct"))
    wrong = runs.filter(~pl.col("correct"))
    chosen = right.unique(keys, keep="first", maintain_order=True)
    rejected = wrong.unique(keys, keep="first", maintain_order=True)
    counts["duplicate_chosen"] += right.height - chosen.height
    counts["duplicate_rejected"] += wrong.height - rejected.height
    shared = chosen.join(rejected, on=keys, how="semi")
    counts["shared"] += shared.height
    return chosen.join(shared, on=keys, how="anti", maintain_order="left"), rejected.join(shared, on=keys, how="anti", maintain_order="left")


def _groups(frame: pl.DataFrame, keys: list[str]) -> dict[tuple, pl.DataFrame]:
    return dict(frame.partition_by(keys, maintain_order=True, as_dict=True)) if frame.height else {}


# --- recall pairs -------------------------------------------------------------------------------

def recall_pairs(
    traces: Sequence[Any],
    questions: Mapping[str, Any],
    teacher: Mapping[str, Sequence[str]],
    rng: np.random.Generator,
) -> PairSet:
    """Recall pairs from sampled recalls completed greedily (one trace per sample).

    ``questions`` maps id -> ``pipeline.Item`` (question text, letters, gold) in the order groups
    are visited; ``teacher`` maps id -> the teacher's recalls."""
    counts: Counter = Counter({rule: 0 for rule in RECALL_RULES})
    order = {qid: i for i, qid in enumerate(questions)}
    runs = pl.DataFrame(
        [
            {"order": order[t.id], "id": t.id, "recall": t.recall or "", "correct": _is_correct(t.answer, questions[t.id].gold)}
            for t in traces
            if t.id in order
        ],
        schema={"order": pl.Int64, "id": pl.String, "recall": pl.String, "correct": pl.Boolean},
    ).sort("order", maintain_order=True)
    counts["questions"] = runs["id"].n_unique()
    counts["samples"] = runs.height
    chosen, rejected = _split_runs(runs, ["id", "recall"], counts)
    chosen_by, rejected_by = _groups(chosen, ["id"]), _groups(rejected, ["id"])

    rows = []
    for qid in runs["id"].unique(maintain_order=True):
        good = chosen_by[(qid,)]["recall"].to_list() if (qid,) in chosen_by else []
        bad = rejected_by[(qid,)]["recall"].to_list() if (qid,) in rejected_by else []
        prompt = recall_prompt(questions[qid].question)
        for good_text, bad_text in _pair_group(good, bad, list(teacher.get(qid, ())), rng, counts):
            rows.append({"id": qid, "stage": RECALL, "prompt": prompt, "chosen": good_text, "rejected": bad_text})
    counts["pairs"] = len(rows)
    return PairSet(RECALL, rows, dict(counts))


def chosen_recalls(pairs: PairSet) -> list[tuple[str, str]]:
    """The distinct (question id, chosen recall) of the recall pairs, in pair order: the recalls
    whose analyses are sampled for the analyze pairs."""
    return list(dict.fromkeys((row["id"], row["chosen"]) for row in pairs.rows))


# --- analyze pairs ------------------------------------------------------------------------------

def analyze_pairs(
    traces: Sequence[Any],
    questions: Mapping[str, Any],
    teacher: Mapping[str, Sequence[Mapping[str, str]]],
    rng: np.random.Generator,
) -> PairSet:
    """Analyze pairs from analysis runs sampled after a chosen recall (one trace per run: ``recall``
    is the given recall, ``analyses`` the run's analysis of every option, ``answer`` its greedy
    summary's answer). ``teacher`` maps id -> the teacher's analysis runs ({letter: text})."""
    counts: Counter = Counter({rule: 0 for rule in ANALYZE_RULES})
    records = []
    for t in traces:
        question = questions.get(t.id)
        if question is None:
            continue
        records.append(
            {
                "id": t.id,
                "recall": t.recall or "",
                "analyses": [t.analyses.get(x, "") for x in question.letters],
                "answer": t.answer if t.answer and t.answer in question.letters else None,
                "correct": _is_correct(t.answer, question.gold),
            }
        )
    runs = pl.DataFrame(
        records,
        schema={"id": pl.String, "recall": pl.String, "analyses": pl.List(pl.String), "answer": pl.String, "correct": pl.Boolean},
    )
    counts["recalls"] = runs.select(["id", "recall"]).unique().height
    counts["samples"] = runs.height
    answered = runs.filter(pl.col("answer").is_not_null())
    counts["dropped_no_answer"] = runs.height - answered.height
    chosen, rejected = _split_runs(answered, ["id", "recall", "analyses"], counts)
    chosen_by, rejected_by = _groups(chosen, ["id", "recall"]), _groups(rejected, ["id", "recall"])

    rows = []
    gold_pairs = predicted_pairs = 0
    for group in runs.select(["id", "recall"]).unique(maintain_order=True).iter_rows(named=True):
        qid, recall = group["id"], group["recall"]
        question = questions[qid]
        good = _runs_of(chosen_by.get((qid, recall)), question.letters)
        bad = _runs_of(rejected_by.get((qid, recall)), question.letters)
        fallback = [(dict(run), question.gold) for run in teacher.get(qid, ())]
        for (good_run, _), (bad_run, bad_answer) in _pair_group(good, bad, fallback, rng, counts):
            for letter in (question.gold, bad_answer):
                rows.append(
                    {
                        "id": qid,
                        "stage": ANALYZE,
                        "prompt": analyze_prompt(question.question, letter, recall),
                        "chosen": good_run[letter],
                        "rejected": bad_run[letter],
                    }
                )
            gold_pairs += 1
            predicted_pairs += 1
    counts["pairs_gold"] = gold_pairs
    counts["pairs_predicted"] = predicted_pairs
    counts["pairs"] = len(rows)
    return PairSet(ANALYZE, rows, dict(counts))


def _runs_of(frame: pl.DataFrame | None, letters: str) -> list[tuple[dict[str, str], str]]:
    if frame is None:
        return []
    return [(dict(zip(letters, row["analyses"])), row["answer"]) for row in frame.iter_rows(named=True)]


# --- the preference-set folder ------------------------------------------------------------------

def config_name(dataset: str, iteration: int) -> str:
    return f"{dataset}-dpo-iter{iteration}"


def write_preference_config(folder: str | Path, *, dataset: str, iteration: int, pair_sets: Sequence[PairSet], info: Mapping[str, Any]) -> str | None:
    """Add (or replace) iteration ``iteration``'s config in the preference-set folder, keeping the
    other iterations' configs; the card is re-rendered from every iteration's recorded info.

    Returns the config name, or None when no stage has a pair (nothing loadable to write; the
    card still records the iteration's counts)."""
    folder = Path(folder)
    config = config_name(dataset, iteration)
    meta = read_card_metadata(folder)
    recorded: dict[str, dict] = dict((meta.get("tinythinker") or {}).get("iterations") or {})
    splits = [p.stage for p in pair_sets if p.rows]
    recorded[config] = {
        **dict(info),
        "iteration": iteration,
        "splits": splits,
        "pairs": {p.stage: len(p.rows) for p in pair_sets},
        "counts": {p.stage: dict(p.counts) for p in pair_sets},
    }
    recorded = dict(sorted(recorded.items(), key=lambda item: item[1]["iteration"]))

    with staged_folder(folder, overwrite=True) as tmp:
        for other, entry in recorded.items():
            if other == config:
                continue
            for split in entry["splits"]:
                source = split_path(folder, other, split)
                target = tmp / source.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        features = pair_features()
        for pair_set in pair_sets:
            if pair_set.rows:
                write_split(tmp, config, pair_set.stage, pair_set.rows, features)
        loadable = {name: entry["splits"] for name, entry in recorded.items() if entry["splits"]}
        front = configs_metadata(tmp, loadable) if loadable else {}
        front.update(
            {
                "pretty_name": f"TinyThinker {dataset} self-reflection preference pairs",
                "tags": ["tinythinker", "dpo", "preference", dataset],
                "task_categories": ["text-generation"],
                "tinythinker": {"dataset": dataset, "iterations": recorded},
            }
        )
        body = render_card(
            "preferences.md.j2",
            dataset=dataset,
            iterations=list(recorded.items()),
            recall_rules=RECALL_RULES,
            analyze_rules=ANALYZE_RULES,
        )
        write_card(tmp, front, body)
    return config if splits else None
