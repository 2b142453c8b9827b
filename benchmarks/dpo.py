"""Benchmark: DPO training pairs per second, with and without cached reference log-probabilities.

Student: google-t5/t5-small's shape (d_model 512, 6+6 layers, 8 heads, d_ff 2048, vocab 32128) with
random weights and a tokenizer trained on the pairs (``--student`` times a real checkpoint instead).
Pairs have the lengths of real ones: recall and analyze pairs made from the packaged CSQA teacher
exemplars (prompt = question (+ recall), chosen = the teacher's text, rejected = another text of the
same kind), repeated to ``--pairs``.

Both modes run the real training step of :class:`tinythinker.train.dpo.DPORun` (encode, one forward pass
over chosen + rejected, DPO + NLL loss, backward, clip, AdamW, cosine schedule):

* ``cached``: the reference log-probabilities were computed once before training (what
  ``tinythinker reflect`` does; their one-off cost is reported as ``reference_pass``);
* ``uncached``: every step first scores its batch with the frozen reference model (what a trainer
  without precomputation does).

    python benchmarks/dpo.py [--pairs 128] [--batch-size 32] [--steps 4] [--device cpu|cuda] [--bf16]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from importlib import resources
from pathlib import Path


def exemplar_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Recall and analyze pairs with real lengths, from the CSQA teacher exemplars."""
    from tinythinker.protocol import analyze_prompt, recall_prompt, render_question

    exemplars = json.loads(resources.files("tinythinker").joinpath("resources/prompts/csqa_cot.json").read_text(encoding="utf-8"))
    questions = []
    for ex in exemplars:
        options = [part.split(". ", 1)[1] for part in ex["Options"].split(", ") if ". " in part]  # benchmark input only
        if len(options) != 5:
            continue
        analyses = {e[0]: e.split("Because ", 1)[1] for e in ex["Explanations"] if "Because " in e}
        questions.append((render_question(ex["Q"], options), ex["Key Information"], analyses))
    rng = random.Random(seed)
    base = []
    for i, (question, recall, analyses) in enumerate(questions):
        other = questions[(i + 1) % len(questions)][1]
        base.append({"prompt": recall_prompt(question), "chosen": recall, "rejected": other})
        letters = sorted(analyses)
        for x in letters:
            wrong = analyses[rng.choice([y for y in letters if y != x])]
            base.append({"prompt": analyze_prompt(question, x, recall), "chosen": analyses[x], "rejected": wrong})
    return [base[i % len(base)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per mode (after one untimed warm-up step)")
    parser.add_argument("--student", default=None, help="checkpoint to time (default: random t5-small shape)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    import torch
    from accelerate import Accelerator
    from transformers.utils import logging as transformers_logging

    from tinythinker.train.dpo import DPORun, DPOSettings, encode_pairs, pair_logprobs, reference_logprobs
    from tinythinker.students import Student, make_tiny_student

    transformers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pairs = exemplar_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student_path = args.student or make_tiny_student(
            "seq2seq", [p[k] for p in pairs for k in ("prompt", "chosen", "rejected")], tmp / "t5-small-shape", shape="t5-small")
        reference = Student.load(student_path, device=device, bf16=args.bf16)
        reference.model.eval()
        batch = encode_pairs(reference, pairs[: args.batch_size])
        prompt_tokens = int(batch["attention_mask"].sum()) / (2 * args.batch_size)
        response_tokens = int((batch["labels"] != -100).sum()) / (2 * args.batch_size)

        def sync():
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        sync()
        began = time.perf_counter()
        ref = reference_logprobs(reference, pairs, cache_dir=tmp / "cache", batch_size=args.batch_size)
        sync()
        reference_seconds = time.perf_counter() - began
        began = time.perf_counter()
        reference_logprobs(reference, pairs, cache_dir=tmp / "cache", batch_size=args.batch_size)
        cache_hit_seconds = time.perf_counter() - began

        settings = DPOSettings(batch_size=args.batch_size, cycles=1000, bf16=args.bf16)
        accelerator = Accelerator(mixed_precision="bf16" if args.bf16 else "no", cpu=device == "cpu")
        results = {}
        for mode in ("cached", "uncached"):
            run = DPORun(student_path, {"analyze": pairs}, {"analyze": ref.clone()}, settings, tmp / mode,
                         accelerator=accelerator, progress=False)
            run.setup()
            steps = run.schedule.steps()
            timings = []
            for k in range(args.steps + 1):
                step = next(steps)
                sync()
                began = time.perf_counter()
                if mode == "uncached":  # score this batch with the frozen reference first
                    with torch.no_grad():
                        chosen, rejected = pair_logprobs(reference, encode_pairs(reference, [pairs[i] for i in step.rows]))
                    run.ref_logps["analyze"][torch.as_tensor(step.rows)] = torch.stack([chosen, rejected], 1).float().cpu()
                run._train_step(step)
                sync()
                if k:  # the first step warms up kernels and allocators
                    timings.append(time.perf_counter() - began)
            seconds = sum(timings)
            results[mode] = {"steps": len(timings), "seconds": round(seconds, 3), "seconds_per_step": round(seconds / len(timings), 3),
                             "pairs_per_second": round(len(timings) * args.batch_size / seconds, 2)}
            del run

    report = {
        "benchmark": "dpo",
        "student": args.student or "random google-t5/t5-small shape",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "bf16": args.bf16,
        "batch_size": args.batch_size,
        "pairs": args.pairs,
        "mean_prompt_tokens": round(prompt_tokens, 1),
        "mean_response_tokens": round(response_tokens, 1),
        "reference_pass": {"pairs_per_second": round(args.pairs / reference_seconds, 2), "seconds": round(reference_seconds, 3),
                           "cache_hit_seconds": round(cache_hit_seconds, 4)},
        "cached": results["cached"],
        "uncached": results["uncached"],
        "speedup_cached": round(results["cached"]["pairs_per_second"] / results["uncached"]["pairs_per_second"], 3),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
