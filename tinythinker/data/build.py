"""`tinythinker build`: raw questions + teacher responses -> a data set folder laid out like a Hub repo.

    README.md                                  card: YAML `configs` + provenance and counts
    data/{dataset}-{variant}/{split}-00000-of-00001-{digest}.parquet   (digest: of the file's bytes)

Steps: load and split the questions (``sources``), read the responses (``teacher/responses``),
parse and select (``teacher/select``), then for every variant run the data set's ``datasets``
builder (``download_and_prepare`` into parquet) inside a staged folder that replaces ``out`` in one
rename, so an interrupted build leaves nothing behind. Same inputs and seed give byte-identical
parquet files (and the same names; new rows get new names, so ``datasets`` never loads a rebuilt
folder from its cache of the old one: see ``tinythinker.artifacts``).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tinythinker import __version__
from tinythinker.artifacts import check_output_folder, configs_metadata, interrupts_deferred, place_split, staged_folder, write_card
from tinythinker.cards import render_card
from tinythinker.data.builder import CITATION, builder_class
from tinythinker.errors import TinyThinkerError
from tinythinker.progress import progress_bar
from tinythinker.protocol import REJECT_REASONS, config_name, config_parts
from tinythinker.data.records import BASELINE_PAPERS, EVAL_SPLITS, all_configs
from tinythinker.data.sources import QuestionSet, get_spec, load_questions
from tinythinker.data.teacher.requests import prompt_hash
from tinythinker.data.teacher.responses import TeacherResponses, read_responses
from tinythinker.data.teacher.select import (
    FAILED_REQUEST,
    NO_ACCEPTED_SAMPLE,
    NO_RESPONSE,
    REJECT_DISAGREES,
    Selection,
    next_round_requests,
    select_rationales,
    write_request_file,
)


SPLIT_RULES = {
    "csqa": "train = official train minus a random {validation} questions (the size of the official dev set), "
    "which become validation; test = official dev",
    "obqa": "the official train / dev / test splits",
    "strategyqa": "the de-duplicated official train questions shuffled and cut 80 / 10 / 10",
}
# csqa whose train file marks its validation questions (the generated world: sources.SPLIT_KEY)
MARKED_VALIDATION_RULE = ("train = the train file minus the {validation} questions it marks as validation (the generated "
                          "world's held-out pairs; real data draws them at random), which become validation; test = the dev file")


@dataclass
class BuildResult:
    out: Path
    questions: QuestionSet
    responses: TeacherResponses  # files, models, sampling, counts (per-question samples are released)
    selection: Selection
    counts: dict[str, dict[str, int]]  # config -> split -> rows
    next_round_file: Path | None = None


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets' own tqdm bars would interleave with ours; switch them off for the build."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def write_configs(
    folder: Path, questions: QuestionSet, selection: Selection, *, reference_order: bool = False, progress=None
) -> dict[str, dict[str, int]]:
    """Run the data set's builder for every variant into ``folder`` (Hub layout); -> row counts."""
    progress = progress or progress_bar(enabled=False)
    make_builder = builder_class(questions.dataset)
    work = folder / ".build"
    counts: dict[str, dict[str, int]] = {}
    configs = all_configs(questions.dataset)
    task = progress.add_task("writing configs", total=sum(map(len, configs.values())))
    with _quiet_datasets():
        for config, splits in configs.items():
            builder = make_builder(
                questions=questions,
                selection=selection,
                reference_order=reference_order,
                config_name=config,
                cache_dir=str(work / "cache"),
            )
            prepared = work / config
            with interrupts_deferred():  # a Ctrl-C takes effect after this config (inside datasets' parquet writer it aborts)
                builder.download_and_prepare(output_dir=str(prepared), file_format="parquet", max_shard_size="100GB")
            counts[config] = {}
            for split in splits:
                place_split(prepared / f"{builder.dataset_name}-{split}.parquet", folder, config, split)
                counts[config][split] = builder.info.splits[split].num_examples
                progress.advance(task)
    shutil.rmtree(work)
    return counts


