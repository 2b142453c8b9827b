"""`tinythinker student init` (a tiny student for tests and demos) and `tinythinker infer` (the
three-stage pipeline over a data set split, traces to JSONL). Heavy imports live inside the commands.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import click

from tinythinker.commands.options import FiniteFloatRange

from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import VARIANTS, config_parts
from tinythinker.commands import options

CHUNK_QUESTIONS = 256  # questions per resumable chunk of `infer` (each chunk is batched across stages)


def _quiet_libraries() -> None:
    """No download/loading bars from transformers and datasets: our own bar says what happens."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@click.group("student")
def student():
    """Make students (models the recipe trains)."""


@student.command("init")
@options.deprecated("--tiny", reason="students are tiny by default (the only kind made here)", is_flag=True)
@click.option("--kind", type=click.Choice(["seq2seq", "causal"]), default="seq2seq", show_default=True,
              help="seq2seq: T5-style encoder-decoder; causal: Llama-style decoder-only.")
@click.option("--data", required=True, help="Stage data set folder or Hub id whose texts train the tokenizer.")
@click.option("--revision", default=None, help="Of a Hub --data: branch, tag or commit id (default main).")
@click.option("--config", default=None, help="Only this config's texts (default: every config).")
@click.option("--shape", type=click.Choice(["tiny", "t5-small"]), default="tiny", show_default=True,
              help="tiny: trains in seconds on a CPU; t5-small: google-t5/t5-small's shape (benchmarks).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random weights.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def init(kind, data, revision, config, shape, seed, out, overwrite):
    """Write a tiny randomly initialised student whose tokenizer is trained on a stage data set (to train
    a real model, pass its Hub id, e.g. google-t5/t5-small, to `tinythinker train sft --student`)."""
    from tinythinker.artifacts import check_output_folder

    check_output_folder(out, overwrite=overwrite)  # before any slow work (staged_folder checks again)
    _quiet_libraries()
    from tinythinker.artifacts import staged_folder, write_card
    from tinythinker.hub import pin
    from tinythinker.data.splits import tokenizer_texts
    from tinythinker.students import make_tiny_student

    commit = pin(data, revision)
    texts = tokenizer_texts(data, config, commit)
    with staged_folder(out, overwrite=overwrite) as folder:
        make_tiny_student(kind, texts, folder, seed=seed, shape=shape)
        front = {"library_name": "transformers", "tags": ["tinythinker", "random-weights"],
                 "pipeline_tag": "text2text-generation" if kind == "seq2seq" else "text-generation"}
        body = (f"# Untrained {shape} {kind} TinyThinker student\n\n"
                f"Random weights (seed {seed}); byte-level BPE tokenizer trained on {len(texts)} distinct texts of "
                f"`{data}`{f' at commit `{commit}`' if commit else ''}{f' config `{config}`' if config else ''}.\n\n"
                f"Train it with `tinythinker train sft --student {out}`.\n")
        write_card(folder, front, body)
    click.echo(f"wrote {kind} student ({shape}, tokenizer from {len(texts)} texts) to {out}")


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _read_partial(path: Path, key: str) -> dict[int, list[dict]]:
    """{chunk index: trace rows} of the finished chunks of an interrupted run with the same settings.

    The file is a header line then one line per finished chunk; a line torn by a kill is dropped."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        if json.loads(lines[0]).get("settings_key") != key:
            return {}
    except (IndexError, json.JSONDecodeError, AttributeError):
        return {}
    chunks = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            chunks[int(entry["chunk"])] = list(entry["traces"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return chunks


def _partial_line(**entry) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"


@click.command("infer")
@options.deprecated("--batch-size", "--gen-batch-size", param="gen_batch_size", type=click.IntRange(min=1))
@click.option("--student", "student_name", required=True, help="Student checkpoint folder or Hub id.")
@click.option("--student-revision", default=None, help="Of a Hub --student: branch, tag or commit id (default main).")
@click.option("--data", required=True, help="Stage data set folder or Hub id.")
@click.option("--revision", default=None,
              help="Of a Hub --data: branch, tag or commit id (default main); the summary names the commit read.")
@click.option("--config", required=True, help="Data set config, e.g. csqa-full.")
@click.option("--split", default="test", show_default=True, help="Split to answer.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Traces JSONL to write (a .summary.json goes beside it).")
@click.option("--variant", type=click.Choice(VARIANTS), default=None,
              help="Stages to run (default: from the config name, e.g. csqa-no_recall -> no_recall).")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs per question; more than 1 samples recall/analyze and votes (self-consistency).")
@click.option("--temperature", type=FiniteFloatRange(min=0, min_open=True), default=0.7, show_default=True,
              help="Sampling temperature (with --samples > 1).")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="Top-k cut when sampling (0: none).")
@options.gen_batch_size()
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (CUDA; CPUs with bf16 support).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N questions.")
@click.option("--oracle", type=click.Choice(["none", "recall", "analyses", "both"]), default="none", show_default=True,
              help="Use the teacher's recall and/or analyses from the data set instead of the student's.")
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@options.progress
def infer(student_name, student_revision, data, revision, config, split, out, variant, samples, temperature, top_k,
          gen_batch_size, bf16, limit, oracle, seed, device, overwrite, progress):
    """Answer a split with the three-stage pipeline; write traces and print accuracy.

    Work is done in chunks of questions; an interrupted run resumes from its last finished chunk."""
    if out.is_dir():  # checked first: a folder would fail only at the end, after the whole inference
        raise TinyThinkerError(f"{out}: is a folder; --out names the traces JSONL file to write (e.g. {out / 'traces.jsonl'})")
    if out.exists() and not overwrite:
        raise TinyThinkerError(f"{out}: exists; pass --overwrite to replace it or choose another --out")
    _quiet_libraries()
    from tinythinker.artifacts import atomic_write_text
    from tinythinker.hub import pin
    from tinythinker.data.splits import items_from_dataset, oracles_from_dataset
    from tinythinker.evaluate.engine import Sampling, Trace, accuracy, run_pipeline
    from tinythinker.students import Student

    data_commit = pin(data, revision)
    student_commit = pin(student_name, student_revision, repo_type="model")
    items = items_from_dataset(data, config, split, data_commit)[:limit]
    if variant is None:
        variant = config_parts(config)[1]
        if variant is None:
            raise TinyThinkerError(f"cannot tell the variant from config {config!r}; pass --variant ({', '.join(VARIANTS)})")
    given_recalls, given_analyses = oracles_from_dataset(data, config, split, data_commit) if oracle != "none" else ({}, {})
    if oracle in ("none", "analyses"):
        given_recalls = {}
    if oracle in ("none", "recall"):
        given_analyses = {}
    if oracle != "none" and not (given_recalls or given_analyses):
        raise TinyThinkerError(f"{data} {config}/{split}: no teacher texts for --oracle {oracle}; build the data set with teacher responses for this split")
    loaded = Student.load(student_name, device=device, bf16=bf16, revision=student_commit)
    sampling = Sampling(do_sample=samples > 1, temperature=temperature, top_k=top_k)

    settings = {"student": str(student_name), "student_revision": student_commit, "data": str(data),
                "data_revision": data_commit, "config": config, "split": split, "variant": variant,
                "samples": samples, "sampling": vars(sampling), "seed": seed, "batch_size": gen_batch_size, "bf16": bf16,
                "oracle": oracle, "questions": [item.id for item in items]}
    key = _settings_key(settings)
    partial = out.with_name(f".{out.name}.partial")
    finished = _read_partial(partial, key)
    # rewrite with the finished chunks only, so appended lines never follow a torn one
    atomic_write_text(partial, _partial_line(settings_key=key) + "".join(
        _partial_line(chunk=index, traces=finished[index]) for index in sorted(finished)))
    if finished:
        click.echo(f"resuming: {sum(len(t) for t in finished.values())} traces of {len(finished)} chunks already in {partial}", err=True)
    began, answered = time.perf_counter(), 0
    for index, start in enumerate(range(0, len(items), CHUNK_QUESTIONS)):
        if index in finished:
            continue
        traces = run_pipeline(loaded, items[start : start + CHUNK_QUESTIONS], variant=variant, samples=samples,
                              sampling=sampling, batch_size=gen_batch_size, seed=seed + index, progress=progress,
                              given_recalls=given_recalls, given_analyses=given_analyses)
        finished[index] = [t.to_dict() for t in traces]
        answered += len({t.id for t in traces})
        with partial.open("a", encoding="utf-8") as handle:
            handle.write(_partial_line(chunk=index, traces=finished[index]))
    seconds = time.perf_counter() - began
    rows = [row for index in sorted(finished) for row in finished[index]]

    traces = [Trace.from_dict(row) for row in rows]
    scores = accuracy(traces)
    atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    summary = {key_: value for key_, value in settings.items() if key_ != "questions"}
    summary.update(scores, device=str(loaded.device), seconds=round(seconds, 3),
                   questions_per_second=round(answered / seconds, 3) if answered and seconds > 0 else None, traces=out.name)
    atomic_write_text(out.with_name(out.stem + ".summary.json"), json.dumps(summary, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    mode = f"self-consistency over {samples} samples" if samples > 1 else "greedy"
    click.echo(f"accuracy {scores['accuracy']:.4f} on {scores['questions']} questions ({variant}, {mode}); traces in {out}")
