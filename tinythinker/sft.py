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
* :func:`train_sft` -- a compact loop on ``accelerate`` (devices, DDP, bf16 autocast): AdamW,
  cosine schedule with warm-up, one optimizer step per scheduled batch, validation accuracy of the
  whole pipeline (:mod:`tinythinker.pipeline`) at the end of every cycle, the best checkpoint in
  ``RUN/best`` with a model card, and ``RUN/last`` to resume an interrupted run exactly.

``--batch-size`` is the batch of one optimizer step over all processes together: each process
trains on its share of the scheduled batch, optionally cut into micro-batches (gradient
accumulation, ``micro_batch_size``), and the loss is the mean token NLL of the whole batch. So the
number of processes and the micro-batch size change speed and memory, not the result (beyond
floating-point rounding and dropout streams).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from .errors import TinyThinkerError
from .hub import is_hub_id, pin
from .protocol import ANALYZE, RECALL, SUMMARIZE, VARIANT_STAGES, VARIANTS, config_parts
from .tracking import TRACKING_DIR, check_report_to, scalars, tracking

# Stage -> a fixed number that keys its shuffling generator, so a stage has the same order in every
# variant trained with the same seed.
STAGE_KEYS = {RECALL: 1, ANALYZE: 2, SUMMARIZE: 3}
MIXED = "mixed"  # the pseudo-stage of a mixed schedule: every batch draws from all stages' records
POOL_KEYS = {**STAGE_KEYS, MIXED: 4}  # what keys each shuffling generator: a stage, or the mixed pool
REFERENCE_MAX_LENGTH = 200  # the reference's max length: inputs over it are counted and reported
SCHEDULES = ("blocks", "mixed")


# --- the schedule (pure) --------------------------------------------------------------------------

def block_lengths(stages: Sequence[str], interval: int, n_options: int) -> dict[str, int]:
    """Batches per block in one cycle: recall ``interval``, analyze ``interval x options``, summarize ``interval``."""
    per_stage = {RECALL: interval, ANALYZE: interval * n_options, SUMMARIZE: interval}
    return {stage: per_stage[stage] for stage in stages}


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
                 mixed: bool = False):
        unknown = [stage for stage in sizes if stage not in STAGE_KEYS]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}: stages are {', '.join(STAGE_KEYS)}")
        for name, value in (("interval", interval), ("batch_size", batch_size), ("epochs", epochs), ("n_options", n_options)):
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
        self.total_steps = self.steps_per_epoch * epochs

    def __len__(self) -> int:
        return self.total_steps

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
                    if index >= start:
                        batch = block.first + k
                        rows = orders[block.stage][batch * self.batch_size : (batch + 1) * self.batch_size]
                        last = k + 1 == block.count
                        yield Step(index, epoch, epoch * self.cycles_per_epoch + block.cycle, block.stage, rows, last, last and cycle_end)
                    index += 1

    def describe(self) -> str:
        """One line for cards and logs, e.g. ``recall 100 · analyze 500 · summarize 100 batches per cycle``."""
        if self.mixed:
            return f"mixed batches of {' · '.join(self.stages)}; {self.pool_lengths[MIXED]} batches per cycle"
        return " · ".join(f"{stage} {self.lengths[stage]}" for stage in self.stages) + " batches per cycle"


# --- settings and data ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SFTSettings:
    """What a run is. Rerunning with the same settings and ``out`` resumes it; other settings are refused.

    Defaults are the reference's (REFERENCE 7). ``eval_limit``: validation questions per evaluation
    (None: all of them; 0: no validation, the final model becomes ``best``)."""

    data: str
    config: str
    student: str
    variant: str | None = None  # None: read from the config name, "{dataset}-{variant}"
    interval: int = 100
    schedule: str = "blocks"  # "blocks": REFERENCE 7; "mixed": every batch draws from all stages (a deviation, see docs/training.md)
    epochs: int = 10
    lr: float = 5e-4
    batch_size: int = 64
    max_length: int = 200  # target tokens
    max_input_length: int | None = None  # None: inputs are not cut (as the reference)
    seed: int = 42
    bf16: bool = False
    eval_limit: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    revision: str | None = None  # of a Hub data set: branch, tag or commit id (None: main); pinned to its commit
    student_revision: str | None = None  # of a Hub base model, likewise

    def resolved(self) -> "SFTSettings":
        """Variant filled in and checked, local paths made absolute (so a rerun from elsewhere matches)."""
        local = lambda p: str(Path(p).resolve()) if Path(p).exists() else str(p)  # noqa: E731
        return SFTSettings(**{**asdict(self), "data": local(self.data), "student": local(self.student),
                              "variant": variant_of(self.config, self.variant)})


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


