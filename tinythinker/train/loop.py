"""The one training loop of SFT (:mod:`tinythinker.train.sft`) and DPO (:mod:`tinythinker.train.dpo`), on accelerate.

A phase subclasses :class:`TrainLoop`, sets ``self.schedule`` (a :class:`sft.StageSchedule`) and gives
what differs: how a step's rows become micro-batches (:meth:`~TrainLoop.batches`), what a micro-batch's
loss is normalised by (:meth:`~TrainLoop.counts`), the loss (:meth:`~TrainLoop.loss`), the figures of a
train row (:meth:`~TrainLoop.figures`) and the model card (:meth:`~TrainLoop.write_card`). The loop owns
the rest:

* one optimizer step per scheduled batch (AdamW, cosine schedule with warm-up, gradient clipping). Each
  process trains on its share of the batch, optionally cut into micro-batches, and the loss is
  normalised by the whole batch's totals, so processes and micro-batches change speed and memory, not
  the result (beyond floating-point rounding);
* ``OUT/metrics.jsonl``: a train row every ``log_every`` steps and at the end of every block, an eval
  row after every validation; :meth:`TrainLoop.write_row` writes every row;
* after every cycle: validation of the whole pipeline (:func:`validate`), the best checkpoint in
  ``OUT/best`` and the resume point ``OUT/last`` (:func:`write_state`: the model as a checkpoint folder
  ``last/model``, and in ``resume.json`` + ``resume.safetensors`` the optimizer, the lr scheduler, the
  schedule, :class:`Counters`, and every process's RNG states and :class:`Window`). A rerun continues
  from it bit for bit. It is data only, never a pickle: a run folder is copied and shared, and
  unpickling a file can run any code (an old pickled ``last/`` is refused, :func:`read_last`);
* Ctrl-C or SIGTERM: every process stops after the same step (``set_trigger`` / ``check_trigger``),
  saves ``OUT/last`` and raises KeyboardInterrupt; a second signal acts at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tinythinker.errors import TinyThinkerError
from tinythinker.runs import BEST, LAST, METRICS as METRICS_FILE
from tinythinker.students import distributed_on_cpus
from tinythinker.train.settings import LoopOptions
from tinythinker.train.tracking import TRACKING_DIR, check_report_to, restart_at, scalars

STATE_FILE, TENSORS_FILE = "resume.json", "resume.safetensors"  # OUT/last besides model/
# what accelerate's save_state wrote (and torch.save writes): pickles, which are never read from a run folder
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
TENSOR = "__tensor__"  # {TENSOR: name} stands in resume.json for the tensor ``name`` of resume.safetensors


# --- accelerate ------------------------------------------------------------------------------------

def make_accelerator(bf16: bool, report_to: str | None = None, out: Path | None = None):
    """The run's ``accelerate`` state: bf16 autocast or not; several launched processes on a machine
    without accelerators train on the CPUs; ``report_to`` a tracker (:mod:`tinythinker.train.tracking`)
    writing into the run folder ``out``."""
    from accelerate import Accelerator

    log_with = check_report_to(report_to)  # before anything is written: a missing package is one line
    try:
        return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=distributed_on_cpus(), log_with=log_with,
                           project_dir=str(Path(out) / TRACKING_DIR) if log_with else None)
    except ValueError as error:  # e.g. bf16 on a GPU without it
        raise TinyThinkerError(f"cannot set up training ({error}); leave --bf16 out on this hardware") from None


def validate(accelerator, student, items: Sequence, *, variant: str, batch_size: int, seed: int,
             max_new_tokens: int | None = None) -> dict:
    """Greedy accuracy of the whole pipeline on ``items``, shared out between processes, in fp32 whatever
    ``bf16``: the checkpoint is chosen by what ``eval`` (fp32) will measure. ``max_new_tokens``: the
    recall and analyze cap (:func:`~tinythinker.evaluate.engine.stage_caps`; None: the engine's)."""
    from tinythinker.evaluate.engine import run_pipeline, stage_caps

    with accelerator.split_between_processes(list(items)) as shard, student.full_precision():
        traces = run_pipeline(student, list(shard), variant=variant, batch_size=batch_size, seed=seed,
                              max_new_tokens=stage_caps(max_new_tokens), progress=False) if shard else []
    counts = torch.tensor([sum(t.correct for t in traces), len(shard)], device=accelerator.device)
    correct, total = accelerator.reduce(counts, reduction="sum").tolist()
    return {"accuracy": correct / total if total else 0.0, "correct": int(correct), "questions": int(total)}


def chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    """``rows`` cut into micro-batches of at most ``size``."""
    return [rows[start : start + size] for start in range(0, len(rows), size)]


# --- what a checkpoint holds besides the model and optimizer -----------------------------------------

@dataclass
class Counters:
    """Where a run is (one copy: every process holds the same)."""

    step: int = 0
    total_steps: int = 0
    curve: list[dict] = field(default_factory=list)  # one point per validation
    best: dict | None = None
    stopped_early: bool = False  # validation had stopped rising (the phase's patience) before the last step
    metrics_bytes: int = 0  # length of metrics.jsonl at the checkpoint: a rerun drops the rows after it
    processes: int = 1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class Window:
    """The figures summed since the last train row, per process (each sums its own share; a row reduces
    them over processes). A checkpoint keeps every process's sums, so a resumed process continues its own."""

    def __init__(self, accelerator, names: Sequence[str]):
        self.accelerator, self.names = accelerator, tuple(names)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Any] = dict.fromkeys(self.names, 0)
        self.steps = 0

    def add(self, figures: dict, weight: int) -> None:
        for name in self.names:
            self.sums[name] = self.sums[name] + figures[name] * weight

    def reduce(self) -> dict[str, float]:
        device = self.accelerator.device
        values = torch.stack([torch.as_tensor(self.sums[name], dtype=torch.float64, device=device) for name in self.names])
        return dict(zip(self.names, self.accelerator.reduce(values, reduction="sum").tolist()))

    def state_dict(self) -> dict:
        """This process's sums (the checkpoint keeps every process's)."""
        return {"sums": {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.sums.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in state["sums"].items()}
        self.steps = state["steps"]


# --- the resume point OUT/last: JSON and safetensors, never a pickle ---------------------------------

def rng_state() -> dict:
    """This process's random generators, as accelerate's save_state kept them: python, numpy, torch's CPU and CUDA ones."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]  # JSON made the tuples lists
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def load_optimizer(optimizer, saved: dict) -> None:
    """``optimizer`` continued from its state_dict as :func:`read_state` gives it back."""
    # JSON keys are strings and its lists were tuples (AdamW's betas): give the state_dict its own types again
    groups = [{k: tuple(v) if isinstance(mine.get(k), tuple) else v for k, v in group.items()}
              for group, mine in zip(saved["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": {int(k): v for k, v in saved["state"].items()}, "param_groups": groups})


def _split(value, name: str, tensors: dict):
    """``value`` with every tensor moved into ``tensors`` (named by its path) and a {TENSOR: name} in its place."""
    if torch.is_tensor(value):
        tensors[name] = value.detach().cpu().contiguous()
        return {TENSOR: name}
    if isinstance(value, dict):
        return {str(k): _split(v, f"{name}/{k}" if name else str(k), tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{name}/{i}" if name else str(i), tensors) for i, v in enumerate(value)]
    return value


def _join(value, tensors: dict):
    """The inverse of :func:`_split`."""
    if isinstance(value, dict):
        return tensors[value[TENSOR]] if value.keys() == {TENSOR} else {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def write_state(folder: Path, state: dict) -> None:
    """``state`` (plain values and tensors, nested) as ``folder/resume.json`` and ``folder/resume.safetensors``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    plain = _split(state, "", tensors)
    save_file(tensors, folder / TENSORS_FILE)
    (folder / STATE_FILE).write_text(json.dumps(plain), encoding="utf-8")


def read_state(folder: Path) -> dict:
    """What :func:`write_state` wrote (JSON and safetensors: reading them runs no code)."""
    from safetensors.torch import load_file

    return _join(json.loads((folder / STATE_FILE).read_text(encoding="utf-8")), load_file(folder / TENSORS_FILE))


def read_last(folder: Path) -> dict | None:
    """The :class:`Counters` of the checkpoint in ``folder``, read without loading it (None: no checkpoint).

    A ``last/`` holding pickles (accelerate's save_state, or older) is refused unread: unpickling runs code."""
    if not folder.exists():
        return None
    pickles = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise TinyThinkerError(f"{folder}: the resume point of an older TinyThinker version, in a pickle format ({pickles[0]}) "
                               f"that is not read for safety (a pickle can run any code); delete {folder} to restart "
                               "the run from its beginning, or pass --overwrite to start over")
    if not (folder / STATE_FILE).exists():
        raise TinyThinkerError(f"{folder}: a checkpoint of an older TinyThinker version, which this one cannot resume; "
                               f"delete {folder} to restart the run from its beginning")
    return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["counters"]


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (none when it is not there)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


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


@dataclass
class TrainResult:
    out: Path
    best: Path
    steps: int
    total_steps: int
    best_accuracy: float | None
    best_step: int | None
    curve: list[dict] = field(default_factory=list)  # one point per validation: cycle, (epoch,) step, accuracy
    resumed_at: int | None = None  # the step a rerun continued from (None: started fresh)
    stopped_early: bool = False  # ended by the patience rule before total_steps

    @property
    def records(self) -> list[dict]:
        """Every row of the run's metrics.jsonl, in order."""
        return read_rows(self.out / METRICS_FILE)


# --- the loop ---------------------------------------------------------------------------------------

class TrainLoop:
    """One training run in ``out`` from the checkpoint ``start`` (see the module docstring).

    ``settings`` has the optimizer's fields (lr, warmup_ratio, weight_decay, max_grad_norm), ``seed``,
    ``bf16`` and the ``variant`` validation runs; ``options`` are :class:`LoopOptions` fields. Every
    row also goes to the experiment tracker (``--report-to``) of ``tracker`` (an accelerator; default:
    the loop's own) at step ``tracker_offset`` + the row's step."""

    label = "train"  # the progress bar's name
    dropout = True  # False: train in eval mode (DPO, as TRL's DPO trainer does)
    log_epochs = False  # rows and curve points name the epoch besides the cycle
    figure_names: tuple[str, ...] = ()  # the figures :meth:`loss` returns, summed until a train row

    def __init__(self, out, settings, *, start: str, revision: str | None = None, items: Sequence = (), progress: bool = True,
                 console=None, accelerator=None, tracker=None, tracker_offset: int = 0, **options):
        self.out, self.settings, self.start, self.revision = Path(out), settings, str(start), revision
        self.items, self.options = list(items), LoopOptions(**options)
        self.progress_enabled, self.console = progress, console
        # an accelerator of its own unless the phase gives one (SFT's carries its tracker)
        self.accelerator = accelerator or make_accelerator(settings.bf16)
        self.tracker, self.tracker_offset = tracker or self.accelerator, tracker_offset
        self.is_main = self.accelerator.is_main_process
        self.counters = Counters(processes=self.accelerator.num_processes)
        self.window = Window(self.accelerator, self.figure_names)
        self.resume: dict | None = None  # the counters of OUT/last when the run continues from it

    # .. what a phase gives ..

    def batches(self, step, share: np.ndarray, size: int) -> list:
        """This process's ``share`` of a step's rows as micro-batches of at most ``size`` rows."""
        raise NotImplementedError

    def counts(self, batch) -> tuple[int, ...]:
        """What the loss of a micro-batch is normalised by (the loop sums them over the whole batch)."""
        raise NotImplementedError

    def loss(self, batch, totals: tuple[int, ...]):
        """(loss of the micro-batch normalised by the whole batch's ``totals``, its figures to sum)."""
        raise NotImplementedError

    def figures(self, sums: dict[str, float], seconds: float) -> dict:
        """A train row's figures (``loss`` among them) from the window's sums over every process."""
        raise NotImplementedError

    def write_card(self, folder: Path) -> None:
        """The model card of a kept checkpoint."""

    def announce(self) -> None:
        """Says what the run is before it trains."""

    def after_checkpoint(self) -> None:
        """Runs after every save of ``OUT/last``."""

    # .. setup and resume ..

    def resume_from_last(self) -> None:
        """Continue from ``OUT/last`` when there is one: its counters now, the rest in :meth:`setup`."""
        self.resume = read_last(self.out / LAST)
        if self.resume is None:
            return
        if self.resume["processes"] != self.accelerator.num_processes:
            raise TinyThinkerError(f"{self.out} was trained with {self.resume['processes']} process(es); resume it with as many "
                                   f"(now {self.accelerator.num_processes}), or pass --overwrite")
        self.counters.load_state_dict(self.resume)

    def setup(self) -> None:
        """The student (from ``OUT/last`` when resuming), the optimizer and scheduler, and ``OUT/last`` restored."""
        from accelerate.utils import set_seed
        from transformers import get_cosine_schedule_with_warmup

        from tinythinker.students import Student

        s, acc, total = self.settings, self.accelerator, self.schedule.total_steps
        self.counters.total_steps = total
        set_seed(s.seed, device_specific=True)
        with acc.main_process_first():  # a Hub student is downloaded once
            self.student = Student.load(self.out / LAST / "model" if self.resume else self.start, device=acc.device, bf16=s.bf16,
                                        revision=None if self.resume else self.revision)
        self.student.model.train(self.dropout)
        optimizer = torch.optim.AdamW(self.student.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        # not prepared: accelerate would step it once per process; this loop steps it once per optimizer step
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(s.warmup_ratio * total), total)
        self.model, self.optimizer = acc.prepare(self.student.model, optimizer)
        if self.resume:  # the model was loaded from last/model above
            try:
                self._restore(read_state(self.out / LAST))
            except TinyThinkerError as error:  # the schedule refuses another data set
                raise TinyThinkerError(f"{self.out}: {error}; pass --overwrite to start over or another --out") from None

    def _state(self, ranks: list[dict]) -> dict:
        """What ``OUT/last`` holds besides the model; ``ranks``: every process's :meth:`_rank_state`."""
        return {"counters": self.counters.state_dict(), "schedule": self.schedule.state_dict(),
                "scheduler": self.scheduler.state_dict(), "optimizer": self.optimizer.state_dict(), "ranks": ranks}

    def _rank_state(self) -> dict:
        return {"rng": rng_state(), "window": self.window.state_dict()}

    def _restore(self, state: dict) -> None:
        """The run continued from :meth:`_state` (every process reads it and takes its own rank's part)."""
        self.schedule.load_state_dict(state["schedule"])  # first: it refuses another data set
        self.counters.load_state_dict(state["counters"])
        self.scheduler.load_state_dict(state["scheduler"])
        load_optimizer(self.optimizer, state["optimizer"])
        mine = state["ranks"][self.accelerator.process_index]
        self.window.load_state_dict(mine["window"])
        set_rng_state(mine["rng"])

    # .. one optimizer step ..

    def _train_step(self, step) -> None:
        acc, world, s = self.accelerator, self.accelerator.num_processes, self.settings
        share, weight = np.array_split(step.rows, world)[acc.process_index], 1
        if len(share) == 0:  # fewer rows than processes: one row with no weight (DDP needs every process)
            share, weight = step.rows[:1], 0
        batches = self.batches(step, share, self.options.micro_batch_size or len(share))
        totals = torch.tensor(np.sum([self.counts(b) for b in batches], axis=0) * weight, device=acc.device)
        if world > 1:
            totals = acc.reduce(totals, reduction="sum")
        totals = tuple(int(v) for v in totals.tolist())
        for i, batch in enumerate(batches):
            with contextlib.nullcontext() if i == len(batches) - 1 else acc.no_sync(self.model):
                loss, figures = self.loss(batch, totals)
                # DDP averages gradients over processes: scale so that their mean is the whole batch's gradient
                acc.backward(loss * (weight * world))
            self.window.add(figures, weight)
        if s.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window.steps += 1

    # .. rows, validation, checkpoints ..

    def write_row(self, row: dict) -> dict:
        """One row of ``OUT/metrics.jsonl``, the run's log (the main process writes), and of the tracker."""
        if self.is_main:
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        self.tracker.log(scalars(row), step=self.tracker_offset + row["step"])  # no tracker: nothing
        return row

    def _position(self, step) -> dict:
        return {"step": step.index + 1, **({"epoch": step.epoch + 1} if self.log_epochs else {}), "cycle": step.cycle + 1}

    def _log_train(self, step, seconds: float) -> dict:
        sums, steps = self.window.reduce(), self.window.steps
        self.window.reset()
        return self.write_row({"kind": "train", **self._position(step), "stage": step.stage, **self.figures(sums, seconds),
                               "lr": self.scheduler.get_last_lr()[0], "steps": steps, "seconds": seconds})

    def _validate(self, step) -> dict:
        began, c = time.perf_counter(), self.counters
        point = {**self._position(step), **validate(self.accelerator, self.student, self.items, variant=self.settings.variant,
                                                    batch_size=self.options.eval_batch_size, seed=self.settings.seed,
                                                    max_new_tokens=self.settings.max_new_tokens)}
        self.student.model.train(self.dropout)
        improved = c.best is None or point["accuracy"] > c.best["accuracy"]
        c.curve.append(point)
        if improved:
            c.best = point
            self._save_best()
        self.write_row({"kind": "eval", **point, "best": improved, "seconds": time.perf_counter() - began})
        return point

    def _save_best(self) -> None:
        from tinythinker.artifacts import staged_folder

        if self.is_main:
            with staged_folder(self.out / BEST, overwrite=True) as tmp:
                self.student.save(tmp)
                self.write_card(tmp)
        self.accelerator.wait_for_everyone()

    def _save_last(self) -> None:
        """``OUT/last``, written by the main process into a temporary folder beside it and renamed into place."""
        from accelerate.utils import gather_object

        from tinythinker.artifacts import staged_folder

        ranks = gather_object([self._rank_state()])  # every process's RNG and window sums, for the main process to write
        if self.is_main:
            self.counters.metrics_bytes = (self.out / METRICS_FILE).stat().st_size
            with staged_folder(self.out / LAST, overwrite=True) as tmp:
                self.student.save(tmp / "model")  # a checkpoint folder, loadable on its own
                write_state(tmp, self._state(ranks))
        self.accelerator.wait_for_everyone()
        self.after_checkpoint()

    def result(self) -> TrainResult:
        c = self.counters
        return TrainResult(out=self.out, best=self.out / BEST, steps=c.step, total_steps=c.total_steps,
                           best_accuracy=None if c.best is None else c.best["accuracy"],
                           best_step=None if c.best is None else c.best["step"], curve=list(c.curve),
                           resumed_at=self.resume["step"] if self.resume else None, stopped_early=c.stopped_early)

    @property
    def finished(self) -> bool:
        c = self.counters
        return (c.stopped_early or c.step >= c.total_steps > 0) and (self.out / BEST).exists()

    @property
    def patience(self) -> int | None:
        """Validations in a row without a new best after which the run stops (None: it runs to the end)."""
        return None

    def _stopped_rising(self) -> bool:
        c = self.counters
        return bool(self.patience and c.best is not None
                    and sum(point["step"] > c.best["step"] for point in c.curve) >= self.patience)

    # .. the loop ..

    def _progress(self):
        from rich.progress import TextColumn

        from tinythinker.progress import progress_bar

        return progress_bar(TextColumn("{task.fields[info]}"), console=self.console, enabled=self.progress_enabled and self.is_main)

    def _describe(self, step) -> str:
        schedule = self.schedule
        if self.log_epochs:
            return f"{self.label} epoch {step.epoch + 1}/{schedule.epochs} cycle {step.cycle + 1} {step.stage}"
        return f"{self.label} cycle {step.cycle + 1}/{schedule.cycles} {step.stage}"

    def train(self) -> TrainResult:
        c, acc, total = self.counters, self.accelerator, self.schedule.total_steps
        if self.finished:
            return self.result()
        self.announce()
        if self.is_main:  # a fresh run starts an empty log; a resumed one drops the rows written after its checkpoint
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / METRICS_FILE, "a+b") as handle:
                handle.truncate(c.metrics_bytes)
        if self.resume:
            restart_at(self.tracker, self.tracker_offset + c.step + 1)
        info = {"loss": None, "accuracy": None if c.best is None else c.best["accuracy"]}
        began = time.perf_counter()
        with self._progress() as bar, StopRequest() as stop:
            task = bar.add_task(self.label, total=total, completed=c.step, info="")
            for step in self.schedule.steps(c.step):
                bar.update(task, description=self._describe(step))
                self._train_step(step)
                c.step = step.index + 1
                if c.step % self.options.log_every == 0 or step.block_end:
                    info["loss"] = self._log_train(step, time.perf_counter() - began)["loss"]
                    began = time.perf_counter()
                if step.cycle_end:
                    if self.items:
                        bar.update(task, description=f"{self.label} validating ({len(self.items)} questions)")
                        point = self._validate(step)
                        info["accuracy"] = c.best["accuracy"]
                        if self.is_main:
                            where = ", ".join(f"{k} {point[k]}" for k in ("epoch", "cycle") if k in point)
                            bar.console.print(f"{self.label} step {point['step']:,} ({where}): validation accuracy "
                                              f"{point['accuracy']:.4f}{' (best so far)' if point is c.best else ''}")
                        c.stopped_early = c.step < total and self._stopped_rising()
                        if c.stopped_early and self.is_main:
                            bar.console.print(f"{self.label} stopped at step {c.step:,}: {self.patience} validations without a new "
                                              f"best (the best, {c.best['accuracy']:.4f}, at step {c.best['step']:,})")
                    self._save_last()
                    began = time.perf_counter()
                bar.update(task, completed=c.step, info=" ".join(f"{k} {v:.4f}" for k, v in info.items() if v is not None))
                if c.stopped_early:  # every process decided the same (the same curve)
                    break
                if stop.requested:
                    acc.set_trigger()
                if c.step < total and acc.check_trigger():  # every process stops after the same step
                    if not step.cycle_end:
                        self._save_last()
                    raise KeyboardInterrupt(f"stopped at step {c.step:,} of {total:,}")
        if not self.items:  # no validation: the final model is the one kept
            self._save_best()
        elif self.is_main and c.best is not None:  # the kept model's card gets the whole validation curve
            self.write_card(self.out / BEST)
        acc.wait_for_everyone()
        return self.result()
