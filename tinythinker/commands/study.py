"""`tinythinker study`: the claims replayed on one generated world, resumable (library: tinythinker.study)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from tinythinker.artifacts import ignore_interrupts
from tinythinker.commands import options
from tinythinker.data.sources import DATASETS
from tinythinker.study import StudySettings

DEFAULTS = StudySettings()


@click.command()
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default=DEFAULTS.dataset, show_default=True,
              help="Which data set's generated world.")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True,
              help="Seed of the world and the first training seed (the others: seed+1, ...).")
@click.option("--seeds", type=click.IntRange(min=1), default=DEFAULTS.seeds, show_default=True, help="Training seeds (K).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("tinythinker-study"), show_default=True,
              help="Study folder; rerunning the same command continues it, skipping finished rows.")
@click.option("--questions", type=click.IntRange(min=1), default=DEFAULTS.questions, show_default=True,
              help="The world's (entity, relation) pairs (tinythinker world --questions).")
@click.option("--sizes", default=",".join(DEFAULTS.sizes), show_default=True,
              help="Training-set sizes as shares of the training questions, comma-separated.")
@click.option("--max-steps", type=click.IntRange(min=1), default=DEFAULTS.max_steps, show_default=True,
              help="The cap on optimizer steps, the same for every row.")
@click.option("--eval-every", type=click.IntRange(min=1), default=DEFAULTS.eval_every, show_default=True,
              help="Validation every N steps, the same for every row.")
@click.option("--patience", type=click.IntRange(min=1), default=DEFAULTS.patience, show_default=True,
              help="A row ends after this many validations without a new best (its accuracy stopped rising).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=DEFAULTS.eval_limit,
              help="Validation questions per evaluation (default: all).")
@click.option("--reflect-iterations", type=click.IntRange(min=0), default=DEFAULTS.reflect_iterations, show_default=True,
              help="Self-reflection iterations from each full student (0: none).")
@click.option("--reflect-train-limit", type=click.IntRange(min=1), default=DEFAULTS.reflect_train_limit, show_default=True,
              help="Training questions sampled per reflection iteration.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Cap on each recall and analysis in validation, sampling and scoring, the same for every row "
                   "(default: the engine's per-stage caps).")
@click.option("--with-4x", "scaled", is_flag=True,
              help="Also the full@4x and cot@4x rows: a student with about 4x the tiny one's parameters (beyond the default budget).")
@options.progress
def study(dataset, seed, seeds, out, questions, sizes, max_steps, eval_every, patience, eval_limit, reflect_iterations, reflect_train_limit,
          max_new_tokens, scaled, progress):
    """Replay the claims on one world: every row (full, no_recall, no_analyze, summarize_only, cot, dsbs) to the same step
    cap at each training-set size and seed, self-reflection from each full student, lm-eval on test; writes
    OUT/claims.json, claims.md and claims.png (mean test accuracy with 95% intervals, full − X paired differences)."""
    from rich.console import Console

    from tinythinker.study import CLAIMS_JSON, CLAIMS_MD, CLAIMS_PNG, run_study

    settings = StudySettings(dataset=dataset, seed=seed, seeds=seeds, questions=questions,
                             sizes=tuple(part for part in sizes.split(",") if part.strip()), max_steps=max_steps,
                             eval_every=eval_every, patience=patience, eval_limit=eval_limit, reflect_iterations=reflect_iterations,
                             reflect_train_limit=reflect_train_limit, scaled=scaled, max_new_tokens=max_new_tokens)
    console = Console(stderr=True)
    command = shlex.join(["tinythinker", "study", *sys.argv[2:]]) if len(sys.argv) > 1 and sys.argv[1] == "study" else ""
    try:
        result = run_study(out, settings, progress=progress, console=console, command=command)
    except KeyboardInterrupt:
        ignore_interrupts()
        console.print("Interrupted; rerun the same command to continue (finished rows are kept).")
        sys.exit(130)
    click.echo(f"{len(result['cells'])} cells from {len(result['records'])} runs: {out / CLAIMS_JSON}, {out / CLAIMS_MD}, "
               f"{out / CLAIMS_PNG}")
