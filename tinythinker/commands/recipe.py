"""`tinythinker quickstart` and `tinythinker run RECIPE`: the whole recipe, step by step, resumable."""

from __future__ import annotations

from pathlib import Path

import click

from tinythinker.commands import options


def _show_headline(rows: list[dict], console) -> None:
    """The run's result in one table: each student's test accuracy and per-stage figures."""
    from rich.table import Table

    from tinythinker.recipe import HEADLINE

    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    short = {"accuracy": "acc", "with teacher recall": "acc [1]", "with teacher recall+analyses": "acc [2]",
             "recall ROUGE-L": "recall RL", "answer found": "answered"}
    questions = sorted({str(r["questions"]) for r in rows if r.get("questions")})
    table = Table(title=f"test split ({'/'.join(questions) or '?'} questions), percent")
    for column in ("student", *[short[c] for c, _, _ in HEADLINE], "change"):
        table.add_column(column, justify="left" if column == "student" else "right")
    for row in rows:
        change = row.get("change")
        table.add_row(row["student"], *[pct(row.get(c)) for c, _, _ in HEADLINE], "" if change is None else f"{100 * change:+.1f}")
    console.print(table)
    console.print("[1] with the teacher's recall given; [2] with the teacher's recall and analyses given; "
                  "change: against sft-full", soft_wrap=True)
    dpo = next((r for r in rows if r["student"] == "dpo"), None)
    if dpo and "chosen_iteration" in dpo:
        pairs = ", ".join(f"{k} {v:,}" for k, v in dpo["pairs"].items()) or "none"
        validation = ", ".join(f"{k} {pct(v)}" for k, v in dpo["validation"].items())
        which = "the SFT student (no iteration raised validation accuracy)" if dpo["chosen_iteration"] == 0 \
            else f"iteration {dpo['chosen_iteration']}"
        console.print(f"self-reflection: preference pairs {pairs}; validation accuracy {validation}; final student = {which}")


def _show_summary(summary: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['name']}: artifacts in {summary['run_dir']}")
    table.add_column("step")
    table.add_column("artifact")
    table.add_column("seconds", justify="right")
    for step in summary["steps"]:
        seconds = step["seconds"]
        table.add_row(step["name"], step["output"], "-" if seconds is None else f"{seconds:.1f}")
    console.print(table)
    console.print(f"run summary: {Path(summary['run_dir']) / 'summary.json'}")


@click.command()
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("tinythinker-quickstart"), show_default=True,
              help="Run folder for every artifact; rerunning continues a stopped run.")
@click.option("--dataset", type=click.Choice(["csqa", "obqa", "strategyqa"]), default="csqa", show_default=True, help="Which data set's generated world.")
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True,
              help="Seed of the world and of every step (the world is what `tinythinker world DATASET --seed N` writes).")
@options.progress
def quickstart(run_dir: Path, dataset: str, seed: int, progress: bool):
    """A generated learnable world -> build -> tiny student SFT -> 1 DPO iteration -> lm-eval -> report (no network, no key)."""
    from rich.console import Console

    from tinythinker.recipe import builtin_recipe, execute, plan

    recipe = builtin_recipe("quickstart")
    recipe["dataset"] = dataset
    recipe["seed"] = seed
    recipe["name"] = f"quickstart-{dataset}"
    console = Console(stderr=True)
    summary = execute(plan(recipe, run_dir, progress=progress), console=console)
    _show_summary(summary, console)
    if summary.get("headline"):
        _show_headline(summary["headline"], console)


@click.command()
@options.deprecated("--run-dir", "--out", param="run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("recipe_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder for every artifact (default: the recipe's run_dir, else runs/<name>); "
                   "rerunning continues a stopped run.")
@click.option("--dry-run", is_flag=True, help="Print the steps (as tinythinker command lines) and stop.")
@options.progress
def run(recipe_file: Path, run_dir: Path | None, dry_run: bool, progress: bool):
    """Execute a recipe step by step; finished steps are skipped on a rerun."""
    import shlex

    from rich.console import Console

    from tinythinker.recipe import execute, load_recipe, plan

    console = Console(stderr=True)
    steps = plan(load_recipe(recipe_file), run_dir, progress=progress)
    if dry_run:
        for step in steps.steps:
            launcher = f"accelerate launch --num_processes {step.processes} -m " if step.processes > 1 else ""
            click.echo(f"# {step.name}\n{launcher}tinythinker {shlex.join([*step.argv, *step.reporting])}")
        return
    _show_summary(execute(steps, console=console), console)
