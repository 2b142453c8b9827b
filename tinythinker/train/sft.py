"""Phase 1 of TinyThinker (REFERENCE 7): stage-interleaved SFT of one student on every stage.

Two parts, each readable on its own:

* :class:`StageSchedule` -- the pure block schedule. One cycle is ``interval`` batches of recall,
  ``interval x options`` batches of analyze and ``interval`` batches of summarize (the variant's
  stages only, in pipeline order). Cycles repeat until every stage data set is used up in this
  epoch; a used-up stage is skipped. An *epoch* shows every record of every stage exactly once:
  each stage is reshuffled per epoch by its own seeded generator, cut into batches (the last one
  may be smaller), and the epoch ends when the last stage runs out. The next epoch starts a fresh
  cycle with the first stage (as the reference's trainer did). Stage sizes differ, so a small stage
  simply stops appearing in the last cycles of an epoch.
* :func:`train_sft` -- :class:`SFTTrainer` on the one training loop (:mod:`tinythinker.train.loop`):
  batches of stage records, the mean token NLL of each batch; validation accuracy of the whole
  pipeline (:mod:`tinythinker.evaluate.engine`) at the end of every cycle, the best checkpoint in
  ``RUN/best`` with a model card, and ``RUN/last`` to resume an interrupted run exactly.

``--batch-size`` is the batch of one optimizer step over all processes together, and the loss is the
mean token NLL of the whole batch, so processes and micro-batches change speed and memory, not the
result (beyond floating-point rounding and dropout streams).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from tinythinker.errors import TinyThinkerError
from tinythinker.hub import is_hub_id, pin
from tinythinker.protocol import ANALYZE, COT, LABEL, RATIONALE, RECALL, SUMMARIZE, TRAINED_STAGES, VARIANT_STAGES, VARIANTS
from tinythinker.protocol import config_parts
from tinythinker.protocol import REFERENCE_MAX_LENGTH
from tinythinker.runs import RUN_SETTINGS as SETTINGS_FILE, write_settings
from tinythinker.train.settings import SCHEDULES, SFTSettings, absolute, first_change
from tinythinker.train.tracking import tracking
from tinythinker.train.loop import TrainLoop, TrainResult, chunks, make_accelerator

# Stage -> a fixed number that keys its shuffling generator, so a stage has the same order in every
# variant trained with the same seed (the baselines' one-pass stages too).
STAGE_KEYS = {RECALL: 1, ANALYZE: 2, SUMMARIZE: 3, COT: 5, LABEL: 6, RATIONALE: 7}
MIXED = "mixed"  # the pseudo-stage of a mixed schedule: every batch draws from all stages' records
POOL_KEYS = {**STAGE_KEYS, MIXED: 4}  # what keys each shuffling generator: a stage, or the mixed pool


# --- the schedule (pure) --------------------------------------------------------------------------

def block_lengths(stages: Sequence[str], interval: int, n_options: int) -> dict[str, int]:
    """Batches per block in one cycle: analyze ``interval x options`` (one record per option), every other
    stage ``interval`` (recall, summarize, and the baselines' cot, label and rationale: one record per rationale)."""
    return {stage: interval * n_options if stage == ANALYZE else interval for stage in stages}


@dataclass(frozen=True)
class Block:
    """A run of consecutive batches of one stage inside one epoch."""

    cycle: int  # cycle number inside the epoch, from 0
    stage: str
    first: int  # index of its first batch in this stage's epoch order
    count: int


@dataclass(frozen=True)
class Step:
    """One optimizer step: which rows of which stage, and where it sits in the schedule."""

    index: int  # global step, from 0
    epoch: int  # from 0
    cycle: int  # global cycle number, from 0 (epoch * cycles_per_epoch + cycle in the epoch)
    stage: str
    rows: np.ndarray  # row indices into the stage's data set (the whole batch, all processes)
    block_end: bool  # last step of its block
    cycle_end: bool  # last step of its cycle: validation and checkpoint follow


class StageSchedule:
    """The block-interleaved stage schedule of REFERENCE 7 over ``epochs`` epochs (see module docstring).

    ``sizes`` maps each trained stage to its number of records, in pipeline order. Everything is a
    pure function of the arguments: ``steps(start)`` resumes the same sequence at any step."""

    def __init__(self, sizes: Mapping[str, int], *, n_options: int, interval: int, batch_size: int, epochs: int, seed: int,
                 mixed: bool = False, max_steps: int | None = None, eval_every: int | None = None):
        unknown = [stage for stage in sizes if stage not in STAGE_KEYS]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}: stages are {', '.join(STAGE_KEYS)}")
        for name, value in (("interval", interval), ("batch_size", batch_size), ("epochs", epochs), ("n_options", n_options),
                            ("max_steps", 1 if max_steps is None else max_steps),
                            ("eval_every", 1 if eval_every is None else eval_every)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if any(size < 0 for size in sizes.values()) or not any(sizes.values()):
            raise ValueError(f"the stage data sets need at least one record, got sizes {dict(sizes)}")
        self.sizes = dict(sizes)
        self.stages = tuple(sizes)
        self.mixed = mixed
        self.n_options, self.interval, self.batch_size, self.epochs, self.seed = n_options, interval, batch_size, epochs, seed
        self.lengths = block_lengths(self.stages, interval, n_options)
        # what a batch is drawn from: one stage per block, or (mixed) every stage's records in one pool
        # with a "cycle" as long as a block cycle, so validation comes as often as with blocks
        self.pools = {MIXED: sum(self.sizes.values())} if mixed else dict(self.sizes)
        self.pool_lengths = {MIXED: sum(self.lengths.values())} if mixed else dict(self.lengths)
        self.batches = {pool: math.ceil(size / batch_size) for pool, size in self.pools.items()}
        self.blocks = self._epoch_blocks()
        self.steps_per_epoch = sum(self.batches.values())
        self.cycles_per_epoch = self.blocks[-1].cycle + 1
        # max_steps overrides epochs (as the Hugging Face Trainer's): the epochs repeat until the cap
        self.max_steps, self.eval_every = max_steps, eval_every
        self.epochs = math.ceil(max_steps / self.steps_per_epoch) if max_steps else epochs
        self.total_steps = max_steps or self.steps_per_epoch * epochs

    def __len__(self) -> int:
        return self.total_steps

    @property
    def cycles(self) -> int:
        """Cycles in the whole run (each ends in a validation)."""
        return math.ceil(self.total_steps / self.eval_every) if self.eval_every else self.epochs * self.cycles_per_epoch

    def _epoch_blocks(self) -> list[Block]:
        """The same for every epoch: it depends on the number of batches per stage only."""
        done = dict.fromkeys(self.pools, 0)
        blocks, cycle = [], 0
        while any(done[s] < self.batches[s] for s in self.pools):
            for stage in self.pools:
                count = min(self.pool_lengths[stage], self.batches[stage] - done[stage])
                if count > 0:  # a stage used up in this epoch is skipped
                    blocks.append(Block(cycle, stage, done[stage], count))
                    done[stage] += count
            cycle += 1
        return blocks

    def order(self, stage: str, epoch: int) -> np.ndarray:
        """This epoch's shuffled row order of one stage, or of the mixed pool (its own generator: seed,
        epoch, stage). Mixed rows index the stages' records concatenated in pipeline order (:meth:`locate`)."""
        rng = np.random.default_rng([self.seed, epoch, POOL_KEYS[stage]])
        return rng.permutation(self.pools[stage])

    def locate(self, rows: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Mixed pool rows as (stage, positions in ``rows``, row indices into that stage's records)."""
        out, start = [], 0
        for stage in self.stages:
            end = start + self.sizes[stage]
            positions = np.flatnonzero((rows >= start) & (rows < end))
            if len(positions):
                out.append((stage, positions, rows[positions] - start))
            start = end
        return out

    def steps(self, start: int = 0) -> Iterator[Step]:
        """The steps from global step ``start`` to the end."""
        if not 0 <= start <= self.total_steps:
            raise ValueError(f"start {start} is outside the schedule (0..{self.total_steps})")
        first_epoch = start // self.steps_per_epoch
        index = first_epoch * self.steps_per_epoch
        for epoch in range(first_epoch, self.epochs):
            orders = {stage: self.order(stage, epoch) for stage in self.pools}
            for number, block in enumerate(self.blocks):
                cycle_end = number + 1 == len(self.blocks) or self.blocks[number + 1].cycle != block.cycle
                for k in range(block.count):
                    if index >= self.total_steps:
                        return
                    if index >= start:
                        batch = block.first + k
                        rows = orders[block.stage][batch * self.batch_size : (batch + 1) * self.batch_size]
                        last = k + 1 == block.count
                        yield self._step(index, epoch, block, rows, last, last and cycle_end)
                    index += 1

    def _step(self, index: int, epoch: int, block: Block, rows: np.ndarray, block_end: bool, cycle_end: bool) -> Step:
        """One step; with ``eval_every`` a cycle is that many steps (the same validation cadence for every
        variant, whatever its stages), and the last step of a capped run always ends a cycle."""
        cycle = epoch * self.cycles_per_epoch + block.cycle
        if self.eval_every:
            cycle, cycle_end = index // self.eval_every, (index + 1) % self.eval_every == 0
        final = index + 1 == self.total_steps
        return Step(index, epoch, cycle, block.stage, rows, block_end or final, cycle_end or final)

    def describe(self) -> str:
        """One line for cards and logs, e.g. ``recall 100 · analyze 500 · summarize 100 batches per cycle``."""
        if self.mixed:
            return f"mixed batches of {' · '.join(self.stages)}; {self.pool_lengths[MIXED]} batches per cycle"
        return " · ".join(f"{stage} {self.lengths[stage]}" for stage in self.stages) + " batches per cycle"

    def state_dict(self) -> dict:
        """What the schedule is: a resumed run must walk the same one (kept in ``OUT/last``)."""
        state = {"sizes": self.sizes, "n_options": self.n_options, "interval": self.interval, "batch_size": self.batch_size,
                 "epochs": self.epochs, "seed": self.seed, "mixed": self.mixed}
        # only when set: the resume points of runs made before these existed stay readable
        return {**state, **{k: v for k, v in (("max_steps", self.max_steps), ("eval_every", self.eval_every)) if v}}

    def load_state_dict(self, state: dict) -> None:
        if state != self.state_dict():
            raise TinyThinkerError(f"the data set changed since this run started (records {state['sizes']}, now {self.sizes})"
                                   if state["sizes"] != self.sizes else f"the schedule changed since this run started ({state})")


# --- settings and data ----------------------------------------------------------------------------

def variant_of(config: str, variant: str | None = None) -> str:
    """The variant of a ``{dataset}-{variant}`` config; an explicit ``variant`` must agree with it."""
    named = config_parts(config)[1]
    if variant is None:
        if named is None:
            raise TinyThinkerError(f"config {config!r} does not end in a variant ({', '.join(VARIANTS)}); pass --variant")
        return named
    if variant not in VARIANT_STAGES:
        raise TinyThinkerError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if named is not None and named != variant:
        raise TinyThinkerError(f"config {config!r} holds the {named} variant's records, not {variant}'s; "
                               f"pass --config with the -{variant} suffix or leave --variant out")
    return variant


def checked(settings: SFTSettings) -> SFTSettings:
    """``settings`` checked, with the variant filled in and local paths made absolute (so a rerun from elsewhere matches)."""
    settings = replace(settings, data=absolute(settings.data), student=absolute(settings.student),
                       variant=variant_of(settings.config, settings.variant))
    if settings.schedule not in SCHEDULES:
        raise TinyThinkerError(f"unknown schedule {settings.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if settings.max_input_length is not None and settings.max_input_length < 1:
        raise TinyThinkerError(f"max_input_length must be at least 1, got {settings.max_input_length}")
    for name in ("interval", "epochs", "batch_size", "max_length", "max_steps", "eval_every", "patience", "max_new_tokens"):
        if getattr(settings, name) is not None and getattr(settings, name) < 1:
            raise TinyThinkerError(f"{name} must be at least 1, got {getattr(settings, name)}")
    for name in ("lr", "warmup_ratio", "weight_decay", "max_grad_norm"):
        if not math.isfinite(getattr(settings, name)):
            raise TinyThinkerError(f"{name} must be a finite number, got {getattr(settings, name)}")
    if settings.lr <= 0 or not 0 <= settings.warmup_ratio <= 1:
        raise TinyThinkerError(f"lr must be positive and warmup_ratio within 0..1 (got {settings.lr}, {settings.warmup_ratio})")
    if settings.eval_limit is not None and settings.eval_limit < 0:
        raise TinyThinkerError(f"eval_limit must be 0 or more, got {settings.eval_limit}")
    return settings


class StageData:
    """The training splits of one data set config (``recall``, ``analyze``, ``summarize``; a baseline's
    ``cot`` or ``label`` and ``rationale``; columns ``input`` and ``target``) for the stages ``variant``
    trains, read by :func:`pipeline.load_stage_split`."""

    def __init__(self, data: str, config: str, variant: str, revision: str | None = None):
        from tinythinker.data.splits import load_stage_split  # the one reader of stage data set splits (one-line errors)

        self.stages = TRAINED_STAGES[variant]
        self.splits = {}
        for stage in self.stages:
            split = load_stage_split(data, config, stage, revision)
            absent = {"input", "target", "choices"} - set(split.column_names)
            if absent:
                raise TinyThinkerError(f"{data} config {config!r} split {stage!r} lacks column(s) {', '.join(sorted(absent))}; "
                                       "rebuild it with `tinythinker build`")
            self.splits[stage] = split
        first = next((self.splits[s] for s in self.stages if len(self.splits[s])), None)
        if first is None:
            raise TinyThinkerError(f"{data} config {config!r}: the {', '.join(self.stages)} splits are empty; nothing to train on")
        self.n_options = len(first[0]["choices"])
        self.splits = {stage: split.select_columns(["input", "target"]) for stage, split in self.splits.items()}

    def sizes(self) -> dict[str, int]:
        return {stage: len(self.splits[stage]) for stage in self.stages}

    def records(self, stage: str, rows: np.ndarray) -> tuple[list[str], list[str]]:
        batch = self.splits[stage][rows.tolist()]
        return batch["input"], batch["target"]


# --- the run folder -------------------------------------------------------------------------------

def read_run(out: Path, settings: SFTSettings, *, overwrite: bool) -> bool:
    """Whether ``out`` is this run, to continue (False: start fresh); refuses a folder that is not this run's.

    Reads only (every process calls it)."""
    settings_file = out / SETTINGS_FILE
    if not out.exists() or not any(out.iterdir()):
        return False
    if not settings_file.exists():  # never delete (--overwrite) or write into a folder that holds something else
        raise TinyThinkerError(f"{out}: folder exists and is not a training run (no {SETTINGS_FILE}); choose another --out")
    if overwrite:
        return False
    saved = json.loads(settings_file.read_text(encoding="utf-8"))
    wanted = asdict(settings)
    if (key := first_change(saved, settings)) is not None:
        raise TinyThinkerError(f"{out} was trained with {key}={saved.get(key)!r}, not {wanted[key]!r}; "
                               "rerun with the same settings to resume, or pass --overwrite or another --out")
    return True


# --- the trainer ----------------------------------------------------------------------------------

class SFTTrainer(TrainLoop):
    """One run of :func:`train_sft` on the training loop: batches of stage records, the token-mean NLL."""

    label = "SFT"
    log_epochs = True

    @property
    def patience(self) -> int | None:
        return self.settings.patience if self.items else None  # without validation there is nothing to stop on
    figure_names = ("loss", "labels", "tokens")

    def __init__(self, settings: SFTSettings, out: Path, *, overwrite: bool, report_to: str | None = None, **loop):
        accelerator = make_accelerator(settings.bf16, report_to, out)  # first: a missing tracker package is one line
        resuming = read_run(out, settings, overwrite=overwrite)
        # the commits a Hub data set and base model are read at: pinned when the run starts, kept when it resumes
        saved = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8")) if resuming else {}
        self.data_commit = saved.get("data_commit") or pin(settings.data, settings.revision)
        self.student_commit = saved.get("student_commit") or pin(settings.student, settings.student_revision, repo_type="model")
        super().__init__(out, settings, start=settings.student, revision=self.student_commit, accelerator=accelerator, **loop)
        if resuming:
            self.resume_from_last()
        self.accelerator.wait_for_everyone()
        self.started_fresh = self.is_main and not resuming
        if self.started_fresh:  # a fresh start: an empty folder with the settings
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            record = {**asdict(settings), "data_commit": self.data_commit, "student_commit": self.student_commit}
            write_settings(out, record, method="sft")
        self.accelerator.wait_for_everyone()

    def undo_fresh_start(self) -> None:
        """Remove what a fresh start wrote (the settings, the folder) when the start fails: a corrected rerun must
        not meet a run.json of settings that never trained."""
        if self.started_fresh:
            (self.out / SETTINGS_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # only if nothing else is in it
                self.out.rmdir()

    def setup(self) -> None:
        from tinythinker.data.splits import items_from_dataset

        s = self.settings
        with self.accelerator.main_process_first():
            self.data = StageData(s.data, s.config, s.variant, revision=self.data_commit)
            items = items_from_dataset(s.data, s.config, "validation", self.data_commit) if s.eval_limit != 0 else []
        self.items = items if s.eval_limit is None else items[: s.eval_limit]
        self.schedule = StageSchedule(self.data.sizes(), n_options=self.data.n_options, interval=s.interval,
                                      batch_size=s.batch_size, epochs=s.epochs, seed=s.seed, mixed=s.schedule == MIXED,
                                      max_steps=s.max_steps, eval_every=s.eval_every)
        super().setup()
        self.check_positions()

    def check_positions(self) -> None:
        """Refuse, before the first step, rows longer than the student's position table: they would end
        training at the first batch that holds one, with an index error deep in the model."""
        s, limit = self.settings, self.student.position_limit
        if limit is None:
            return
        over = {stage: self.student.count_over_positions(*self.data.records(stage, np.arange(len(split))), max_length=s.max_length,
                                                         max_input_length=s.max_input_length)
                for stage, split in self.data.splits.items()}
        if any(over.values()):
            counts = ", ".join(f"{stage} {n:,} of {len(self.data.splits[stage]):,}" for stage, n in over.items() if n)
            whole = "input" if self.student.is_seq2seq else "input and target together"
            raise TinyThinkerError(
                f"{s.student} takes at most {limit:,} tokens ({whole}), and these training rows are longer: {counts}; "
                f"pass --max-input-length (cuts inputs from the left, keeping what to generate) and --max-length "
                f"(cuts targets) so that they fit {limit:,}, or use a student with more positions"
            )

    def batches(self, step: Step, share: np.ndarray, size: int) -> list[dict]:
        s = self.settings
        # a mixed batch is run one stage at a time (same loss and gradient: every part is weighted by
        # its label tokens), so short recall inputs are not padded to the length of summarize inputs
        parts = [(stage, rows) for stage, _, rows in self.schedule.locate(share)] if step.stage == MIXED else [(step.stage, share)]
        return [self.student.encode(*self.data.records(stage, rows), max_length=s.max_length, max_input_length=s.max_input_length)
                for stage, part in parts for rows in chunks(part, size)]

    def counts(self, batch: dict) -> tuple[int]:
        return (self.student.label_tokens(batch["labels"]),)

    def loss(self, batch: dict, totals: tuple[int]):
        labels = self.student.label_tokens(batch["labels"])
        loss = self.model(**{k: v.to(self.accelerator.device) for k, v in batch.items()}).loss
        # the mean token NLL of the whole batch: this micro-batch's mean, weighted by its share of the label tokens
        return loss * (labels / totals[0]), {"loss": loss.detach().float() * labels, "labels": labels,
                                             "tokens": self.student.batch_tokens(batch)}

    def figures(self, sums: dict[str, float], seconds: float) -> dict:
        return {"loss": sums["loss"] / max(sums["labels"], 1), "tokens": int(sums["tokens"]), "target_tokens": int(sums["labels"]),
                "tokens_per_second": sums["tokens"] / seconds if seconds > 0 else None}

    def announce(self) -> None:
        s, schedule = self.settings, self.schedule
        if not self.is_main or self.console is None:
            return
        limit = s.max_input_length or REFERENCE_MAX_LENGTH
        long = {stage: self.student.count_long_inputs(split["input"], limit) for stage, split in self.data.splits.items()}
        if any(long.values()):
            what = "cut to their last" if s.max_input_length else "not cut (--max-input-length caps them); over"
            self.console.print(f"inputs longer than {limit} tokens, {what} {limit}: "
                               + ", ".join(f"{stage} {n:,} of {len(self.data.splits[stage]):,}" for stage, n in long.items()))
        cut = {stage: self.student.count_long_targets(split["target"], s.max_length) for stage, split in self.data.splits.items()}
        if any(cut.values()):  # e.g. a cot target holds every stage's text: --max-length must fit it
            self.console.print(f"targets longer than --max-length {s.max_length} tokens, cut (eos kept): "
                               + ", ".join(f"{stage} {n:,} of {len(self.data.splits[stage]):,}" for stage, n in cut.items() if n))
        where = f"resuming at step {self.counters.step:,}" if self.resume else "starting"
        pinned = f" of {s.data} at commit {self.data_commit}" if self.data_commit else ""
        length = f"capped at {s.max_steps:,} (epochs of" if s.max_steps else f"= {s.epochs} epochs x"
        cadence = f"validation every {s.eval_every:,} steps" if s.eval_every else "validation every cycle"
        if self.patience:
            cadence += f", stopping after {self.patience} without a new best"
        self.console.print(f"SFT {s.config}{pinned} ({s.variant}): {schedule.total_steps:,} steps {length} "
                           f"{schedule.steps_per_epoch:,}{')' if s.max_steps else ''}; {schedule.describe()}; {cadence}; "
                           f"{len(self.items)} validation questions; "
                           f"{self.accelerator.num_processes} process(es) on {self.accelerator.device}; {where}")

    def write_card(self, folder: Path) -> None:
        """README.md of a checkpoint: how it was made (cards/model.md.j2), naming the Hub commits it was
        made from when its data set or base model came from the Hub."""
        from tinythinker import __version__
        from tinythinker.artifacts import write_card
        from tinythinker.cards import render_card

        s, schedule, c = self.settings, self.schedule, self.counters
        base_model = s.student if is_hub_id(s.student, "model") else None  # card metadata accepts only Hub ids
        dataset = s.data if is_hub_id(s.data) else None
        hyperparameters = {
            "learning rate": s.lr, "batch size (all processes)": s.batch_size, "epochs": schedule.epochs, **({"max steps": s.max_steps} if s.max_steps else {}),
            **({"patience (validations)": s.patience} if s.patience else {}), "interval": s.interval,
            "max length": s.max_length, "warm-up ratio": s.warmup_ratio, "lr schedule": "cosine", "optimizer": "AdamW",
            "weight decay": s.weight_decay, "max grad norm": s.max_grad_norm, "precision": "bf16 autocast (validation fp32)" if s.bf16 else "fp32",
            "processes": self.accelerator.num_processes, "seed": s.seed,
        }
        front = {"library_name": "transformers", "pipeline_tag": self.student.pipeline_tag,
                 "tags": ["tinythinker", "reasoning-distillation", "multiple-choice", f"variant-{s.variant}"]}
        if base_model:
            front["base_model"] = base_model
        if dataset:
            front["datasets"] = [dataset]
        front["tinythinker"] = {
            "method": "sft", "data": s.data, "config": s.config, "variant": s.variant, "student": s.student, "seed": s.seed,
            "steps": c.step, "total_steps": schedule.total_steps, "validation_accuracy": None if c.best is None else c.best["accuracy"],
            "best_step": None if c.best is None else c.best["step"], "version": __version__,
        }
        # the Hub commits read (local folders have none): a published result names the exact data
        front["tinythinker"].update({key: commit for key, commit in (("data_revision", self.data_commit),
                                                                     ("student_revision", self.student_commit)) if commit})
        body = render_card(
            "model.md.j2", name=folder.parent.name, settings=asdict(s), stages=list(schedule.stages), sizes=schedule.sizes,
            n_options=schedule.n_options, cycle=schedule.describe(), steps_per_epoch=schedule.steps_per_epoch,
            total_steps=schedule.total_steps, steps_done=c.step, hyperparameters=hyperparameters, curve=list(c.curve),
            best=c.best, eval_questions=len(self.items), base_model=base_model, dataset=dataset, version=__version__,
            is_seq2seq=self.student.is_seq2seq, data_commit=self.data_commit, student_commit=self.student_commit,
        )
        write_card(folder, front, body)


def train_sft(settings: SFTSettings, out, *, overwrite: bool = False, progress: bool = True, console=None,
              report_to: str | None = None, **options) -> TrainResult:
    """Train (or resume, or return the finished result of) the SFT run in ``out``; see the module docstring.

    ``options`` are :class:`~tinythinker.train.settings.LoopOptions` fields: ``micro_batch_size`` cuts each
    process's share of a batch for memory (gradient accumulation), ``eval_batch_size`` is the validation
    pipeline's batch, ``log_every`` the steps per metrics row. ``report_to`` a tracker that gets the
    metrics rows too (tensorboard, wandb, trackio; see :mod:`tinythinker.train.tracking`). Ctrl-C (or
    SIGTERM) stops after the current step, saves ``out/last`` and raises KeyboardInterrupt; the same
    call continues from there."""
    settings = checked(settings)
    if options.get("micro_batch_size") is not None and options["micro_batch_size"] < 1:
        raise TinyThinkerError(f"micro_batch_size must be at least 1, got {options['micro_batch_size']}")
    if console is None:
        from rich.console import Console

        console = Console(stderr=True, soft_wrap=True)
    trainer = SFTTrainer(settings, Path(out), overwrite=overwrite, progress=progress, console=console, report_to=report_to,
                         **options)
    if trainer.finished:  # finished before: nothing to do, nothing loaded
        return trainer.result()
    hyperparameters = {**asdict(settings), "micro_batch_size": trainer.options.micro_batch_size}
    with _library_bars_off(), tracking(trainer.accelerator, trainer.out, hyperparameters):
        try:
            trainer.setup()
        except BaseException:
            trainer.undo_fresh_start()
            raise
        return trainer.train()


@contextlib.contextmanager
def _library_bars_off():
    """The run has one progress bar: silence the per-save and per-load bars of transformers and datasets."""
    import datasets
    from transformers.utils import logging as transformers_logging

    restore = (transformers_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if restore[0]:
            transformers_logging.enable_progress_bar()
        if restore[1]:
            datasets.enable_progress_bars()