class StageData:
    """The training splits of one data set config (``recall``, ``analyze``, ``summarize``; columns
    ``input`` and ``target``) for the stages of ``variant``, read by :func:`pipeline.load_stage_split`."""

    def __init__(self, data: str, config: str, variant: str, revision: str | None = None):
        from .pipeline import load_stage_split  # the one reader of stage data set splits (one-line errors)

        self.stages = VARIANT_STAGES[variant]
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

SETTINGS_FILE, METRICS_FILE, LAST, BEST = "run.json", "metrics.jsonl", "last", "best"


@dataclass
class SFTResult:
    out: Path
    best: Path
    steps: int
    total_steps: int
    best_accuracy: float | None
    best_step: int | None
    curve: list[dict] = field(default_factory=list)  # one record per validation: cycle, epoch, step, accuracy
    resumed_at: int | None = None  # the step a rerun continued from (None: started fresh)


def read_run(out: Path, settings: SFTSettings, *, overwrite: bool) -> dict | None:
    """What to do with ``out``: None to start fresh, else the ``last`` checkpoint's state to resume.

    Reads only (every process calls it); refuses a folder that is not this run's."""
    settings_file = out / SETTINGS_FILE
    if not out.exists() or not any(out.iterdir()):
        return None
    if not settings_file.exists():  # never delete (--overwrite) or write into a folder that holds something else
        raise TinyThinkerError(f"{out}: folder exists and is not a training run (no {SETTINGS_FILE}); choose another --out")
    if overwrite:
        return None
    saved = json.loads(settings_file.read_text(encoding="utf-8"))
    wanted = asdict(settings)
    changed = [k for k in wanted if saved.get(k, getattr(SFTSettings, k, None)) != wanted[k]]  # keys added later: defaults
    if changed:
        key = changed[0]
        raise TinyThinkerError(f"{out} was trained with {key}={saved.get(key)!r}, not {wanted[key]!r}; "
                               "rerun with the same settings to resume, or pass --overwrite or another --out")
    state_file = out / LAST / "state.json"
    return json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else None


