"""Benchmark: SFT training tokens per second, TinyThinker's trainer vs plain transformers Seq2SeqTrainer.

Same model, same records, same batch size, max length, precision, optimizer (AdamW), cosine schedule
with 10% warm-up and gradient clipping at 1.0:

* ``ours``: :func:`tinythinker.train.sft.train_sft` (the stage-interleaved schedule, one epoch, no
  validation), timed from its metrics log (one line per step);
* ``seq2seq_trainer``: ``transformers.Seq2SeqTrainer`` over the same records pre-tokenised with the
  same tokenizer, ``DataCollatorForSeq2Seq``, timed by a callback at the end of every step.

Student: google-t5/t5-small's shape (d_model 512, 6+6 layers, 8 heads, d_ff 2048, vocab 32128) with
random weights and a tokenizer trained on the records (``--shape tiny`` for a quick look). Records:
the generated CSQA world (``tinythinker world csqa``, seed 42, default size) built with
``tinythinker build`` (real stage formats and lengths), cut to ``--steps`` full batches in the
stages' proportions. A token is a non-padding
encoder token or a target token; the first step (warm-up) is left out of both timings. Each trainer
runs ``--repeats`` times in a fresh process, alternating; the best run of each counts.

    python benchmarks/sft.py [--steps 8] [--batch-size 16] [--repeats 2] [--shape t5-small] [--bf16]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("recall", "analyze", "summarize")


def batch_tokens(batch) -> int:
    return int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())


def make_data(root: Path, steps: int, batch_size: int) -> Path:
    """A csqa-full folder holding the first rows of each stage of the generated world: ``steps`` full batches."""
    from tinythinker.data.build import build_dataset
    from tinythinker.artifacts import configs_metadata, write_card, write_split
    from tinythinker.data.splits import load_stage_split
    from tinythinker.data.world import write_world

    world = write_world("csqa", root / "world")
    build_dataset("csqa", world / "raw", [world / "teacher.jsonl"], root / "built")
    splits = {stage: load_stage_split(root / "built", "csqa-full", stage) for stage in STAGES}
    total = sum(len(s) for s in splits.values())
    batches = {stage: max(1, round(steps * len(splits[stage]) / total)) for stage in STAGES}
    batches["analyze"] += steps - sum(batches.values())
    folder = root / "bench"
    for stage, split in splits.items():
        rows = split.select(range(min(len(split), batches[stage] * batch_size)))
        write_split(folder, "csqa-full", stage, list(rows), split.features)
    write_card(folder, configs_metadata(folder, {"csqa-full": list(STAGES)}), "# SFT benchmark records")
    return folder


def run_ours(args) -> dict:
    from tinythinker.train.sft import SFTSettings, train_sft

    settings = SFTSettings(data=args.data, config="csqa-full", student=args.student, interval=10**6, epochs=1, lr=5e-4,
                           batch_size=args.batch_size, max_length=args.max_length, seed=42, bf16=args.bf16, eval_limit=0)
    out = Path(args.out)
    train_sft(settings, out, log_every=1, progress=False)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "train"]
    return {"steps": len(steps), "tokens": sum(s["tokens"] for s in steps[1:]), "seconds": sum(s["seconds"] for s in steps[1:]),
            "all_tokens": sum(s["tokens"] for s in steps)}


def run_seq2seq_trainer(args) -> dict:
    import datasets
    import torch
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments, TrainerCallback)

    tokenizer = AutoTokenizer.from_pretrained(args.student)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.student)
    from tinythinker.data.splits import load_stage_split

    rows = datasets.concatenate_datasets([load_stage_split(args.data, "csqa-full", s) for s in STAGES])
    tokenized = rows.map(lambda b: tokenizer(b["input"], text_target=b["target"], truncation=True, max_length=args.max_length),
                         batched=True, remove_columns=rows.column_names)
    collate = DataCollatorForSeq2Seq(tokenizer, model=model, padding=True)
    seen: list[int] = []

    def counting_collator(features):
        batch = collate(features)
        seen.append(batch_tokens(batch))
        return batch

    ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    training = Seq2SeqTrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch_size, num_train_epochs=1, learning_rate=5e-4,
        lr_scheduler_type="cosine", warmup_steps=0.1, max_grad_norm=1.0, weight_decay=0.0, seed=42, bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(), save_strategy="no", logging_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Seq2SeqTrainer(model=model, args=training, train_dataset=tokenized, data_collator=counting_collator,
                             processing_class=tokenizer, callbacks=[StepTimer()])
    trainer.train()
    steps = len(ends)
    return {"steps": steps, "tokens": sum(seen[1:steps]), "seconds": ends[-1] - ends[0], "all_tokens": sum(seen[:steps])}


def worker(args) -> None:
    result = run_ours(args) if args.worker == "ours" else run_seq2seq_trainer(args)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shape", choices=("t5-small", "tiny"), default="t5-small")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--worker", choices=("ours", "seq2seq_trainer"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch

    from tinythinker.data.splits import load_stage_split
    from tinythinker.students import make_tiny_student

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root, args.steps, args.batch_size)
        texts = [t for s in STAGES for row in load_stage_split(root / "built", "csqa-full", s) for t in (row["input"], row["target"])]
        student = make_tiny_student("seq2seq", texts, root / "student", seed=0, shape=args.shape)
        runs: dict[str, list[dict]] = {"ours": [], "seq2seq_trainer": []}
        for repeat in range(args.repeats):
            for name in runs:
                command = [sys.executable, __file__, "--worker", name, "--data", str(data), "--student", str(student),
                           "--out", str(root / f"{name}-{repeat}"), "--batch-size", str(args.batch_size),
                           "--max-length", str(args.max_length), *(["--bf16"] if args.bf16 else [])]
                done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                if done.returncode != 0:
                    sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.split("RESULT ", 1)[1])
                result["tokens_per_second"] = result["tokens"] / result["seconds"]
                runs[name].append(result)
        best = {name: max(r["tokens_per_second"] for r in results) for name, results in runs.items()}
        assert runs["ours"][0]["all_tokens"] == runs["seq2seq_trainer"][0]["all_tokens"], "the trainers saw different tokens"
        print(json.dumps({
            "benchmark": "sft_training_tokens_per_second",
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
            "shape": args.shape, "batch_size": args.batch_size, "steps": args.steps, "max_length": args.max_length,
            "precision": "bf16" if args.bf16 else "fp32", "records": runs["ours"][0]["steps"] * args.batch_size,
            "tokens_per_run": runs["ours"][0]["all_tokens"],
            "ours_tokens_per_second": round(best["ours"], 1),
            "seq2seq_trainer_tokens_per_second": round(best["seq2seq_trainer"], 1),
            "speedup": round(best["ours"] / best["seq2seq_trainer"], 3),
            "runs": {name: [round(r["tokens_per_second"], 1) for r in results] for name, results in runs.items()},
        }, indent=1))


if __name__ == "__main__":
    main()
