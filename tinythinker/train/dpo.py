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

:class:`DPORun` trains one self-reflection iteration on the one training loop
(:mod:`tinythinker.train.loop`): recall-pair and analyze-pair blocks alternate on the SFT trainer's
schedule with the reference's step count (:func:`dpo_schedule`), validation of the whole pipeline
every cycle keeps the best checkpoint, and ``last/`` resumes exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tinythinker.protocol import REFERENCE_MAX_LENGTH
from tinythinker.train.settings import DPOSettings
from tinythinker.train.sft import StageSchedule
from tinythinker.students import Student
from tinythinker.runs import METRICS as METRICS_FILE
from tinythinker.train.loop import TrainLoop, chunks, read_rows


def encode_pairs(student: Student, pairs: Sequence[Mapping[str, str]], max_length: int = REFERENCE_MAX_LENGTH) -> dict[str, torch.Tensor]:
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
    return student.label_tokens(batch["labels"][: batch["labels"].shape[0] // 2])


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


def reference_cache_path(cache_dir: str | Path, model_fp: str, data_fp: str) -> Path:
    # always fp32 scores (Student.full_precision); "fp32" keeps the bf16-era files of older versions unread
    key = hashlib.sha256(f"{model_fp}|{data_fp}|fp32".encode()).hexdigest()[:32]
    return Path(cache_dir) / f"ref-logps-{key}.pt"


def reference_logprobs(
    student: Student,
    pairs: Sequence[Mapping[str, str]],
    *,
    cache_dir: str | Path,
    batch_size: int = 64,
    max_length: int = REFERENCE_MAX_LENGTH,
    model_fp: str | None = None,
    progress=None,
    description: str = "reference log-probs",
) -> torch.Tensor:
    """[N, 2] (chosen, rejected) log-probabilities of ``pairs`` under ``student`` (the frozen
    reference), read from ``cache_dir`` when this model and these pairs were scored before."""
    model_fp = model_fp or model_fingerprint(student)
    path = reference_cache_path(cache_dir, model_fp, data_fingerprint(pairs, max_length))
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    out = torch.empty((len(pairs), 2), dtype=torch.float32)
    task = progress.add_task(description, total=len(pairs)) if progress is not None else None
    was_training = student.model.training
    student.model.eval()
    try:
        with torch.no_grad(), student.full_precision():  # as DPORun.loss scores the policy
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

def dpo_steps(sizes: Mapping[str, int], batch_size: int) -> dict[str, int]:
    """The reference's DPO block lengths in steps (its ``recall_interval`` / ``analyze_interval``):
    recall ``R = r // B + 1``; analyze ``A = (a // r + 1) x R`` (``a // B + 1`` when it trains alone),
    with ``r``, ``a`` the numbers of recall and analyze pairs and ``B`` the batch size. Each is at least
    one pass over its pairs, so a block ends when its pairs are used up."""
    sizes = {stage: n for stage, n in sizes.items() if n}
    if not sizes:
        raise ValueError("no preference pairs to train on")
    first = next(iter(sizes.values()))
    recall = first // batch_size + 1
    return {stage: recall if i == 0 else (n // first + 1) * recall for i, (stage, n) in enumerate(sizes.items())}


def dpo_schedule(sizes: Mapping[str, int], *, batch_size: int, cycles: int, seed: int) -> StageSchedule:
    """The reference's DPO schedule: ``cycles x (R + A)`` steps (:func:`dpo_steps`), validation every
    ``R + A`` steps. Blocks alternate as in SFT (:class:`sft.StageSchedule`): each epoch is a pass over
    the recall pairs, then a pass over the analyze pairs (a block of R or A steps ends early when its
    pairs run out, as the reference's iterators did), each stage reshuffled per epoch by its own seeded
    generator. R + A is a little longer than an epoch, so validation falls inside epochs, and the steps
    run on past the last whole epoch. Stages without pairs are left out.

    E.g. r = 1,000, a = 3,500, B = 32: R = 32, A = 128, 1,600 steps, validation every 160 (an epoch is
    32 + 110 = 142 steps)."""
    sizes = {stage: n for stage, n in sizes.items() if n}
    blocks = dpo_steps(sizes, batch_size)
    first = next(iter(blocks.values()))
    ratio = max(n // first for n in blocks.values())  # the analyze block is a whole multiple of the recall block
    every = sum(blocks.values())
    return StageSchedule(sizes, n_options=ratio, interval=first, batch_size=batch_size, epochs=1, seed=seed,
                         max_steps=cycles * every, eval_every=every)


class DPORun(TrainLoop):
    """DPO of one student on preference pairs, from ``start`` (also the frozen reference, whose
    log-probabilities ``ref_logps[stage]`` [N, 2] are precomputed), in the folder ``out``:

    * ``out/best``: the checkpoint with the best validation accuracy of the whole pipeline (greedy,
      on ``items``), checked after every cycle; with no ``items``, the final model;
    * ``out/last``: the resume point after the last finished cycle (or where Ctrl-C stopped it); a
      rerun with the same arguments continues from it and ends exactly as an uninterrupted run;
    * ``out/metrics.jsonl``: its train and eval rows (``result().records``).

    ``batch_size`` is the batch of one optimizer step over all processes, and both loss terms are
    normalised by the whole batch's totals. Dropout is off (as TRL's DPO trainer does by default), so
    training draws no random numbers beyond the seeded schedule. ``write_card(folder, run)`` writes
    the card of a kept checkpoint; ``on_checkpoint(records)`` runs after every save of ``out/last``."""

    dropout = False
    figure_names = ("pairs", "dpo_loss", "nll", "tokens", "margin", "right")

    def __init__(self, start, pairs: Mapping[str, Sequence[Mapping[str, str]]], ref_logps: Mapping[str, torch.Tensor],
                 settings: DPOSettings, out, *, label: str = "DPO", write_card: Callable[[Path, "DPORun"], None] | None = None,
                 on_checkpoint: Callable[[list[dict]], None] | None = None, **loop):
        super().__init__(out, settings, start=start, **loop)
        self.label, self.card_writer, self.on_checkpoint = label, write_card, on_checkpoint
        self.pairs = {stage: list(rows) for stage, rows in pairs.items() if rows}
        self.ref_logps = dict(ref_logps)
        for stage, rows in self.pairs.items():
            if tuple(self.ref_logps[stage].shape) != (len(rows), 2):
                raise ValueError(f"{stage}: {len(rows)} pairs but reference log-probs of shape {tuple(self.ref_logps[stage].shape)}")
        self.schedule = dpo_schedule({s: len(r) for s, r in self.pairs.items()}, batch_size=settings.batch_size,
                                     cycles=settings.cycles, seed=settings.seed)
        self.resume_from_last()

    def batches(self, step, share: np.ndarray, size: int) -> list:
        rows, ref = self.pairs[step.stage], self.ref_logps[step.stage]
        return [(ref[torch.as_tensor(chunk, dtype=torch.long)],
                 encode_pairs(self.student, [rows[j] for j in chunk], self.settings.max_length)) for chunk in chunks(share, size)]

    def counts(self, batch) -> tuple[int, int]:
        ref, encoded = batch
        return chosen_token_count(self.student, encoded), len(ref)

    def loss(self, batch, totals: tuple[int, int]):
        (ref, encoded), s = batch, self.settings
        # fp32 even under --bf16 (which speeds up sampling): scored in bf16, the policy's sums differ from the
        # reference's by more than beta x ratio at step 0 (reference batches differ from training batches)
        with self.student.full_precision():
            chosen, rejected = pair_logprobs(self.student, encoded, model=self.model)
        loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta=s.beta, nll_weight=s.nll_weight,
                                 chosen_tokens=totals[0], pairs=totals[1])
        n = len(ref)
        return loss, {"pairs": n, "dpo_loss": metrics["dpo_loss"] * n, "nll": float(-chosen.detach().sum()),
                      "tokens": chosen_token_count(self.student, encoded), "margin": metrics["reward_margin"] * n,
                      "right": metrics["reward_accuracy"] * n}

    def figures(self, sums: dict[str, float], seconds: float) -> dict:
        pairs = max(sums["pairs"], 1)
        row = {"dpo_loss": sums["dpo_loss"] / pairs, "nll": sums["nll"] / max(sums["tokens"], 1),
               "reward_margin": sums["margin"] / pairs, "reward_accuracy": sums["right"] / pairs, "pairs": int(sums["pairs"]),
               "pairs_per_second": sums["pairs"] / seconds if seconds > 0 else None}
        return {"loss": row["dpo_loss"] + self.settings.nll_weight * row["nll"], **row}

    def write_card(self, folder: Path) -> None:
        if self.card_writer is not None:
            self.card_writer(folder, self)

    def after_checkpoint(self) -> None:
        if self.is_main and self.on_checkpoint is not None:
            self.on_checkpoint(read_rows(self.out / METRICS_FILE))