def write_model_card(folder: Path, *, settings: SFTSettings, schedule: StageSchedule, is_seq2seq: bool, processes: int,
                     curve: Sequence[dict], best: dict | None, steps_done: int, eval_questions: int,
                     data_commit: str | None = None, student_commit: str | None = None) -> None:
    """README.md of a checkpoint: how it was made (cards/model.md.j2), naming the Hub commits it was
    made from (``data_commit``, ``student_commit``) when its data set or base model came from the Hub."""
    from . import __version__
    from .artifacts import write_card
    from .cards import render_card

    # card metadata accepts only Hub ids
    base_model = settings.student if is_hub_id(settings.student, "model") else None
    dataset = settings.data if is_hub_id(settings.data) else None
    hyperparameters = {
        "learning rate": settings.lr, "batch size (all processes)": settings.batch_size, "epochs": settings.epochs,
        "interval": settings.interval, "max length": settings.max_length, "warm-up ratio": settings.warmup_ratio,
        "lr schedule": "cosine", "optimizer": "AdamW", "weight decay": settings.weight_decay,
        "max grad norm": settings.max_grad_norm, "precision": "bf16 autocast" if settings.bf16 else "fp32",
        "processes": processes, "seed": settings.seed,
    }
    front = {"library_name": "transformers", "pipeline_tag": "text2text-generation" if is_seq2seq else "text-generation",
             "tags": ["tinythinker", "reasoning-distillation", "multiple-choice", f"variant-{settings.variant}"]}
    if base_model:
        front["base_model"] = base_model
    if dataset:
        front["datasets"] = [dataset]
    front["tinythinker"] = {
        "method": "sft", "data": settings.data, "config": settings.config, "variant": settings.variant,
        "student": settings.student, "seed": settings.seed, "steps": steps_done, "total_steps": schedule.total_steps,
        "validation_accuracy": None if best is None else best["accuracy"], "best_step": None if best is None else best["step"],
        "version": __version__,
    }
    # the Hub commits read (local folders have none): a published result names the exact data
    front["tinythinker"].update({key: commit for key, commit in (("data_revision", data_commit), ("student_revision", student_commit))
                                 if commit})
    body = render_card(
        "model.md.j2", name=folder.parent.name, settings=asdict(settings), stages=list(schedule.stages),
        sizes=schedule.sizes, n_options=schedule.n_options, cycle=schedule.describe(), steps_per_epoch=schedule.steps_per_epoch,
        total_steps=schedule.total_steps, steps_done=steps_done, hyperparameters=hyperparameters, curve=list(curve),
        best=best, eval_questions=eval_questions, base_model=base_model, dataset=dataset, version=__version__,
        is_seq2seq=is_seq2seq, data_commit=data_commit, student_commit=student_commit,
    )
    write_card(folder, front, body)


# --- the trainer ----------------------------------------------------------------------------------

class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step (and save); a second signal acts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def agreed(self, accelerator) -> bool:
        """Every process stops at the same step when any of them was asked to."""
        import torch

        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor(int(self.requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item())

    def end_if_agreed(self, accelerator, *, step: int, total_steps: int, saved: bool, save_last) -> None:
        """After a training step: when stopping was agreed and steps remain, save the run (unless the
        step just did) and end the loop with KeyboardInterrupt (the command turns it into a resume hint)."""
        if step < total_steps and self.agreed(accelerator):
            if not saved:
                save_last()
            raise KeyboardInterrupt(f"stopped at step {step:,} of {total_steps:,}")


def make_accelerator(bf16: bool, report_to: str | None = None, out: Path | None = None):
    """The run's ``accelerate`` state: bf16 autocast or not; several launched processes on a machine
    without accelerators train on the CPUs; ``report_to`` a tracker (:mod:`tinythinker.tracking`)
    writing into the run folder ``out``. Shared by the SFT and DPO trainers."""
    from accelerate import Accelerator

    log_with = check_report_to(report_to)  # before anything is written: a missing package is one line
    try:
        return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=distributed_on_cpus(), log_with=log_with,
                           project_dir=str(Path(out) / TRACKING_DIR) if log_with else None)
    except ValueError as error:  # e.g. bf16 on a GPU without it
        raise TinyThinkerError(f"cannot set up training ({error}); leave --bf16 out on this hardware") from None


def distributed_on_cpus() -> bool:
    """Several processes (torchrun, `accelerate launch --multi_gpu`) on a machine without accelerators:
    tell accelerate to use the CPUs (gloo); it would otherwise fall back to one process each."""
    import os

    import torch
    from accelerate.utils import is_mlu_available, is_npu_available, is_xpu_available

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available())


def _label_tokens(labels, is_seq2seq: bool) -> int:
    """Label tokens the model's loss averages over (causal: after the one-token shift)."""
    return int((labels if is_seq2seq else labels[:, 1:]).ne(-100).sum())


