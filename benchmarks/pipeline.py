"""Benchmark: questions per second of the batched three-stage engine vs a straightforward pipeline.

Both run the same student on the same CSQA questions with greedy decoding and the same per-stage
``max_new_tokens`` and batch size. The straightforward pipeline is what one writes first: for each
stage, its prompts in file order (questions, then options in label order), fixed batches of
``--batch-size``, each batch re-tokenised from text with ``padding=True`` and passed to one
``model.generate`` call. The engine is :func:`tinythinker.evaluate.engine.run_pipeline`.

Two kinds of student:

* a trained checkpoint (``--student`` with ``--data``): e.g. the quickstart's world student, on the
  questions of ``--splits`` of its data set (default test, then validation; ``--questions`` 400), at
  the pipeline's own caps (96 / 96 / 16 tokens: a trained student stops at eos long before). This
  is the real case: the engine's batches sized by memory, finished rows leaving the batch and its
  lean decoding loop all pay here.
* the compute-bound control (default): google-t5/t5-small's shape (``--shape t5-base`` for
  t5-base's) with random weights and a tokenizer trained on the benchmark's CSQA questions. A random
  model never emits eos, so every generation runs to its stage's ``max_new_tokens``: we set those to
  the median length (in the student's tokens) of the stage's targets in the CSQA teacher exemplars,
  i.e. the length a trained student would generate (see :func:`break_the_echo` for why its texts
  are not empty). Here the goal is to be no slower.

    python benchmarks/pipeline.py [--questions 100] [--shape t5-small] [--raw ../shared/data/raw/csqa]
    python benchmarks/pipeline.py --student RUN/sft-full/best --data RUN/data/csqa --questions 400
    python benchmarks/pipeline.py ... --device cuda

Prints one JSON object: wall and CPU seconds (CPU time of this process is the steadier figure on a
shared machine), questions/second, speed-up, and whether answers and every stage's texts agree.
It exits non-zero when the greedy answers differ (unless ``--engine-bf16`` makes the numerics differ
on purpose). Figures and what dominates the remaining time: docs/students.md, "Speed".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

from tinythinker import protocol
from tinythinker.data.sources import load_questions
from tinythinker.data.splits import Item, items_from_dataset
from tinythinker.evaluate.engine import MAX_NEW_TOKENS, run_pipeline
from tinythinker.students import Student, make_tiny_student

REPO = Path(__file__).resolve().parents[1]


def straightforward_pipeline(student: Student, items: list[Item], caps: dict[str, int], batch_size: int) -> list[dict]:
    """The reference-style loop: per stage, fixed batches in file order, text re-tokenised per batch."""
    tokenizer, model = student.tokenizer, student.model
    tokenizer.padding_side = "right" if student.is_seq2seq else "left"

    def generate(prompts: list[str], cap: int) -> list[str]:
        texts = []
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], padding=True, return_tensors="pt").to(student.device)
            with torch.no_grad(), student.autocast():
                ids = model.generate(**batch, max_new_tokens=cap, do_sample=False, num_beams=1,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            if not student.is_seq2seq:
                ids = ids[:, batch["input_ids"].shape[1] :]
            texts += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return texts

    recalls = [protocol.ensure_period(t) for t in generate([protocol.recall_prompt(i.question) for i in items], caps["recall"])]
    units = [(i, r, x) for i, r in zip(items, recalls) for x in i.letters]
    analyzed = generate([protocol.analyze_prompt(i.question, x, r) for i, r, x in units], caps["analyze"])
    analyses: list[dict[str, str]] = [{} for _ in items]
    by_id = {item.id: k for k, item in enumerate(items)}
    for (item, _, x), text in zip(units, analyzed):
        analyses[by_id[item.id]][x] = protocol.ensure_period(text)
    summaries = generate([protocol.summarize_prompt(i.question, r, a) for i, r, a in zip(items, recalls, analyses)], caps["summarize"])
    return [{"recall": r, "analyses": a, "summary": s, "answer": protocol.parse_answer(s)}
            for r, a, s in zip(recalls, analyses, summaries)]


def break_the_echo(student: Student) -> None:
    """Redraw the decoder's final norm weights at random. A random T5 ties its output to its input
    embeddings, so it would repeat its start token (pad) forever and every generated text would be
    empty; with random norm weights it emits varied tokens, and the prompts of later stages grow as
    long as a trained student's would."""
    norm = student.model.get_decoder().final_layer_norm if student.is_seq2seq else student.model.model.norm
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(0)))


