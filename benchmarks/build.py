"""Benchmark `tinythinker build` on a CSQA-sized input; prints one JSON object.

Generates (untimed) a raw CSQA folder of 9,741 train + 1,221 dev questions and a reference-format
responses file (``[request, response]`` pairs with the full few-shot request, no ids: matched by
text) with 8 samples per train question (a few cut off, malformed or disagreeing), then times
``build_dataset`` in a child process and reports its wall time and peak resident memory.

    python benchmarks/build.py [--questions 9741] [--samples 8] [--workdir DIR]

Target on the project's 2-core machine: under 10 s and under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "river stone garden window bread winter teacher market engine forest candle music letter bottle shadow "
    "doctor kitchen bridge island paper mirror camera desert rocket pillow ladder violin castle planet tunnel "
    "farmer helmet jacket lemon magnet needle orange parrot quilt rabbit saddle tiger umbrella valley wagon "
    "anchor basket cactus dragon feather glove hammer iceberg jungle kettle lantern meadow nest ocean"
).split()


def _phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_inputs(folder: Path, n_train: int, n_dev: int, samples: int, seed: int = 0) -> tuple[Path, Path]:
    """A raw CSQA folder and a reference-format responses file for its train-file questions."""
    from tinythinker.data.sources import Question
    from tinythinker.data.teacher.requests import build_request

    rng = random.Random(seed)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    letters = "ABCDE"
    train_questions = []
    for filename, count in (("train_rand_split.jsonl", n_train), ("dev_rand_split.jsonl", n_dev)):
        with (raw / filename).open("w", encoding="utf-8") as handle:
            for i in range(count):
                qid = f"{filename[:3]}{i:06d}"
                stem = f"Where would you find a {_phrase(rng, 3)} next to the {_phrase(rng, 2)} {i}?"
                options = [_phrase(rng, rng.randint(1, 3)) for _ in letters]
                answer = rng.choice(letters)
                row = {
                    "answerKey": answer,
                    "id": qid,
                    "question": {"stem": stem, "choices": [{"label": x, "text": t} for x, t in zip(letters, options)]},
                }
                handle.write(json.dumps(row) + "\n")
                if filename.startswith("train"):
                    train_questions.append(Question(qid, stem, tuple(options), answer))

    responses = folder / "responses.jsonl"
    with responses.open("w", encoding="utf-8") as handle:
        for q in train_questions:
            request = build_request(q, dataset="csqa", model="gpt-4o-2024-05-13", seed=42)["body"]
            choices = []
            for k in range(samples):
                answer = q.answer if rng.random() > 0.05 else rng.choice(letters)
                lines = [f"Key Information: {_phrase(rng, rng.randint(18, 35))}."]
                for x in letters:
                    verdict = "correct" if x == answer else "incorrect"
                    lines.append(f"{x} is {verdict}. Because {_phrase(rng, rng.randint(12, 22))}.")
                lines[1] = "Explanations: " + lines[1]
                if rng.random() < 0.03:
                    del lines[3]  # a missing option
                finish = "length" if rng.random() < 0.02 else "stop"
                choices.append({"index": k, "message": {"role": "assistant", "content": "\n".join(lines)}, "finish_reason": finish})
            response = {"id": f"chatcmpl-{q.id}", "object": "chat.completion", "model": "gpt-4o-2024-05-13", "choices": choices}
            handle.write(json.dumps([request, response]) + "\n")
    return raw, responses


def _child(raw: str, responses: str, out: str) -> None:
    """The timed part, alone in its process so that peak memory is the build's own."""
    start = time.perf_counter()
    from tinythinker.data.build import build_dataset

    result = build_dataset("csqa", raw, [responses], out, seed=42, overwrite=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = usage.ru_maxrss
    rows = sum(sum(splits.values()) for splits in result.counts.values())
    train = result.selection.counts["train"]
    # cpu_s (user + sys, imports included) is what a busy shared machine cannot inflate
    print(json.dumps({"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                      "peak_rss_mb": round(peak_kib / 1024, 1), "rows": rows,
                      "samples": train.samples, "selected": train.selected}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=9741, help="questions in the raw train file")
    parser.add_argument("--dev", type=int, default=1221)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tinythinker-bench-"))
    try:
        t0 = time.perf_counter()
        raw, responses = write_inputs(workdir, args.questions, args.dev, args.samples)
        generate_s = time.perf_counter() - t0
        out = workdir / "out"
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(raw), str(responses), str(out)],
            check=True, capture_output=True, text=True,
        )
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        parquet_mb = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 2**20
        print(json.dumps({
            "benchmark": "build",
            "questions": args.questions,
            "samples_per_question": args.samples,
            "responses_mb": round(responses.stat().st_size / 2**20, 1),
            "generate_s": round(generate_s, 2),
            **measured,
            "parquet_mb": round(parquet_mb, 1),
            "target": {"wall_s": 10, "peak_rss_mb": 1024},
        }))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
