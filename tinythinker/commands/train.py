"""`tinythinker train sft`: stage-interleaved SFT of a student (REFERENCE 7), resumable, multi-process
through `accelerate launch -m tinythinker train sft ...`. Heavy imports stay inside the command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tinythinker.artifacts import ignore_interrupts
from tinythinker.commands.options import FiniteFloatRange

from tinythinker.protocol import VARIANTS
from tinythinker.train.settings import SCHEDULES, LoopOptions, SFTSettings
from tinythinker.train.tracking import REPORT_TO
from tinythinker.commands import options


@click.group()
def train():
    """Train students."""


@train.command("sft")
@options.deprecated("--eval-batch-size", "--gen-batch-size", param="eval_batch_size", type=click.IntRange(min=1))
@click.option("--data", required=True, help="Stage data set folder made by `tinythinker build`, or its Hub id.")
@click.option("--revision", default=None,
              help="Of a Hub --data: branch, tag or commit id (default main); the run reads, and its card names, that commit.")
@click.option("--config", required=True, help="Data set config, e.g. csqa-full (its -variant suffix picks the variant).")
@click.option("--student", required=True, help="Base model: Hub id (google-t5/t5-small, gpt2, ...) or checkpoint folder.")
@click.option("--student-revision", default=None, help="Of a Hub --student: branch, tag or commit id (default main).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder: best/, last/, metrics.jsonl.")
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help="Stages to train; default: the config's suffix.")
@click.option("--interval", type=click.IntRange(min=1), default=SFTSettings.interval, show_default=True,
              help="Batches per recall/summarize block (analyze: interval x options).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=SFTSettings.schedule, show_default=True,
              help="blocks: one stage per block (REFERENCE 7); mixed: every batch draws from all stages "
                   "(validation every cycle's worth of batches; what makes small students from scratch learn).")
@click.option("--epochs", type=click.IntRange(min=1), default=SFTSettings.epochs, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=SFTSettings.max_steps,
              help="Train exactly this many optimizer steps, epochs repeating as needed (overrides --epochs).")
@click.option("--eval-every", type=click.IntRange(min=1), default=SFTSettings.eval_every,
              help="Validate every N steps (default: after every schedule cycle) and after the last step.")
@click.option("--patience", type=click.IntRange(min=1), default=SFTSettings.patience,
              help="Stop once this many validations in a row have not beaten the best (default: train to the end).")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=SFTSettings.lr, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--batch-size", type=click.IntRange(min=1), default=SFTSettings.batch_size, show_default=True,
              help="Records per optimizer step, all processes together.")
@click.option("--micro-batch-size", type=click.IntRange(min=1), default=LoopOptions.micro_batch_size,
              help="Records per forward pass on one process (gradient accumulation; saves memory, same result).")
@click.option("--max-length", type=click.IntRange(min=1), default=SFTSettings.max_length, show_default=True, help="Token cap of targets.")
@click.option("--max-input-length", type=click.IntRange(min=1), default=SFTSettings.max_input_length,
              help="Token cap of inputs, keeping their end (default: no cap, as the reference; longer inputs are counted and reported).")
@click.option("--warmup-ratio", type=FiniteFloatRange(0, 1), default=SFTSettings.warmup_ratio, show_default=True, help="Share of steps with linear warm-up.")
@click.option("--bf16", is_flag=True, help="bfloat16 mixed precision (GPUs that have it; CPUs too, slowly on most).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Cap on the new tokens of each recall and analysis in validation (default: the engine's per-stage caps, "
                   "docs/students.md); small caps keep runs of untrained students short.")
@click.option("--eval-limit", type=click.IntRange(min=0), default=SFTSettings.eval_limit,
              help="Validation questions per evaluation (default: all; 0: no validation, keep the final model).")
@options.gen_batch_size("eval_batch_size", default=LoopOptions.eval_batch_size, help="Sequences per generation batch of the validation pipeline.")
@click.option("--log-every", type=click.IntRange(min=1), default=LoopOptions.log_every, show_default=True, help="Steps per line of metrics.jsonl.")
@click.option("--report-to", type=click.Choice(REPORT_TO), default="none", show_default=True,
              help="Also send the metrics.jsonl figures (loss, validation accuracy) to this tracker (files in OUT/tracking; "
                   "its package must be installed).")
@click.option("--seed", type=click.IntRange(min=0), default=SFTSettings.seed, show_default=True)
@click.option("--overwrite", is_flag=True, help="Start over in an existing --out instead of resuming it.")
@options.progress
def sft(data, revision, config, student, student_revision, out, variant, interval, schedule, epochs, max_steps, eval_every, patience, lr,
        batch_size,
        micro_batch_size,
        max_length, max_input_length, warmup_ratio,
        bf16, eval_limit, max_new_tokens, eval_batch_size, log_every, report_to, seed, overwrite, progress):
    """Stage-interleaved SFT: recall, analyze and summarize blocks; validation of the whole pipeline
    after every cycle; the best checkpoint (with a model card) in OUT/best.

    Rerun the same command after an interruption (Ctrl-C, a killed job) to continue where it stopped.
    For several GPUs or processes: accelerate launch -m tinythinker train sft ..."""
    from rich.console import Console

    from tinythinker.train.sft import train_sft

    console = Console(stderr=True, soft_wrap=True)
    settings = SFTSettings(data=data, config=config, student=student, variant=variant, interval=interval, schedule=schedule,
                           epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, max_input_length=max_input_length,
                           seed=seed, bf16=bf16, eval_limit=eval_limit, warmup_ratio=warmup_ratio, revision=revision,
                           student_revision=student_revision, max_steps=max_steps, eval_every=eval_every,
                           patience=patience, max_new_tokens=max_new_tokens)
    try:
        result = train_sft(settings, out, micro_batch_size=micro_batch_size, eval_batch_size=eval_batch_size,
                           log_every=log_every, overwrite=overwrite, progress=progress, console=console, report_to=report_to)
    except KeyboardInterrupt as stop:
        ignore_interrupts()
        console.print(f"Interrupted{': ' + str(stop) if str(stop) else ''}; rerun the same command to continue.")
        sys.exit(130)
    from accelerate import PartialState

    if PartialState().is_main_process:
        done = "already finished" if result.resumed_at == result.steps else "finished"  # a rerun that trained nothing
        if result.stopped_early:
            done += f" early (of {result.total_steps:,}; validation had stopped rising)"
        accuracy = "no validation" if result.best_accuracy is None else \
            f"best validation accuracy {result.best_accuracy:.4f} at step {result.best_step:,}"
        console.print(f"{done}: {result.steps:,} steps; {accuracy}; student in {result.best}")
