"""DPO for seq2seq and causal students alike: the loss, batches of pairs, and the reference cache.

TRL 0.29 and later train decoder-only models only, so TinyThinker owns this compact version. It
scores a response with :meth:`Student.target_logprobs` (the sum of the log-probabilities of its
tokens, eos included), which is the same for T5 and for GPT-2/Llama-style students.

The loss (REFERENCE 9) is the sigmoid DPO loss plus an NLL term on the chosen response:

    loss = mean_i -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))  +  nll_weight * NLL_chosen

``NLL_chosen`` is the mean negative log-likelihood per chosen token over the batch (all chosen
tokens of the batch pooled). That is how the reference's TRL fork computed its ``rpo_alpha`` term
(``CrossEntropyLoss`` over the chosen labels) and how TRL 1.x computes
``loss_type=["sigmoid", "sft"], loss_weights=[1, nll_weight]``, so there is one definition and the
parity test (tests/test_dpo.py) checks loss and gradients against TRL's DPOTrainer.

A batch holds the chosen sequences first and the rejected ones after (TRL's layout), so one
forward pass scores both. Reference log-probabilities come from :func:`reference_logprobs`, which
computes them once and caches them on disk under a key made of the model's and the data's
fingerprints: a rerun (a resumed iteration) reads them back instead of recomputing.

:class:`DPORun` is the training loop of one self-reflection iteration: recall-pair and
analyze-pair blocks alternate on the SFT trainer's schedule (:func:`dpo_schedule`), validation of
the whole pipeline after every cycle keeps the best checkpoint, and ``last/`` resumes exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import atomic_write_text, staged_folder
from .errors import TinyThinkerError
from .sft import BEST, LAST, StageSchedule, StopRequest, make_accelerator
from .students import IGNORE_INDEX, Student
from .tracking import scalars


def encode_pairs(student: Student, pairs: Sequence[Mapping[str, str]], max_length: int = 200) -> dict[str, torch.Tensor]:
    """One batch of 2N sequences: N (prompt, chosen) rows, then N (prompt, rejected) rows."""
    prompts = [p["prompt"] for p in pairs]
    targets = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    return student.encode(prompts + prompts, targets, max_length=max_length)


def pair_logprobs(student: Student, batch: Mapping[str, torch.Tensor], model=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probabilities of an :func:`encode_pairs` batch."""
    logps = student.target_logprobs(batch, model=model)
    return logps.chunk(2, dim=0)