def exemplar_caps(student: Student) -> dict[str, int]:
    """Median token length (with eos) of each stage's targets in the CSQA teacher exemplars."""
    exemplars = json.loads(resources.files("tinythinker").joinpath("resources/prompts/csqa_cot.json").read_text(encoding="utf-8"))
    recalls = [e["Key Information"] for e in exemplars]
    analyses = [line.split("Because ", 1)[1] for e in exemplars for line in e["Explanations"] if "Because " in line]
    summaries = [protocol.summarize_target(x) for x in protocol.LETTERS[:5]]

    def median_tokens(texts):
        return int(statistics.median(len(ids) + 1 for ids in student.tokenizer(texts, add_special_tokens=False)["input_ids"]))

    return {"recall": median_tokens(recalls), "analyze": median_tokens(analyses), "summarize": median_tokens(summaries)}


def time_split(student: Student, run) -> dict:
    """Where the time of ``run()`` goes: seconds in the encoder, the decoder stack and the output
    projection (seq2seq), measured with forward hooks; the rest is Python, padding and bookkeeping.
    Why this matters: at identical greedy texts every sequence still needs its encoder pass and its
    decoder steps, so only what is outside them (and padding) is the engine's to save."""
    model, spent, began = student.model, {}, {}

    def timed(name, module):
        def start(*_):
            began[name] = time.perf_counter()

        def stop(*_):
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - began[name]

        return [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]

    parts = {"lm_head": model.get_output_embeddings()}
    if student.is_seq2seq:
        parts.update(encoder=model.get_encoder(), decoder=model.get_decoder())
    else:
        parts.update(decoder=model.get_decoder())
    handles = [handle for name, module in parts.items() for handle in timed(name, module)]
    try:
        total = time.perf_counter()
        run()
        total = time.perf_counter() - total
    finally:
        for handle in handles:
            handle.remove()
    split = {name: round(seconds / total, 3) for name, seconds in spent.items()}
    split["other"] = round(1 - sum(spent.values()) / total, 3)
    return {"seconds": round(total, 2), "fractions": split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=str(REPO.parent / "shared" / "data" / "raw" / "csqa"), help="CSQA raw folder")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--student", default=None, help="checkpoint to time (default: a random model of --shape)")
    parser.add_argument("--data", default=None, help="the student's stage data set folder: its questions instead of --raw's")
    parser.add_argument("--config", default="csqa-full", help="config of --data")
    parser.add_argument("--splits", default="test,validation", help="splits of --data whose questions are used, in order")
    parser.add_argument("--kind", choices=("seq2seq", "causal"), default="seq2seq", help="random student's kind")
    parser.add_argument("--shape", choices=("t5-small", "t5-base"), default="t5-small", help="random student's shape")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--engine-batch-size", type=int, default=None,
                        help="the engine's sequences per batch (default: sized by its memory budget)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both pipelines")
    parser.add_argument("--engine-bf16", action="store_true", help="bf16 autocast in the engine only (fp32 baseline)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each pipeline (best is reported)")
    parser.add_argument("--split", action="store_true", help="one more engine run, timed per model part (encoder, decoder, lm_head)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.data:
        items = [item for split in args.splits.split(",") for item in items_from_dataset(args.data, args.config, split)]
        items = items[: args.questions]
    else:
        questions = load_questions("csqa", args.raw).splits["test"][: args.questions]  # test = official dev
        items = [Item(q.id, q.text, q.letters, q.answer) for q in questions]
    with tempfile.TemporaryDirectory() as tmp:
        if args.student is None:
            texts = [protocol.recall_prompt(item.question) for item in items]
            folder = make_tiny_student(args.kind, texts, Path(tmp) / "student", shape=args.shape, seed=0)
            student_name = f"random {args.kind} {args.shape} shape"
        else:
            folder, student_name = args.student, args.student
        student = Student.load(folder, bf16=args.bf16, device=args.device)
    if args.student is None:
        break_the_echo(student)
    caps = exemplar_caps(student) if args.student is None else dict(MAX_NEW_TOKENS)

    student.generate(["warm up\nRecall:"], max_new_tokens=2)
    timings = {"engine": [], "baseline": []}
    cpu_times = {"engine": [], "baseline": []}  # CPU seconds of this process: steadier than wall time on a shared machine
    for repeat in range(args.repeats):  # alternate the order: the machine's load drifts
        for name in ("baseline", "engine") if repeat % 2 == 0 else ("engine", "baseline"):
            began, began_cpu = time.perf_counter(), time.process_time()
            if name == "baseline":
                student.bf16 = args.bf16
                baseline = straightforward_pipeline(student, items, caps, args.batch_size)
            else:
                student.bf16 = args.bf16 or args.engine_bf16
                traces = run_pipeline(student, items, batch_size=args.engine_batch_size, max_new_tokens=caps, progress=False)
            if student.device.type == "cuda":
                torch.cuda.synchronize()
            timings[name].append(time.perf_counter() - began)
            cpu_times[name].append(time.process_time() - began_cpu)

    def agreement(key):
        pairs = list(zip([getattr(t, key) for t in traces], [b[key] for b in baseline]))
        return sum(a == b for a, b in pairs) / len(pairs)

    best = {name: min(values) for name, values in timings.items()}
    best_cpu = {name: min(values) for name, values in cpu_times.items()}
    result = {
        "benchmark": "pipeline",
        "device": str(student.device) + ("" if student.device.type == "cpu" else f" ({torch.cuda.get_device_name()})"),
        "threads": torch.get_num_threads(),
        "student": student_name,
        "bf16": {"baseline": args.bf16, "engine": args.bf16 or args.engine_bf16},
        "questions": len(items),
        "data": [args.data, args.config, args.splits] if args.data else args.raw,
        "batch_size": {"baseline": args.batch_size, "engine": args.engine_batch_size or "memory budget"},
        "max_new_tokens": caps,
        "baseline_seconds": round(best["baseline"], 2),
        "engine_seconds": round(best["engine"], 2),
        "baseline_questions_per_second": round(len(items) / best["baseline"], 3),
        "engine_questions_per_second": round(len(items) / best["engine"], 3),
        "speedup": round(best["baseline"] / best["engine"], 2),
        "baseline_cpu_seconds": round(best_cpu["baseline"], 2),
        "engine_cpu_seconds": round(best_cpu["engine"], 2),
        "cpu_time_speedup": round(best_cpu["baseline"] / best_cpu["engine"], 2),
        "identical_answers": [t.answer for t in traces] == [b["answer"] for b in baseline],
        "answered": sum(t.answer is not None for t in traces),
        "identical_text_fraction": {"recall": agreement("recall"), "analyses": agreement("analyses"), "summary": agreement("summary")},
        "all_timings": {name: [round(v, 2) for v in values] for name, values in timings.items()},
        "all_cpu_times": {name: [round(v, 2) for v in values] for name, values in cpu_times.items()},
    }
    if args.split:
        student.bf16 = args.bf16 or args.engine_bf16
        result["engine_time_split"] = time_split(
            student, lambda: run_pipeline(student, items, batch_size=args.engine_batch_size, max_new_tokens=caps, progress=False))
    print(json.dumps(result))
    if not result["identical_answers"] and not args.engine_bf16:
        sys.exit("the engine's greedy answers differ from the straightforward pipeline's")


if __name__ == "__main__":
    main()
