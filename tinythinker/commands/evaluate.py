"""`tinythinker eval` (lm-eval with the `tinythinker` model registered) and `tinythinker report`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from tinythinker.commands.options import FiniteFloatRange

from tinythinker.commands import options


@click.command(
    "eval",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog="Every other argument goes to lm_eval unchanged (e.g. --tasks, --model hf, --model_args seed=7, --metadata, --seed).",
)
@options.deprecated("--output-path", "--out", param="out", type=click.Path(file_okay=False))
@options.deprecated("--batch-size", "--gen-batch-size", param="gen_batch_size", type=click.IntRange(min=1))
@click.option("--student", help="Student checkpoint folder or Hub id: runs --model tinythinker with pretrained=STUDENT.")
@click.option("--student-revision", help="Of a Hub --student: branch, tag or commit id (default main), pinned to its commit.")
@click.option("--data", help="Data set folder made by `tinythinker build`, a Hub id, or world (the generated world; lm-eval --metadata data=...).")
@click.option("--revision", help="Of a Hub --data: branch, tag or commit id (default main); the results name the commit read.")
@click.option("--config", help="{dataset}-{variant}, e.g. csqa-full: the tasks to run (full: pipeline + both oracles).")
@click.option("--split", help="Split to evaluate (default test).")
@click.option("--out", type=click.Path(file_okay=False), help="Results folder (per-question samples logged; a rerun resumes).")
@click.option("--limit", type=FiniteFloatRange(min=0, min_open=True),
              help="Only the first N questions per task (a fraction below 1: that share).")
@options.gen_batch_size(default=None, help="Sequences per generation batch (default: sized by memory): the tinythinker model's gen_batch_size; "
                                           "lm-eval's --batch_size for other models.")
@click.option("--device", help="cuda, cuda:0, cpu ... (default: cuda when available).")
@click.option("--self-consistency", is_flag=True, help="Also run the self-consistency task (5 sampled traces, majority vote).")
@options.progress
@click.pass_context
def eval_command(ctx, student, student_revision, data, revision, config, split, out, limit, gen_batch_size, device,
                 self_consistency, progress):
    """Evaluate with lm-eval: `tinythinker eval LM_EVAL_ARGS...` is `lm_eval run LM_EVAL_ARGS...` that also
    knows --model tinythinker and the TinyThinker tasks (eval_tasks/), without indexing lm-eval's
    ~14,000 built-in task files (only when a task is none of the included ones). Same output files."""
    from tinythinker.errors import TinyThinkerError
    from tinythinker.evaluate.harness import lm_eval_argv, run_lm_eval
    from tinythinker.hub import pin

    if revision is not None and (not data or data in ("demo", "world")):
        raise TinyThinkerError("--revision pins the Hub data set given with --data; pass --data ORG/NAME too")
    if student_revision is not None and not student:
        raise TinyThinkerError("--student-revision pins the Hub student given with --student; pass --student ORG/NAME too")
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"  # lm-eval's own bars (tqdm reads it); the engine's go with progress=False
    settings = dict(student=student, data=data, config=config, split=split, output_path=out, limit=limit,
                    batch_size=gen_batch_size, device=device, self_consistency=self_consistency, progress=progress)
    lm_eval_argv(ctx.args, **settings)  # the options' own mistakes first, before any Hub call
    # the commits read, resolved once here so that every task reads the same one and the results name it
    data_commit = pin(data, revision) if data and data not in ("demo", "world") else None
    student_commit = pin(student, student_revision, repo_type="model") if student else None
    argv = lm_eval_argv(ctx.args, **settings, data_revision=data_commit, student_revision=student_commit)
    results = run_lm_eval(argv)
    if out is not None and results is not None:  # None: another process of a multi-process run
        click.echo(f"results in {out}; tables and plots: tinythinker report {out} --out {Path(out) / 'report'}", err=True)


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--compare", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Another student's results folder, shown side by side (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write report.md (the tables, for model cards), report.json and the PNG plots into.")
# a bare --json is the flag; --json FILE, its old meaning, still writes FILE for one release
@click.option("--json", "as_json", is_flag=False, flag_value="-", default=None, metavar="",
              help="Print everything as one JSON object on stdout instead of the tables.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), hidden=True)  # deprecated: --out
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), hidden=True)  # deprecated: --out
def report(results, compare, out, as_json, plots, markdown):
    """Tables (data set x stage x iteration, students side by side), plots, markdown and JSON from
    lm-eval result folders (run with --log_samples for the stage attribution). The training runs of
    the students (their metrics.jsonl), or run folders given directly, add training curves (--out)."""
    from rich.console import Console

    from tinythinker.artifacts import atomic_write_text
    from tinythinker.evaluate.report import JSON_FILE, MARKDOWN_FILE, build_report, render_markdown, render_plots, render_tables, to_json

    for old, given in (("--plots DIR", plots), ("--markdown FILE", markdown), ("--json FILE", as_json not in (None, "-"))):
        if given:
            options.warn_deprecated(old, "use --out DIR (or --json > FILE)" if old == "--json FILE" else "use --out DIR")
    json_file = None if as_json in (None, "-") else Path(as_json)
    as_json = as_json == "-"
    data = build_report(list(results), list(compare))
    console = Console(stderr=as_json)  # stdout holds only the JSON
    if as_json:
        click.echo(to_json(data))
    else:
        render_tables(data, console)
    if out is not None:
        plots, markdown, json_file = out, out / MARKDOWN_FILE, out / JSON_FILE
    if plots is not None:
        for path in render_plots(data, plots):
            console.print(f"plot: {path}")
    if markdown is not None:
        atomic_write_text(markdown, render_markdown(data, plots, markdown))
        console.print(f"markdown: {markdown}")
    if json_file is not None:
        atomic_write_text(json_file, to_json(data))
        console.print(f"json: {json_file}")
