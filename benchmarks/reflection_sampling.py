"""Benchmark: self-reflection sampling throughput, the engine vs plain ``generate(num_return_sequences=10)``.

Self-reflection (REFERENCE 9) samples ``--samples`` (10) recalls per training question and, for
every chosen recall, ``--samples`` analyses per option (temperature 0.7, top-k off). Both stages are
timed here on a trained student's training questions (the data set's ``recall_single`` split, as
reflection reads them), with the student's greedy recall standing in for the chosen one:

* engine: :func:`tinythinker.evaluate.engine.generate_recalls` / :func:`generate_analyses` with ``n``
  samples per prompt (batches sized by memory, finished rows leaving the batch);
* plain: per stage, prompts in file order, ``--batch-size`` sequences per batch (64: 6 prompts x 10),
  each batch re-tokenised and passed to one ``model.generate(do_sample=True, temperature=0.7,
  top_k=0, num_return_sequences=10)``.

    python benchmarks/reflection_sampling.py --student RUN/sft-full/best --data RUN/data/csqa [--questions 100]

Prints one JSON object: samples (generated sequences) per second of each and the speed-up, wall and
CPU time of this process. Sampled texts differ between the two (different random streams); the
mean length of the samples is printed for both, so that a faster engine cannot hide shorter texts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tinythinker import protocol
from tinythinker.data.splits import items_from_dataset
from tinythinker.evaluate.engine import GREEDY, MAX_NEW_TOKENS, Sampling, generate_analyses, generate_recalls
from tinythinker.students import Student


def plain_samples(student: Student, prompts: list[str], n: int, cap: int, batch_size: int, sampling: Sampling) -> list[str]:
    tokenizer, model = student.tokenizer, student.model
    tokenizer.padding_side = "right" if student.is_seq2seq else "left"
    per_batch = max(1, batch_size // n)
    texts = []
    for start in range(0, len(prompts), per_batch):
        batch = tokenizer(prompts[start : start + per_batch], padding=True, return_tensors="pt").to(student.device)
        with torch.no_grad(), student.autocast():
            ids = model.generate(**batch, max_new_tokens=cap, do_sample=True, temperature=sampling.temperature,
                                 top_k=sampling.top_k, top_p=1.0, num_beams=1, num_return_sequences=n,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        if not student.is_seq2seq:
            ids = ids[:, batch["input_ids"].shape[1] :]
        texts += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True)
    parser.add_argument("--data", required=True, help="the student's stage data set folder")
    parser.add_argument("--config", default="csqa-full")
    parser.add_argument("--questions", type=int, default=100, help="training questions sampled")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="plain generate's sequences per batch")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    student = Student.load(args.student, device=args.device)
    items = items_from_dataset(args.data, args.config, "recall_single")[: args.questions]
    sampling = Sampling(do_sample=True, temperature=0.7, top_k=0)
    n, cap = args.samples, MAX_NEW_TOKENS["recall"]
    chosen = generate_recalls(student, items, 1, GREEDY)  # the chosen recall of each question
    units = [(item, chosen[item.id][0]) for item in items]
    recall_prompts = [protocol.recall_prompt(item.question) for item in items]
    analyze_prompts = [protocol.analyze_prompt(item.question, x, recall) for item, recall in units for x in item.letters]
    student.generate(["warm up\nRecall:"], max_new_tokens=2)

    def sync():
        if student.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(run):
        sync()
        began, began_cpu = time.perf_counter(), time.process_time()
        texts = run()
        sync()
        return texts, time.perf_counter() - began, time.process_time() - began_cpu

    def words(texts):
        return round(statistics.mean(len(t.split()) for t in texts), 2)

    result = {"benchmark": "reflection_sampling", "student": args.student, "device": str(student.device),
              "threads": torch.get_num_threads(), "questions": len(items), "samples_per_prompt": n,
              "temperature": sampling.temperature, "top_k": sampling.top_k, "max_new_tokens": cap,
              "plain_batch_size": args.batch_size, "stages": {}}
    totals = {"engine": [0, 0.0, 0.0], "plain": [0, 0.0, 0.0]}
    for stage, prompts in (("recall", recall_prompts), ("analyze", analyze_prompts)):
        runs = {
            "plain": lambda: plain_samples(student, prompts, n, cap, args.batch_size, sampling),
            "engine": (lambda: [t for row in generate_recalls(student, items, n, sampling, args.seed).values() for t in row])
            if stage == "recall" else
            (lambda: [t for unit in generate_analyses(student, units, n, sampling, args.seed) for run in unit for t in run.values()]),
        }
        row = {}
        for name in ("plain", "engine"):
            texts, wall, cpu = timed(runs[name])
            row[name] = {"samples": len(texts), "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                         "samples_per_second": round(len(texts) / wall, 1), "mean_words": words(texts)}
            totals[name][0] += len(texts)
            totals[name][1] += wall
            totals[name][2] += cpu
        row["speedup"] = round(row["plain"]["seconds"] / row["engine"]["seconds"], 2)
        row["cpu_time_speedup"] = round(row["plain"]["cpu_seconds"] / row["engine"]["cpu_seconds"], 2)
        result["stages"][stage] = row
    for name, (count, wall, cpu) in totals.items():
        result[f"{name}_samples_per_second"] = round(count / wall, 1)
        result[f"{name}_samples_per_cpu_second"] = round(count / cpu, 1)
    result["speedup"] = round(result["engine_samples_per_second"] / result["plain_samples_per_second"], 2)
    result["cpu_time_speedup"] = round(result["engine_samples_per_cpu_second"] / result["plain_samples_per_cpu_second"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