class SFTTrainer:
    """One run of :func:`train_sft`; see the module docstring."""

    def __init__(self, settings: SFTSettings, out: Path, *, micro_batch_size: int | None, eval_batch_size: int,
                 log_every: int, overwrite: bool, progress: bool, console, report_to: str | None = None):
        self.settings, self.out = settings, out
        self.micro_batch_size, self.eval_batch_size, self.log_every = micro_batch_size, eval_batch_size, log_every
        self.accelerator = make_accelerator(settings.bf16, report_to, out)
        self.is_main = self.accelerator.is_main_process
        self.progress_enabled, self.console = progress, console
        self.resume = read_run(out, settings, overwrite=overwrite)
        # the commits a Hub data set and base model are read at: pinned when the run starts, kept when it resumes
        saved = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8")) if self.resume is not None else {}
        self.data_commit = saved.get("data_commit") or pin(settings.data, settings.revision)
        self.student_commit = saved.get("student_commit") or pin(settings.student, settings.student_revision, repo_type="model")
        self.accelerator.wait_for_everyone()
        if self.is_main and self.resume is None:  # a fresh start: empty folder, settings, empty log
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            from .artifacts import atomic_write_text

            record = {**asdict(settings), "data_commit": self.data_commit, "student_commit": self.student_commit}
            atomic_write_text(out / SETTINGS_FILE, json.dumps(record, indent=2) + "\n")
            (out / METRICS_FILE).write_text("", encoding="utf-8")
        self.accelerator.wait_for_everyone()

    # .. setup ..

    def setup(self) -> None:
        import torch
        from accelerate.utils import set_seed
        from transformers import get_cosine_schedule_with_warmup

        from .pipeline import items_from_dataset
        from .students import Student

        s, acc = self.settings, self.accelerator
        with acc.main_process_first():
            self.data = StageData(s.data, s.config, s.variant, revision=self.data_commit)
            items = items_from_dataset(s.data, s.config, "validation", self.data_commit) if s.eval_limit != 0 else []
        self.items = items if s.eval_limit is None else items[: s.eval_limit]
        self.schedule = StageSchedule(self.data.sizes(), n_options=self.data.n_options, interval=s.interval,
                                      batch_size=s.batch_size, epochs=s.epochs, seed=s.seed, mixed=s.schedule == MIXED)
        set_seed(s.seed, device_specific=True)
        with acc.main_process_first():
            if self.resume:
                self.student = Student.load(self.out / LAST / "model", device=acc.device, bf16=s.bf16)
            else:
                self.student = Student.load(s.student, device=acc.device, bf16=s.bf16, revision=self.student_commit)
        self.student.model.train()
        optimizer = torch.optim.AdamW(self.student.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        warmup = math.ceil(s.warmup_ratio * self.schedule.total_steps)
        # the scheduler is stepped once per optimizer step by this loop (not prepared: accelerate would
        # step it once per process)
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, self.schedule.total_steps)
        self.model, self.optimizer = acc.prepare(self.student.model, optimizer)

        self.step, self.curve, self.best = 0, [], None
        self.window = {"loss": torch.zeros((), device=acc.device), "labels": 0, "tokens": 0, "steps": 0}
        if self.resume:
            self._restore()

    def _restore(self) -> None:
        import torch

        saved = torch.load(self.out / LAST / "trainer.pt", map_location="cpu", weights_only=False)
        if len(saved["ranks"]) != self.accelerator.num_processes:
            raise TinyThinkerError(f"{self.out} was trained with {len(saved['ranks'])} process(es); resume it with as many "
                                   f"(now {self.accelerator.num_processes}), or pass --overwrite")
        if self.resume["sizes"] != self.schedule.sizes:
            raise TinyThinkerError(f"{self.out}: the data set changed since this run started (records {self.resume['sizes']}, "
                                   f"now {self.schedule.sizes}); pass --overwrite to start over or another --out")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        mine = saved["ranks"][self.accelerator.process_index]
        torch.set_rng_state(mine["rng"])
        if torch.cuda.is_available() and mine["cuda_rng"] is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.accelerator.device)
        self.window = {**mine["window"], "loss": mine["window"]["loss"].to(self.accelerator.device)}
        self.step, self.curve, self.best = self.resume["step"], self.resume["curve"], self.resume["best"]
        if self.is_main:  # drop log lines written after the checkpoint: the rerun writes them again
            with open(self.out / METRICS_FILE, "r+b") as handle:
                handle.truncate(self.resume["metrics_bytes"])

    # .. one optimizer step ..

    def _train_step(self, step: Step) -> None:
        import torch

        acc, student, world = self.accelerator, self.student, self.accelerator.num_processes
        share = np.array_split(step.rows, world)[acc.process_index]
        weight = 1
        if len(share) == 0:  # fewer rows than processes: run one row with no weight (DDP needs every process)
            share, weight = step.rows[:1], 0
        size = self.micro_batch_size or len(share)
        # a mixed batch is run one stage at a time (same loss and gradient: every part is weighted by
        # its label tokens below), so short recall inputs are not padded to the length of summarize inputs
        parts = [(stage, indices) for stage, _, indices in self.schedule.locate(share)] \
            if step.stage == MIXED else [(step.stage, share)]
        batches = []
        for stage, rows in parts:
            for start in range(0, len(rows), size):
                inputs, targets = self.data.records(stage, rows[start : start + size])
                batches.append(student.encode(inputs, targets, max_length=self.settings.max_length,
                                              max_input_length=self.settings.max_input_length))
        counts = [weight * _label_tokens(b["labels"], student.is_seq2seq) for b in batches]
        total = sum(counts)
        if world > 1:
            total = int(acc.reduce(torch.tensor(total, device=acc.device), reduction="sum"))
        for i, (batch, count) in enumerate(zip(batches, counts)):
            sync = contextlib.nullcontext() if i == len(batches) - 1 else acc.no_sync(self.model)
            with sync:
                loss = self.model(**{k: v.to(acc.device) for k, v in batch.items()}).loss
                # mean token NLL of the whole batch; DDP averages gradients over processes, hence x world
                acc.backward(loss * (count * world / total))
            self.window["loss"] += loss.detach().float() * count
            self.window["labels"] += count
            self.window["tokens"] += weight * int(batch["attention_mask"].sum()) + (count if student.is_seq2seq else 0)
        if self.settings.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window["steps"] += 1

    # .. logs, validation, checkpoints ..

    def _log(self, record: dict) -> None:
        if self.is_main:
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        self.accelerator.log(scalars(record), step=record["step"])  # --report-to: the same figures (no tracker: nothing)

    def _log_train(self, step: Step, seconds: float) -> float:
        import torch

        acc, w = self.accelerator, self.window
        totals = torch.stack([w["loss"], torch.tensor(float(w["labels"]), device=acc.device),
                              torch.tensor(float(w["tokens"]), device=acc.device)])
        loss_sum, labels, tokens = acc.reduce(totals, reduction="sum").tolist()
        loss = loss_sum / max(labels, 1)
        self._log({"kind": "train", "step": step.index + 1, "epoch": step.epoch + 1, "cycle": step.cycle + 1,
                   "stage": step.stage, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "steps": w["steps"],
                   "tokens": int(tokens), "seconds": seconds, "tokens_per_second": tokens / seconds if seconds > 0 else None})
        self.window = {"loss": torch.zeros((), device=acc.device), "labels": 0, "tokens": 0, "steps": 0}
        return loss

    def _validate(self, step: Step) -> dict:
        import torch

        from .pipeline import run_pipeline

        acc, began = self.accelerator, time.perf_counter()
        with acc.split_between_processes(self.items) as shard:
            traces = run_pipeline(self.student, list(shard), variant=self.settings.variant, batch_size=self.eval_batch_size,
                                  seed=self.settings.seed, progress=False) if shard else []
        correct, total = acc.reduce(torch.tensor([sum(t.correct for t in traces), len(shard)], device=acc.device),
                                    reduction="sum").tolist()
        self.student.model.train()
        point = {"cycle": step.cycle + 1, "epoch": step.epoch + 1, "step": step.index + 1,
                 "accuracy": correct / total if total else 0.0, "correct": int(correct), "questions": int(total)}
        improved = self.best is None or point["accuracy"] > self.best["accuracy"]
        self.curve.append(point)
        if improved:
            self.best = point
            self._save_best()
        self._log({"kind": "eval", **point, "best": improved, "seconds": time.perf_counter() - began})
        return point

    def _card(self, folder: Path) -> None:
        write_model_card(folder, settings=self.settings, schedule=self.schedule, is_seq2seq=self.student.is_seq2seq,
                         processes=self.accelerator.num_processes, curve=self.curve, best=self.best,
                         steps_done=self.step, eval_questions=len(self.items), data_commit=self.data_commit,
                         student_commit=self.student_commit)

    def _save_best(self) -> None:
        from .artifacts import staged_folder

        if self.is_main:
            with staged_folder(self.out / BEST, overwrite=True) as tmp:
                self.student.save(tmp)
                self._card(tmp)
        self.accelerator.wait_for_everyone()

    def _save_last(self) -> None:
        """Everything a rerun needs to continue exactly: weights, optimizer, scheduler, every process's
        RNG and unlogged window, the schedule position, the curve and the log length."""
        import torch
        from accelerate.utils import gather_object

        from .artifacts import atomic_write_text, staged_folder

        mine = {"rng": torch.get_rng_state(), "window": {**self.window, "loss": self.window["loss"].cpu()},
                "cuda_rng": torch.cuda.get_rng_state(self.accelerator.device) if self.accelerator.device.type == "cuda" else None}
        ranks = gather_object([mine])
        if self.is_main:
            with staged_folder(self.out / LAST, overwrite=True) as tmp:
                self.student.save(tmp / "model")
                torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "ranks": ranks},
                           tmp / "trainer.pt")
                state = {"step": self.step, "total_steps": self.schedule.total_steps, "sizes": self.schedule.sizes,
                         "curve": self.curve, "best": self.best,
                         "metrics_bytes": (self.out / METRICS_FILE).stat().st_size}
                atomic_write_text(tmp / "state.json", json.dumps(state, indent=1) + "\n")
        self.accelerator.wait_for_everyone()

    # .. the loop ..

    def result(self) -> SFTResult:
        return SFTResult(out=self.out, best=self.out / BEST, steps=self.step, total_steps=self.schedule.total_steps,
                         best_accuracy=None if self.best is None else self.best["accuracy"],
                         best_step=None if self.best is None else self.best["step"], curve=list(self.curve),
                         resumed_at=self.resume["step"] if self.resume else None)

    def train(self) -> SFTResult:
        from rich.progress import TextColumn

        from .progress import progress_bar

        s, schedule = self.settings, self.schedule
        if self.step >= schedule.total_steps:
            return self.result()
        if self.is_main and self.console is not None:
            limit = s.max_input_length or REFERENCE_MAX_LENGTH
            long = {stage: self.student.count_long_inputs(split["input"], limit) for stage, split in self.data.splits.items()}
            if any(long.values()):
                what = "cut to their last" if s.max_input_length else "not cut (--max-input-length caps them); over"
                self.console.print(f"inputs longer than {limit} tokens, {what} {limit}: "
                                   + ", ".join(f"{stage} {n:,} of {len(self.data.splits[stage]):,}" for stage, n in long.items()))
            where = f"resuming at step {self.step:,}" if self.resume else "starting"
            pinned = f" of {s.data} at commit {self.data_commit}" if self.data_commit else ""
            self.console.print(f"SFT {s.config}{pinned} ({s.variant}): {schedule.total_steps:,} steps = {s.epochs} epochs x "
                               f"{schedule.steps_per_epoch:,}; {schedule.describe()}; {len(self.items)} validation questions; "
                               f"{self.accelerator.num_processes} process(es) on {self.accelerator.device}; {where}")
        bar = progress_bar(TextColumn("{task.fields[info]}"), console=self.console,
                           enabled=self.progress_enabled and self.is_main)
        info = {"loss": None, "accuracy": None if self.best is None else self.best["accuracy"]}
        began = time.perf_counter()
        with bar, StopRequest() as stop:
            task = bar.add_task("SFT", total=schedule.total_steps, completed=self.step, info="")
            for step in schedule.steps(self.step):
                bar.update(task, description=f"epoch {step.epoch + 1}/{s.epochs} cycle {step.cycle + 1} {step.stage}")
                self._train_step(step)
                self.step = step.index + 1
                if (step.index + 1) % self.log_every == 0 or step.block_end:
                    info["loss"] = self._log_train(step, time.perf_counter() - began)
                    began = time.perf_counter()
                if step.cycle_end:
                    if self.items:
                        bar.update(task, description=f"validating ({len(self.items)} questions)")
                        point = self._validate(step)
                        info["accuracy"] = self.best["accuracy"]
                        if self.is_main:
                            bar.console.print(f"step {point['step']:,} (epoch {point['epoch']}, cycle {point['cycle']}): "
                                              f"validation accuracy {point['accuracy']:.4f}{' (best so far)' if point is self.best else ''}")
                    self._save_last()
                    began = time.perf_counter()
                bar.update(task, completed=self.step, info=" ".join(
                    f"{k} {v:.4f}" for k, v in info.items() if v is not None))
                stop.end_if_agreed(self.accelerator, step=self.step, total_steps=schedule.total_steps, saved=step.cycle_end,
                                   save_last=self._save_last)
        if not self.items:  # no validation: the final model is the one kept
            self._save_best()
        elif self.is_main and self.best is not None:  # the kept model's card gets the whole validation curve
            self._card(self.out / BEST)
        self.accelerator.wait_for_everyone()
        return self.result()


