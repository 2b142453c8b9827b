"""`tinythinker eval` (lm-eval with the `tinythinker` model registered) and `tinythinker report`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(
    "eval",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog="Every other argument goes to lm_eval unchanged (e.g. --tasks, --model hf, --model_args seed=7, --metadata, --seed).",
)
@click.option("--student", help="Student checkpoint folder or Hub id: runs --model tinythinker with pretrained=STUDENT.")
@click.option("--student-revision", help="Of a Hub --student: branch, tag or commit id (default main), pinned to its commit.")
@click.option("--data", help="Data set folder made by `tinythinker build`, a Hub id, or world (the generated world; lm-eval --metadata data=...).")
@click.option("--revision", help="Of a Hub --data: branch, tag or commit id (default main); the results name the commit read.")
@click.option("--config", help="{dataset}-{variant}, e.g. csqa-full: the tasks to run (full: pipeline + both oracles).")
@click.option("--split", help="Split to evaluate (default test).")
@click.option("--output-path", type=click.Path(file_okay=False), help="Results folder (per-question samples logged; a rerun resumes).")
@click.option("--limit", type=float, help="Only the first N questions per task (a fraction below 1: that share).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Sequences per generation batch (default 64): the tinythinker model's gen_batch_size; lm-eval's --batch_size for other models.")
@click.option("--device", help="cuda, cuda:0, cpu ... (default: cuda when available).")
@click.option("--self-consistency", is_flag=True, help="Also run the self-consistency task (5 sampled traces, majority vote).")
@click.pass_context
def eval_command(ctx, student, student_revision, data, revision, config, split, output_path, limit, batch_size, device,
                 self_consistency):
    """Evaluate with lm-eval: `tinythinker eval LM_EVAL_ARGS...` is `lm_eval run LM_EVAL_ARGS...` that also
    knows --model tinythinker and the TinyThinker tasks (eval_tasks/), without indexing lm-eval's
    ~14,000 built-in task files (only when a task is none of the included ones). Same output files."""
    from ..errors import TinyThinkerError
    from ..evaluation import lm_eval_argv, run_lm_eval
    from ..hub import pin

    if revision is not None and (not data or data in ("demo", "world")):
        raise TinyThinkerError("--revision pins the Hub data set given with --data; pass --data ORG/NAME too")
    if student_revision is not None and not student:
        raise TinyThinkerError("--student-revision pins the Hub student given with --student; pass --student ORG/NAME too")
    options = dict(student=student, data=data, config=config, split=split, output_path=output_path, limit=limit,
                   batch_size=batch_size, device=device, self_consistency=self_consistency)
    lm_eval_argv(ctx.args, **options)  # the options' own mistakes first, before any Hub call
    # the commits read, resolved once here so that every task reads the same one and the results name it
    data_commit = pin(data, revision) if data and data not in ("demo", "world") else None
    student_commit = pin(student, student_revision, repo_type="model") if student else None
    argv = lm_eval_argv(ctx.args, **options, data_revision=data_commit, student_revision=student_commit)
    results = run_lm_eval(argv)
    if output_path is not None and results is not None:  # None: another process of a multi-process run
        click.echo(f"results in {output_path}; tables and plots: tinythinker report {output_path} --plots {Path(output_path) / 'plots'}", err=True)


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--compare", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Another student's results folder, shown side by side (repeatable).")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), help="Folder for PNG plots.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the tables as markdown (model cards).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write everything as JSON.")
def report(results, compare, plots, markdown, json_path):
    """Tables (data set x stage x iteration, students side by side), plots, markdown and JSON from
    lm-eval result folders (run with --log_samples for the stage attribution). The training runs of
    the students (their metrics.jsonl), or run folders given directly, add training curves (--plots)."""
    from rich.console import Console

    from ..artifacts import atomic_write_text
    from ..report import build_report, render_markdown, render_plots, render_tables, to_json

    data = build_report(list(results), list(compare))
    console = Console()
    render_tables(data, console)
    if plots is not None:
        for path in render_plots(data, plots):
            console.print(f"plot: {path}")
    if markdown is not None:
        atomic_write_text(markdown, render_markdown(data, plots, markdown))
        console.print(f"markdown: {markdown}")
    if json_path is not None:
        atomic_write_text(json_path, to_json(data))
        console.print(f"json: {json_path}")