def _teacher_provenance(dataset: str, responses: TeacherResponses, selection: Selection) -> dict:
    """The card's record of the teacher: model(s), sampling settings (one value, or counts of each), prompt, files."""
    sampling = {
        key: dict(sorted(counter.items())) if len(counter) > 1 else next(iter(counter), None)
        for key, counter in (("temperature", responses.temperatures), ("max_tokens", responses.max_tokens), ("n", responses.n))
    }
    return {"model": selection.teacher_model, "models": dict(sorted(responses.models.items())), "sampling": sampling,
            "prompt_hash": prompt_hash(dataset), "response_files": [Path(f).name for f in responses.files],
            "rounds": responses.rounds}


def card_context(
    folder: Path,
    result_counts: dict[str, dict[str, int]],
    questions: QuestionSet,
    responses: TeacherResponses,
    selection: Selection,
    *,
    reference_order: bool,
    load_path: str,
) -> tuple[dict, dict]:
    """(YAML metadata, template context) of a data set card."""
    spec = get_spec(questions.dataset)
    local = Path(questions.source).exists()  # else a Hub id
    # a local path is shortened to its last two parts: the card must not publish the builder's file system
    source_name = "/".join(Path(questions.source).parts[-2:]) if local else questions.source
    source = f"local folder `{source_name}` (original release files)" if local else f"`{questions.source}`"
    teacher = _teacher_provenance(questions.dataset, responses, selection)
    sampling = teacher["sampling"]
    selection_counts = {split: tally.to_dict() for split, tally in selection.counts.items()}
    provenance = {
        "dataset": questions.dataset,
        "source": f"local:{source_name}" if local else questions.source,
        "source_revision": questions.source_revision,
        "seed": questions.seed,
        "splits": questions.sizes(),
        "raw_counts": questions.raw_counts,
        "merged_duplicates": [list(pair) for pair in questions.merged_duplicates],
        "teacher": teacher,
        "reference_order": reference_order,
        "num_augment": selection.num_augment,
        "counts": result_counts,
        "selection": selection_counts,
        "label_corrections": {qid: list(pair) for qid, pair in sorted(selection.corrections.items())},
        "needs_round": {"questions": len(selection.needs_round), "missing_samples": sum(n.missing for n in selection.needs_round)},
        "tinythinker_version": __version__,
    }
    metadata = {
        "pretty_name": f"TinyThinker {questions.dataset} coarse-to-fine rationales",
        "license": spec.license,
        "language": ["en"],
        "task_categories": ["question-answering"],
        "tags": ["tinythinker", "rationale-distillation", "chain-of-thought", questions.dataset],
        **configs_metadata(folder, result_counts, default=config_name(questions.dataset, "full")),
        "tinythinker": provenance,
    }
    split_names = []  # the training splits of every config, then validation and test
    for splits in result_counts.values():
        split_names += [s for s in splits if s not in split_names and s not in EVAL_SPLITS]
    split_names += [s for s in EVAL_SPLITS if any(s in splits for splits in result_counts.values())]
    reasons = list(REJECT_REASONS) + [REJECT_DISAGREES]
    context = dict(
        dataset=questions.dataset,
        load_path=load_path,
        split_names=split_names,
        counts=result_counts,
        reference_order=reference_order,
        selection=selection.counts,
        question_counts=questions.sizes(),
        seed=questions.seed,
        split_rule=(MARKED_VALIDATION_RULE if questions.marked_validation else SPLIT_RULES[questions.dataset]).format(**questions.sizes()),
        merged=questions.merged_duplicates,
        reasons=reasons + sorted({r for t in selection.counts.values() for r in t.rejected} - set(reasons)),
        missing_reasons=[NO_RESPONSE, FAILED_REQUEST, NO_ACCEPTED_SAMPLE],
        needs_round=len(selection.needs_round),
        missing_samples=sum(n.missing for n in selection.needs_round),
        source=source,
        source_revision=questions.source_revision,
        license=spec.license,
        teacher_model=f"`{selection.teacher_model}`" if selection.teacher_model else "not recorded in the responses",
        sampling=", ".join(f"{k} {v}" for k, v in sampling.items() if v is not None) or "not recorded in the responses",
        prompt_hash=teacher["prompt_hash"],
        response_files=[f"`{Path(f).name}`" for f in responses.files],
        version=__version__,
        citation=CITATION,
        baselines=[{"config": config, **BASELINE_PAPERS[config_parts(config)[1]]} for config in result_counts
                   if config_parts(config)[1] in BASELINE_PAPERS],
    )
    return metadata, context