def train_sft(settings: SFTSettings, out, *, micro_batch_size: int | None = None, eval_batch_size: int = 64,
              log_every: int = 10, overwrite: bool = False, progress: bool = True, console=None,
              report_to: str | None = None) -> SFTResult:
    """Train (or resume, or return the finished result of) the SFT run in ``out``; see the module docstring.

    ``micro_batch_size`` cuts each process's share of a batch for memory (gradient accumulation);
    ``eval_batch_size`` is the validation pipeline's batch; ``log_every`` the steps per metrics line;
    ``report_to`` a tracker that gets the metrics lines too (tensorboard, wandb, trackio; see
    :mod:`tinythinker.tracking`).
    Ctrl-C (or SIGTERM) stops after the current step, saves ``out/last`` and raises KeyboardInterrupt;
    the same call continues from there."""
    settings = settings.resolved()
    if settings.schedule not in SCHEDULES:
        raise TinyThinkerError(f"unknown schedule {settings.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if settings.max_input_length is not None and settings.max_input_length < 1:
        raise TinyThinkerError(f"max_input_length must be at least 1, got {settings.max_input_length}")
    for name in ("interval", "epochs", "batch_size", "max_length"):
        if getattr(settings, name) < 1:
            raise TinyThinkerError(f"{name} must be at least 1, got {getattr(settings, name)}")
    if settings.lr <= 0 or not 0 <= settings.warmup_ratio <= 1:
        raise TinyThinkerError(f"lr must be positive and warmup_ratio within 0..1 (got {settings.lr}, {settings.warmup_ratio})")
    if settings.eval_limit is not None and settings.eval_limit < 0:
        raise TinyThinkerError(f"eval_limit must be 0 or more, got {settings.eval_limit}")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise TinyThinkerError(f"micro_batch_size must be at least 1, got {micro_batch_size}")
    if console is None:
        from rich.console import Console

        console = Console(stderr=True, soft_wrap=True)
    trainer = SFTTrainer(settings, Path(out), micro_batch_size=micro_batch_size, eval_batch_size=eval_batch_size,
                         log_every=log_every, overwrite=overwrite, progress=progress, console=console, report_to=report_to)
    state = trainer.resume
    if state is not None and state["step"] >= state["total_steps"]:  # finished before: nothing to do
        best = state["best"] or {}
        return SFTResult(out=trainer.out, best=trainer.out / BEST, steps=state["step"], total_steps=state["total_steps"],
                         best_accuracy=best.get("accuracy"), best_step=best.get("step"), curve=state["curve"],
                         resumed_at=state["step"])
    with _library_bars_off(), tracking(trainer.accelerator, trainer.out, {**asdict(settings), "micro_batch_size": micro_batch_size}):
        trainer.setup()
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
