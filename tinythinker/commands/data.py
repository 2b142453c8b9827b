"""`tinythinker build`, `inspect` and `push`: make, look at and publish the stage data sets.

Heavy libraries (datasets, pyarrow, huggingface_hub) are imported inside the commands.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from tinythinker.commands.options import FiniteFloatRange
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import config_name
from tinythinker.data.sources import DATASETS
from tinythinker.commands import options

console = Console(stderr=True)
# Tables are wider than 80 columns: give pipes and files room instead of truncating the names.
out_console = Console(width=None if sys.stdout.isatty() else 140)


def _progress(enabled: bool = True):
    from tinythinker.progress import progress_bar

    # transient (and off when stderr is not a terminal): an error stays the single line on stderr
    return progress_bar(console=console, enabled=enabled and console.is_terminal, transient=True)


def _say(text: str) -> None:
    """A plain line on stdout: no wrapping, no markup (paths may hold brackets)."""
    out_console.print(text, soft_wrap=True, markup=False, highlight=False)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _counts_table(title: str, counts: dict[str, dict[str, int]]) -> Table:
    splits: list[str] = []
    for sizes in counts.values():
        splits += [s for s in sizes if s not in splits]
    table = Table(title=escape(title))
    table.add_column("config")
    for split in splits:
        table.add_column(split, justify="right")
    for config, sizes in counts.items():
        table.add_row(config, *(f"{sizes[s]:,}" if s in sizes else "" for s in splits))
    return table


def _selection_table(selection: dict[str, dict]) -> Table:
    """Samples and questions by outcome, per split (from Selection.counts or the card metadata)."""
    table = Table(title="teacher samples and questions")
    table.add_column("")
    for split in selection:
        table.add_column(split, justify="right")
    rows = [("questions", "questions"), ("with rationales", "with_rationales"), ("requests", "requests"),
            ("failed requests", "failed_requests"), ("samples", "samples"), ("accepted", "accepted"),
            ("agreeing with label", "kept"), ("selected", "selected"), ("surplus", "surplus"),
            ("label corrections", "label_corrections")]
    for label, key in rows:
        table.add_row(label, *(f"{c[key]:,}" for c in selection.values()))
    reasons = sorted({r for c in selection.values() for r in c["rejected"]})
    for reason in reasons:
        table.add_row(f"rejected: {reason}", *(f"{c['rejected'].get(reason, 0):,}" for c in selection.values()))
    missing = sorted({r for c in selection.values() for r in c["without_rationales"]})
    for reason in missing:
        table.add_row(f"no rationale: {reason}", *(f"{c['without_rationales'].get(reason, 0):,}" for c in selection.values()))
    return table


@click.command()
@click.argument("dataset", type=click.Choice(sorted(DATASETS)))
@click.option("--raw", help="Folder with the original release files, or a Hub id (default: the data set's Hub id).")
@click.option("--revision", default=None, help="Of a Hub --raw: branch, tag or commit id (default main); the card names the commit read.")
@click.option("--responses", "responses", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Teacher responses (JSONL, optionally .gz); repeat once per teacher round, in round order.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (laid out like a Hub dataset repo).")
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True,
              help="Seed of the splits and of the diversity fill.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--reference-order", is_flag=True,
              help="List analyses in the teacher's order (as the reference did) instead of label order.")
@click.option("--next-round", type=click.Path(path_type=Path),
              help="Write the Batch-API requests of the questions that need another teacher round here.")
@options.progress
def build(dataset, raw, revision, responses, out, seed, overwrite, reference_order, next_round, progress):
    """Turn teacher responses into the stage data set of DATASET (configs DATASET-full, -no_recall,
    -no_analyze, -summarize_only)."""
    from tinythinker.data.build import build_dataset

    with _progress(progress) as bar:
        result = build_dataset(dataset, raw, responses, out, seed=seed, revision=revision, overwrite=overwrite,
                               reference_order=reference_order, next_round=next_round, progress=bar)
    out_console.print(_counts_table(f"{out}: records per config and split", result.counts))
    out_console.print(_selection_table({s: c.to_dict() for s, c in result.selection.counts.items()}))
    needs = result.selection.needs_round
    line = f"{len(needs)} training question(s) need another teacher round ({sum(n.missing for n in needs)} samples missing)"
    if result.next_round_file is not None:
        line += f"; requests written to {result.next_round_file}"
    _say(line)
    _say(f"load with: datasets.load_dataset({str(out)!r}, {config_name(dataset, 'full')!r})")


def _read_rows(path: Path, limit: int) -> list[dict]:
    from tinythinker.artifacts import open_parquet

    return open_parquet(path).read_row_group(0).slice(0, limit).to_pylist()


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--examples", type=click.IntRange(min=0), default=1, show_default=True,
              help="Example records to show per training split.")
def inspect(folder, examples):
    """Summarise a data set folder: configs, split sizes, rejection reasons, a few examples."""
    from tinythinker.artifacts import open_parquet, read_card_metadata

    if not folder.is_dir():
        raise TinyThinkerError(f"{folder}: no such folder; pass a folder written by `tinythinker build`")
    metadata = read_card_metadata(folder)
    configs = metadata.get("configs")
    if not configs:
        raise TinyThinkerError(f"{folder}: not a data set folder (no README.md with `configs`); pass a folder written by `tinythinker build`")
    counts: dict[str, dict[str, int]] = {}
    for config in configs:
        counts[config["config_name"]] = {}
        for entry in config.get("data_files", []):
            path = folder / entry["path"]
            if not path.is_file():
                raise TinyThinkerError(f"{path}: listed in README.md but missing; rebuild the folder")
            counts[config["config_name"]][entry["split"]] = open_parquet(path).metadata.num_rows
    info = metadata.get("tinythinker", {})
    if info:
        teacher = info.get("teacher", {})
        out_console.print(Text(str(metadata.get("pretty_name", folder.name)), style="bold"))
        _say(
            f"source {info.get('source')} ({info.get('source_revision')}), seed {info.get('seed')}, "
            f"questions {info.get('splits')}, teacher {teacher.get('model')} {teacher.get('sampling')}, "
            f"prompt {teacher.get('prompt_hash')}, {'teacher' if info.get('reference_order') else 'label'} order"
        )
        if info.get("merged_duplicates"):
            _say(f"merged duplicate questions: {len(info['merged_duplicates'])}")
    out_console.print(_counts_table(f"{folder}: records per config and split", counts))
    if info.get("selection"):
        out_console.print(_selection_table(info["selection"]))
        needs = info.get("needs_round", {})
        _say(f"{needs.get('questions', 0)} training question(s) need another teacher round "
             f"({needs.get('missing_samples', 0)} samples missing)")
    first = configs[0]
    for entry in first.get("data_files", []):
        if examples <= 0:
            break
        rows = _read_rows(folder / entry["path"], examples)
        for row in rows:
            table = Table(title=escape(f"{first['config_name']} / {entry['split']}"), show_header=False)
            table.add_column("field", style="bold")
            table.add_column("value", overflow="fold")
            for key in ("id", "stage", "option", "input", "target", "GT", "teacher_recall"):
                if key in row and row[key] != "":
                    table.add_row(key, Text(str(row[key])))
            out_console.print(table)


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--repo", required=True, help="Hub repo id, ORG/NAME (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded, with sizes; send nothing.")
@options.progress
def push(folder, repo, private, dry_run, progress):
    """Upload an artifact folder (data set, preference set or checkpoint) to the Hugging Face Hub."""
    from tinythinker.hub import plan_push, push_folder

    plan = plan_push(folder, repo, private=private)
    if plan.skipped:
        _say(f"skipping {len(plan.skipped)} link(s) that point outside {folder} (a push would upload their targets): "
             + ", ".join(plan.skipped[:5]) + (", ..." if len(plan.skipped) > 5 else ""))
    if dry_run:
        table = Table(title=escape(f"dry run: would upload {len(plan.files)} files ({_size(plan.total_bytes)}) to "
                                   f"{plan.repo_type} repo {repo}{' (private)' if private else ''}"))
        table.add_column("path")
        table.add_column("size", justify="right")
        for path, size in plan.files:
            table.add_row(Text(path), _size(size))
        out_console.print(table)
        return
    uploading = f"uploading {len(plan.files)} files ({_size(plan.total_bytes)}) to {repo}"
    with console.status(uploading) if progress else contextlib.nullcontext():
        result = push_folder(folder, repo, private=private)
    if not result.changed:
        _say(f"nothing to push: {result.url} already holds these {len(plan.files)} files at commit {result.commit} "
             "(no new commit was made)")
        return
    _say(f"pushed {len(plan.files)} files ({_size(plan.total_bytes)}) to {result.url} (commit {result.commit}; "
         "pass it to --revision to read exactly this version)")


@click.command()
@click.argument("dataset", type=click.Choice(sorted(DATASETS)))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write: raw/ (original release format), teacher.jsonl, world.json.")
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True,
              help="Seed of the world (names, facts, questions, teacher).")
@click.option("--questions", type=click.IntRange(min=1), default=None,
              help="(entity, relation) pairs, 8 per entity [default: 800]; training pairs are asked in 3 variants.")
@click.option("--defects", type=FiniteFloatRange(0, 1, max_open=True), default=None,
              help="Share of defective teacher samples, so cards show rejections [default: 0.03].")
@click.option("--letters", type=click.Choice(["fixed", "shuffled"]), default="fixed", show_default=True,
              help="fixed: each value always under the same letter (what a tiny student learns in minutes); "
                   "shuffled: anywhere, so the letter must be read from the options (needs far longer training).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def world(dataset, out, seed, questions, defects, letters, overwrite):
    """Write a learnable invented world in DATASET's release format, with a teacher's responses.

    Two-hop questions about invented entities (an entity is a kind; a kind has properties), whose
    facts are all taught in training rationales while held-out combinations are never asked there.
    Build it with: tinythinker build DATASET --raw OUT/raw --responses OUT/teacher.jsonl --out ..."""
    import json

    from tinythinker.data.world import DEFAULT_DEFECTS, DEFAULT_QUESTIONS, write_world

    folder = write_world(dataset, out, seed=seed, questions=questions or DEFAULT_QUESTIONS,
                         defects=DEFAULT_DEFECTS if defects is None else defects, letters=letters, overwrite=overwrite)
    meta = json.loads((folder / "world.json").read_text(encoding="utf-8"))
    files = ", ".join(f"{split} {n:,}" for split, n in meta["files"].items())
    _say(f"world of {meta['entities']} entities x {len(meta['relations'])} relations ({meta['kinds']} kinds), seed {seed}: "
         f"{meta['questions']:,} questions ({files}) in {folder}")
    _say(f"next: tinythinker build {dataset} --raw {folder / 'raw'} --responses {folder / 'teacher.jsonl'} --out DATA_FOLDER")