def check_split_seed(teacher: TeacherResponses, seed: int) -> None:
    """Refuse a ``--seed`` whose splits differ from those the teacher was asked about: questions it was
    paid for would become validation or test questions (``tinythinker teach`` records its seed in
    each line as ``split_seed``; lines without one, as from other tools, are not checked)."""
    asked = sorted(teacher.split_seeds)
    if not asked or asked == [seed]:
        return
    if len(asked) == 1:
        raise TinyThinkerError(
            f"the teacher was asked about the questions of the --seed {asked[0]} splits (teach --seed {asked[0]}), "
            f"and --seed {seed} splits them otherwise: paid-for training questions would become validation or "
            f"test questions; build with --seed {asked[0]}"
        )
    counts = ", ".join(f"--seed {value}: {teacher.split_seeds[value]:,} lines" for value in asked)
    raise TinyThinkerError(
        f"the responses were asked from the splits of several seeds ({counts}); build them separately, each "
        "with its own --seed, or ask the teacher again with one --seed"
    )


def build_dataset(
    dataset: str,
    raw: str | Path | None,
    responses: Sequence[str | Path],
    out: str | Path,
    *,
    seed: int = 42,
    revision: str | None = None,
    overwrite: bool = False,
    reference_order: bool = False,
    next_round: str | Path | None = None,
    progress=None,
) -> BuildResult:
    """Build the stage data set folder of ``dataset`` at ``out`` (see the module docstring).

    ``revision``: of a Hub ``raw``, the branch, tag or commit id to read (default main).
    ``next_round``: where to write the Batch-API request lines of the questions that need another
    teacher round (written even when empty, so a round loop can tell it is done)."""
    get_spec(dataset)
    out = Path(out)
    check_output_folder(out, overwrite=overwrite)  # before any slow work (staged_folder checks again)
    progress = progress or progress_bar(enabled=False)
    questions = load_questions(dataset, raw, seed=seed, revision=revision)
    files = [Path(p) for p in responses]
    read_task = progress.add_task("reading responses", total=len(files))
    teacher = read_responses(files, questions, on_file=lambda _: progress.advance(read_task))
    check_split_seed(teacher, seed)
    select_task = progress.add_task("parsing and selecting", total=sum(questions.sizes().values()))
    selection = select_rationales(questions, teacher, seed=seed, on_question=lambda: progress.advance(select_task))
    teacher.by_question.clear()  # the sample texts are parsed now: free them before writing
    if not selection.counts["train"].with_rationales:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(selection.counts["train"].rejected.items())) or "none"
        raise TinyThinkerError(
            f"no training question of {dataset} has a usable teacher rationale (rejected samples: {rejected}); "
            "check that --responses holds the teacher's answers for these questions"
        )
    with staged_folder(out, overwrite=overwrite) as folder:
        counts = write_configs(folder, questions, selection, reference_order=reference_order, progress=progress)
        metadata, context = card_context(
            folder, counts, questions, teacher, selection, reference_order=reference_order, load_path=f"path/to/{out.name}"
        )
        write_card(folder, metadata, render_card("dataset.md.j2", **context))
        # inside the staged folder: if the request file cannot be written, no data set appears either
        next_round_file = write_request_file(next_round, next_round_requests(selection, questions)) if next_round else None
    return BuildResult(out, questions, teacher, selection, counts, next_round_file)
