"""`tinythinker reflect`: iterative self-reflection (REFERENCE 9) -- sample, build preference pairs,
DPO, keep the best, repeat. Resumable; multi-process through `accelerate launch -m tinythinker reflect ...`.
Heavy imports stay inside the command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tinythinker.artifacts import ignore_interrupts
from tinythinker.commands.options import FiniteFloatRange

from tinythinker.train.settings import LoopOptions, ReflectSettings
from tinythinker.train.tracking import REPORT_TO
from tinythinker.commands import options


def _stages(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@click.command()
@options.deprecated("--eval-batch-size", "--gen-batch-size", param="eval_batch_size", type=click.IntRange(min=1))
@click.option("--student", required=True, help="Starting checkpoint (the SFT best, e.g. runs/csqa-sft/best) or Hub id.")
@click.option("--data", required=True, help="Stage data set folder made by `tinythinker build` (or its Hub id).")
@click.option("--revision", default=None,
              help="Of a Hub --data: branch, tag or commit id (default main); the run reads, and its cards name, that commit.")
@click.option("--config", required=True, help="Its -full config, e.g. csqa-full (training questions, teacher records, validation).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Run folder: best/, preferences/, iter<k>/, state.json, metrics.jsonl.")
@click.option("--iterations", type=click.IntRange(min=1), default=ReflectSettings.iterations, show_default=True,
              help="DPO iterations (a finished run continues with a larger number).")
@click.option("--stages", default=",".join(ReflectSettings.stages), show_default=True, help="Pair stages to train on (comma-separated).")
@click.option("--samples", type=click.IntRange(min=1), default=ReflectSettings.samples, show_default=True,
              help="Sampled recalls per question, and sampled analysis runs per chosen recall.")
@click.option("--temperature", type=FiniteFloatRange(min=0, min_open=True), default=ReflectSettings.temperature, show_default=True, help="Sampling temperature.")
@click.option("--top-k", type=click.IntRange(min=0), default=ReflectSettings.top_k, show_default=True, help="Top-k cut when sampling (0: off).")
@click.option("--beta", type=FiniteFloatRange(min=0, min_open=True), default=ReflectSettings.beta, show_default=True, help="DPO beta.")
@click.option("--nll-weight", type=FiniteFloatRange(min=0), default=ReflectSettings.nll_weight, show_default=True,
              help="Weight of the NLL term on the chosen response (TRL's rpo_alpha).")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=ReflectSettings.lr, show_default=True, help="Peak learning rate (AdamW, cosine).")
@click.option("--batch-size", type=click.IntRange(min=1), default=ReflectSettings.batch_size, show_default=True, help="Pairs per optimizer step, all processes together.")
@click.option("--micro-batch-size", type=click.IntRange(min=1), default=LoopOptions.micro_batch_size,
              help="Pairs per forward pass on one process (gradient accumulation; saves memory, same result).")
@click.option("--cycles", type=click.IntRange(min=1), default=ReflectSettings.cycles, show_default=True,
              help="Cycles per iteration, each R + A steps as the reference (docs/reflection.md); validation after each.")
@click.option("--max-length", type=click.IntRange(min=1), default=ReflectSettings.max_length, show_default=True, help="Token cap of prompts and responses.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Cap on the new tokens of each recall and analysis in sampling and validation (default: the engine's per-stage caps, "
                   "docs/students.md); small caps keep runs of untrained students short.")
@click.option("--eval-limit", type=click.IntRange(min=0), default=ReflectSettings.eval_limit,
              help="Validation questions per evaluation (default: all; 0: no validation, keep each iteration's final model).")
@click.option("--train-limit", type=click.IntRange(min=1), default=ReflectSettings.train_limit, help="Sample only the first N training questions (a quick trial).")
@options.gen_batch_size("eval_batch_size", default=ReflectSettings.eval_batch_size, help="Sequences per generation batch (sampling, validation) and pairs per "
                        "reference-scoring batch; sampled texts depend on it, so a run keeps the value it started with.")
@click.option("--report-to", type=click.Choice(REPORT_TO), default="none", show_default=True,
              help="Also send the metrics.jsonl figures (DPO loss, reward margin and accuracy, validation accuracy) to this "
                   "tracker (files in OUT/tracking; its package must be installed).")
@click.option("--seed", type=click.IntRange(min=0), default=ReflectSettings.seed, show_default=True)
@click.option("--bf16", is_flag=True, help="bfloat16 mixed precision (GPUs that have it).")
@click.option("--overwrite", is_flag=True, help="Start over in an existing --out instead of continuing it.")
@options.progress
def reflect(student, data, revision, config, out, iterations, stages, samples, temperature, top_k, beta, nll_weight, lr, batch_size,
            micro_batch_size, cycles, max_length, eval_limit, max_new_tokens, train_limit, eval_batch_size, report_to, seed, bf16, overwrite, progress):
    """Self-reflection: each iteration samples the student's own recalls and analyses of the training
    questions, makes recall and analyze preference pairs (OUT/preferences, config {dataset}-dpo-iter<k>),
    trains DPO + NLL from the previous best checkpoint (also the frozen reference) and keeps the
    checkpoint with the best validation accuracy. OUT/best is the last iteration's best.

    Interrupted? Rerun the same command: it continues from the last finished step."""
    from rich.console import Console
    from transformers.utils import logging as transformers_logging

    from tinythinker.train.reflect import reflect as run_reflection

    transformers_logging.disable_progress_bar()  # checkpoint load/save bars would break through the run's own
    console = Console(stderr=True)
    settings = ReflectSettings(student=student, data=data, config=config, iterations=iterations, stages=_stages(stages),
                               samples=samples, temperature=temperature, top_k=top_k, beta=beta, nll_weight=nll_weight, lr=lr,
                               batch_size=batch_size, cycles=cycles, max_length=max_length, seed=seed, bf16=bf16,
                               eval_limit=eval_limit, max_new_tokens=max_new_tokens, train_limit=train_limit, eval_batch_size=eval_batch_size,
                               revision=revision)
    try:
        result = run_reflection(settings, out, overwrite=overwrite, progress=progress, console=console,
                                micro_batch_size=micro_batch_size, report_to=report_to)
    except KeyboardInterrupt as stop:
        ignore_interrupts()
        console.print(f"Interrupted{': ' + str(stop) if str(stop) else ''}; rerun the same command to continue.")
        sys.exit(130)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    from rich.table import Table

    table = Table(title=f"self-reflection: {result.out}")
    for column in ("iteration", "recall pairs", "analyze pairs", "best accuracy", "best step", "seconds"):
        table.add_column(column, justify="right")
    if result.baseline:
        table.add_row("0 (start)", "", "", f"{result.baseline['accuracy']:.4f}", "", "")
    for summary in result.iterations:
        accuracy = summary.get("best_accuracy")
        table.add_row(str(summary["iteration"]), f"{summary['pairs'].get('recall', 0):,}", f"{summary['pairs'].get('analyze', 0):,}",
                      "-" if accuracy is None else f"{accuracy:.4f}", str(summary.get("best_step") or "-"),
                      f"{summary.get('seconds', {}).get('total', 0):.1f}")
    console.print(table)
    if result.stopped:
        console.print(f"stopped early: {result.stopped}")
    if result.chosen is not None:
        which = "the starting student (no iteration improved validation accuracy)" if result.chosen["iteration"] == 0 \
            else f"iteration {result.chosen['iteration']}"
        console.print(f"best student: {result.best} = {which}"
                      + ("" if result.chosen["accuracy"] is None else f", validation accuracy {result.chosen['accuracy']:.4f}"))
    else:
        console.print(f"best student: {result.best}")
    console.print(f"preference pairs: {Path(result.out) / 'preferences'}")