def chosen_token_count(student: Student, batch: Mapping[str, torch.Tensor]) -> int:
    """Number of scored chosen tokens in an :func:`encode_pairs` batch (the NLL term's denominator):
    the label tokens :meth:`Student.target_logprobs` sums over (causal: after the shift)."""
    labels = batch["labels"] if student.is_seq2seq else batch["labels"][:, 1:]
    return int((labels[: labels.shape[0] // 2] != IGNORE_INDEX).sum())


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    nll_weight: float = 0.0,
    chosen_tokens: int | None = None,
    pairs: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO loss (mean over pairs) + ``nll_weight`` x per-token NLL of the chosen responses.

    ``pairs`` and ``chosen_tokens`` are what the two terms are averaged over: by default this
    batch's pairs; the chosen tokens must be given for the NLL term. A micro-batch of a larger
    batch (gradient accumulation, several processes) passes the whole batch's totals, so the summed
    gradients equal those of the whole batch. Returns the loss and detached metrics of these pairs
    (means over them; ``nll`` is their chosen NLL divided by ``chosen_tokens``)."""
    ref_chosen_logps = ref_chosen_logps.to(chosen_logps)
    ref_rejected_logps = ref_rejected_logps.to(rejected_logps)
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    per_pair = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    loss = per_pair.sum() / (pairs or len(per_pair))
    nll_sum = -chosen_logps.sum()
    if nll_weight:
        if not chosen_tokens:
            raise ValueError("the NLL term needs the number of chosen tokens")
        loss = loss + nll_weight * nll_sum / chosen_tokens
    with torch.no_grad():
        chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
        metrics = {
            "loss": float(loss),
            "dpo_loss": float(per_pair.mean()),
            "nll": float(nll_sum / chosen_tokens) if chosen_tokens else float("nan"),
            "reward_chosen": float(chosen_reward.mean()),
            "reward_rejected": float(rejected_reward.mean()),
            "reward_margin": float((chosen_reward - rejected_reward).mean()),
            "reward_accuracy": float((chosen_reward > rejected_reward).float().mean()),
        }
    return loss, metrics


# --- reference log-probabilities, cached on disk -------------------------------------------------

def model_fingerprint(student: Student) -> str:
    """sha256 of the weights (name, dtype, bytes, in name order) and of the tokenizer definition."""
    digest = hashlib.sha256()
    for name, tensor in sorted(student.model.state_dict().items()):
        tensor = tensor.detach().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        digest.update(tensor.contiguous().numpy().tobytes())
    backend = getattr(student.tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(student.tokenizer.get_vocab())).encode())
    return digest.hexdigest()


def data_fingerprint(pairs: Sequence[Mapping[str, str]], max_length: int) -> str:
    """sha256 of the pair texts in order and the truncation length."""
    digest = hashlib.sha256(f"max_length={max_length}\n".encode())
    for pair in pairs:
        digest.update(json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def reference_cache_path(cache_dir: str | Path, model_fp: str, data_fp: str, bf16: bool) -> Path:
    key = hashlib.sha256(f"{model_fp}|{data_fp}|bf16={bf16}".encode()).hexdigest()[:32]
    return Path(cache_dir) / f"ref-logps-{key}.pt"


def reference_logprobs(
    student: Student,
    pairs: Sequence[Mapping[str, str]],
    *,
    cache_dir: str | Path,
    batch_size: int = 64,
    max_length: int = 200,
    model_fp: str | None = None,
    progress=None,
    description: str = "reference log-probs",
) -> torch.Tensor:
    """[N, 2] (chosen, rejected) log-probabilities of ``pairs`` under ``student`` (the frozen
    reference), read from ``cache_dir`` when this model and these pairs were scored before."""
    model_fp = model_fp or model_fingerprint(student)
    path = reference_cache_path(cache_dir, model_fp, data_fingerprint(pairs, max_length), student.bf16)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    out = torch.empty((len(pairs), 2), dtype=torch.float32)
    task = progress.add_task(description, total=len(pairs)) if progress is not None else None
    was_training = student.model.training
    student.model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                chosen, rejected = pair_logprobs(student, encode_pairs(student, chunk, max_length))
                out[start : start + len(chunk), 0] = chosen.float().cpu()
                out[start : start + len(chunk), 1] = rejected.float().cpu()
                if task is not None:
                    progress.advance(task, len(chunk))
    finally:
        student.model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(out, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# --- the DPO training loop -----------------------------------------------------------------------

@dataclass(frozen=True)
class DPOSettings:
    """How one self-reflection iteration trains (defaults: REFERENCE 9; the warm-up, optimizer and
    clipping are the Hugging Face Trainer defaults the reference ran with)."""

    beta: float = 0.5
    nll_weight: float = 0.5
    lr: float = 5e-6
    batch_size: int = 32
    cycles: int = 10  # validation points per iteration (the reference ran 10 cycles and kept the best)
    max_length: int = 200
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    bf16: bool = False


def dpo_schedule(sizes: Mapping[str, int], *, batch_size: int, cycles: int, seed: int) -> StageSchedule:
    """Recall-pair and analyze-pair blocks alternating as in SFT (:class:`sft.StageSchedule`).

    One cycle is one pass over the recall pairs, then one pass over the analyze pairs: the
    reference's DPO blocks (recall ``len // batch + 1`` batches, analyze about ``len(analyze) /
    len(recall)`` times as many) rounded to whole passes. ``cycles`` cycles, each stage reshuffled
    per cycle by its own seeded generator; validation follows every cycle. Stages without pairs are
    left out."""
    sizes = {stage: n for stage, n in sizes.items() if n}
    if not sizes:
        raise ValueError("no preference pairs to train on")
    batches = [math.ceil(n / batch_size) for n in sizes.values()]
    ratio = max(math.ceil(b / batches[0]) for b in batches)
    return StageSchedule(sizes, n_options=ratio, interval=batches[0], batch_size=batch_size, epochs=cycles, seed=seed)


@dataclass
class DPOResult:
    best: Path
    steps: int
    total_steps: int
    best_accuracy: float | None
    best_step: int | None
    curve: list[dict] = field(default_factory=list)  # one point per validation
    records: list[dict] = field(default_factory=list)  # every train/eval log record, in order
    resumed_at: int | None = None


class DPORun:
    """DPO of one student on preference pairs, from ``start`` (also the frozen reference, whose
    log-probabilities ``ref_logps[stage]`` [N, 2] are precomputed), in the folder ``out``:

    * ``out/best``: the checkpoint with the best validation accuracy of the whole pipeline (greedy,
      on ``items``), checked after every cycle; with no ``items``, the final model;
    * ``out/last``: weights, optimizer, scheduler and log after the last finished cycle (or where
      Ctrl-C stopped it); a rerun with the same arguments continues from it and ends exactly as an
      uninterrupted run.

    Runs on ``accelerate`` like the SFT trainer: ``batch_size`` is the batch of one optimizer step
    over all processes, each process trains on its share (optionally in micro-batches), and both
    loss terms are normalised by the whole batch's totals. Dropout is off (as TRL's DPO trainer
    does by default), so training draws no random numbers beyond the seeded schedule."""

    def __init__(self, start, pairs: Mapping[str, Sequence[Mapping[str, str]]], ref_logps: Mapping[str, torch.Tensor],
                 settings: DPOSettings, out, *, items: Sequence = (), accelerator=None, micro_batch_size: int | None = None,
                 eval_batch_size: int = 64, log_every: int = 10, label: str = "DPO", progress: bool = True, console=None,
                 write_card: Callable[[Path, "DPORun"], None] | None = None,
                 on_checkpoint: Callable[[list[dict]], None] | None = None, tracker_offset: int = 0):
        self.start, self.settings, self.out = str(start), settings, Path(out)
        self.pairs = {stage: list(rows) for stage, rows in pairs.items() if rows}
        self.ref_logps = dict(ref_logps)
        self.items = list(items)
        self.accelerator = accelerator or make_accelerator(settings.bf16)
        self.is_main = self.accelerator.is_main_process
        self.micro_batch_size, self.eval_batch_size, self.log_every = micro_batch_size, eval_batch_size, log_every
        self.label, self.progress_enabled, self.console = label, progress, console
        self.write_card, self.on_checkpoint = write_card, on_checkpoint
        # the accelerator's tracker (--report-to) gets the log records at step tracker_offset + step:
        # iterations one after another on one axis (W&B takes only increasing steps)
        self.tracker_offset = tracker_offset
        for stage, rows in self.pairs.items():
            if tuple(self.ref_logps[stage].shape) != (len(rows), 2):
                raise ValueError(f"{stage}: {len(rows)} pairs but reference log-probs of shape {tuple(self.ref_logps[stage].shape)}")
        self.schedule = dpo_schedule({s: len(r) for s, r in self.pairs.items()}, batch_size=settings.batch_size,
                                     cycles=settings.cycles, seed=settings.seed)
        state_file = self.out / LAST / "state.json"
        self.resume = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else None

    def setup(self) -> None:
        from transformers import get_cosine_schedule_with_warmup

        s, acc = self.settings, self.accelerator
        source = self.out / LAST / "model" if self.resume else self.start
        self.student = Student.load(source, device=acc.device, bf16=s.bf16)
        self.student.model.eval()  # dropout off
        optimizer = torch.optim.AdamW(self.student.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        warmup = math.ceil(s.warmup_ratio * self.schedule.total_steps)
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, self.schedule.total_steps)
        self.model, self.optimizer = acc.prepare(self.student.model, optimizer)
        self.step, self.curve, self.best, self.records = 0, [], None, []
        self._reset_window()
        if self.resume:
            saved = torch.load(self.out / LAST / "trainer.pt", map_location="cpu", weights_only=False)
            if saved["processes"] != acc.num_processes:
                raise TinyThinkerError(f"{self.out} was trained with {saved['processes']} process(es); resume it with as many "
                                       f"(now {acc.num_processes})")
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.window = saved["window"]  # the main process's unlogged steps (logs are reduced over processes)
            self.step, self.curve, self.best, self.records = (self.resume["step"], self.resume["curve"], self.resume["best"],
                                                              self.resume["records"])

    def _reset_window(self) -> None:
        self.window = {"pairs": 0, "loss": 0.0, "dpo_loss": 0.0, "nll": 0.0, "tokens": 0, "margin": 0.0, "right": 0.0, "steps": 0}

    # .. one optimizer step ..

    def _train_step(self, step) -> None:
        acc, world, s = self.accelerator, self.accelerator.num_processes, self.settings
        rows = self.pairs[step.stage]
        share = np.array_split(step.rows, world)[acc.process_index]
        weight = 1
        if len(share) == 0:  # fewer pairs than processes: one pair with no weight (DDP needs every process)
            share, weight = step.rows[:1], 0
        size = self.micro_batch_size or len(share)
        chunks = [share[i : i + size] for i in range(0, len(share), size)]
        batches = [encode_pairs(self.student, [rows[j] for j in chunk], s.max_length) for chunk in chunks]
        tokens = [weight * chosen_token_count(self.student, b) for b in batches]
        totals = torch.tensor([sum(tokens), weight * len(share)], device=acc.device)
        if world > 1:
            totals = acc.reduce(totals, reduction="sum")
        total_tokens, total_pairs = (int(v) for v in totals.tolist())
        for i, (chunk, batch) in enumerate(zip(chunks, batches)):
            sync = contextlib.nullcontext() if i == len(batches) - 1 else acc.no_sync(self.model)
            with sync:
                chosen, rejected = pair_logprobs(self.student, batch, model=self.model)
                ref = self.ref_logps[step.stage][torch.as_tensor(chunk, dtype=torch.long)]
                loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta=s.beta, nll_weight=s.nll_weight,
                                         chosen_tokens=total_tokens, pairs=total_pairs)
                # DDP averages gradients over processes: scale so their mean is the whole batch's gradient
                acc.backward(loss * (weight * world))
            n = weight * len(chunk)
            self.window["pairs"] += n
            self.window["dpo_loss"] += metrics["dpo_loss"] * n
            self.window["nll"] += weight * float(-chosen.detach().sum())
            self.window["tokens"] += tokens[i]
            self.window["margin"] += metrics["reward_margin"] * n
            self.window["right"] += metrics["reward_accuracy"] * n
        if s.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window["steps"] += 1

    def _log_train(self, step, seconds: float) -> dict:
        acc, w, s = self.accelerator, self.window, self.settings
        keys = ("pairs", "dpo_loss", "nll", "tokens", "margin", "right")
        summed = acc.reduce(torch.tensor([float(w[k]) for k in keys], device=acc.device, dtype=torch.float64), reduction="sum")
        pairs, dpo, nll, tokens, margin, right = summed.tolist()
        record = {"kind": "train", "step": step.index + 1, "cycle": step.cycle + 1, "stage": step.stage,
                  "dpo_loss": dpo / max(pairs, 1), "nll": nll / max(tokens, 1), "reward_margin": margin / max(pairs, 1),
                  "reward_accuracy": right / max(pairs, 1), "lr": self.scheduler.get_last_lr()[0], "steps": w["steps"],
                  "pairs": int(pairs), "seconds": seconds, "pairs_per_second": pairs / seconds if seconds > 0 else None}
        record["loss"] = record["dpo_loss"] + s.nll_weight * record["nll"]
        self._record(record)
        self._reset_window()
        return record

    # .. validation and checkpoints ..

    def _validate(self, step) -> dict:
        from .pipeline import run_pipeline

        acc, began = self.accelerator, time.perf_counter()
        with acc.split_between_processes(self.items) as shard:
            traces = run_pipeline(self.student, list(shard), variant="full", batch_size=self.eval_batch_size,
                                  seed=self.settings.seed, progress=False) if shard else []
        counts = torch.tensor([sum(t.correct for t in traces), len(shard)], device=acc.device)
        correct, total = acc.reduce(counts, reduction="sum").tolist()
        self.student.model.eval()
        point = {"cycle": step.cycle + 1, "step": step.index + 1, "accuracy": correct / total if total else 0.0,
                 "correct": int(correct), "questions": int(total)}
        improved = self.best is None or point["accuracy"] > self.best["accuracy"]
        self.curve.append(point)
        if improved:
            self.best = point
            self._save_best()
        self._record({"kind": "eval", **point, "best": improved, "seconds": time.perf_counter() - began})
        return point

    def _record(self, record: dict) -> None:
        self.records.append(record)
        self.accelerator.log(scalars(record), step=self.tracker_offset + record["step"])

    def _save_best(self) -> None:
        if self.is_main:
            with staged_folder(self.out / BEST, overwrite=True) as tmp:
                self.student.save(tmp)
                if self.write_card is not None:
                    self.write_card(tmp, self)
        self.accelerator.wait_for_everyone()

    def _save_last(self) -> None:
        if self.is_main:
            with staged_folder(self.out / LAST, overwrite=True) as tmp:
                self.student.save(tmp / "model")
                torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                            "processes": self.accelerator.num_processes, "window": self.window}, tmp / "trainer.pt")
                state = {"step": self.step, "total_steps": self.schedule.total_steps, "curve": self.curve, "best": self.best,
                         "records": self.records}
                atomic_write_text(tmp / "state.json", json.dumps(state, indent=1) + "\n")
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.records)
        self.accelerator.wait_for_everyone()

    def result(self) -> DPOResult:
        return DPOResult(best=self.out / BEST, steps=self.step, total_steps=self.schedule.total_steps,
                         best_accuracy=None if self.best is None else self.best["accuracy"],
                         best_step=None if self.best is None else self.best["step"], curve=list(self.curve),
                         records=list(self.records), resumed_at=self.resume["step"] if self.resume else None)

    # .. the loop ..

    def train(self) -> DPOResult:
        from rich.progress import TextColumn

        from .progress import progress_bar

        schedule = self.schedule
        if self.step >= schedule.total_steps and (self.out / BEST).exists():
            return self.result()
        bar = progress_bar(TextColumn("{task.fields[info]}"), console=self.console,
                           enabled=self.progress_enabled and self.is_main)
        info: dict[str, float | None] = {"loss": None, "accuracy": None if self.best is None else self.best["accuracy"]}
        began = time.perf_counter()
        with bar, StopRequest() as stop:
            task = bar.add_task(self.label, total=schedule.total_steps, completed=self.step, info="")
            for step in schedule.steps(self.step):
                bar.update(task, description=f"{self.label} cycle {step.cycle + 1}/{self.settings.cycles} {step.stage}")
                self._train_step(step)
                self.step = step.index + 1
                if self.step % self.log_every == 0 or step.block_end:
                    info["loss"] = self._log_train(step, time.perf_counter() - began)["loss"]
                    began = time.perf_counter()
                if step.cycle_end:
                    if self.items:
                        bar.update(task, description=f"{self.label} validating ({len(self.items)} questions)")
                        self._validate(step)
                        info["accuracy"] = self.best["accuracy"]
                    self._save_last()
                    began = time.perf_counter()
                bar.update(task, completed=self.step, info=" ".join(f"{k} {v:.4f}" for k, v in info.items() if v is not None))
                stop.end_if_agreed(self.accelerator, step=self.step, total_steps=schedule.total_steps, saved=step.cycle_end,
                                   save_last=self._save_last)
        if not self.items:  # no validation: the final model is the one kept
            self._save_best()
        elif self.is_main and self.write_card is not None:  # the kept model's card gets the whole curve
            self.write_card(self.out / BEST, self)
        self.accelerator.wait_for_everyone()
        return self.result()
