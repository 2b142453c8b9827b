"""Benchmark: one lm-eval run of the full-pipeline task versus the engine called directly on the
same questions. Prints one JSON object.

    python benchmarks/eval.py [--dataset csqa] [--questions 100] [--student DIR] [--batch-size 64]
                              [--device cpu] [--repeat 2] [--cli] [--processes 2]

The questions are the data set's real test questions (``../shared/data/raw``, when present beside the
repo) or else the questions of its generated world (``tinythinker world``, seed 42), written as a stage
data set folder (full config, test split). Without ``--student`` a tiny seq2seq student is trained for
``--steps`` steps on the records of the data set's generated world (built once into the user cache,
see :func:`tinythinker.data.splits.world_folder`), so that it writes recalls and analyses of realistic
length.

Measured (seconds, the minimum over ``--repeat`` alternating runs, model already loaded), both as
wall time and as this process's CPU time (``*_cpu_s``: robust when other jobs share the machine):

* ``engine_s``: :func:`tinythinker.evaluate.engine.run_pipeline` on the questions;
* ``lm_eval_s``: what `tinythinker eval` does around the loaded model
  (:func:`tinythinker.evaluate.harness.evaluate_tasks`): its task index (``TaskManager(include_defaults=False)``
  over our tasks; ``lm_eval_task_index_s``) + ``simple_evaluate`` of ``tinythinker_<dataset>`` with the
  ``tinythinker`` model (requests, the engine, process_results, aggregation, the environment report
  lm-eval records) + lm-eval's ``EvaluationTracker`` writing the results and the per-question samples;
* ``overhead_pct`` = (lm_eval_s - engine_s) / engine_s (and ``overhead_cpu_pct``; ``overhead_median_pct``
  from the medians of the runs); target <= 20%, task loading included;
* ``overhead_in_run_pct``: lm-eval's share measured inside one run (its wall time minus the time spent in
  the model's ``generate_until``, over the latter). On a shared machine this is the trustworthy figure:
  two separate runs of identical work can differ by 2x when other jobs take the cores;
* ``full_task_index_s``: for comparison, lm-eval's index of all its built-in tasks (what ``lm_eval``
  and, before, `tinythinker eval` build on every run).

``--cli`` also times the commands end to end (startup included; ``--repeat`` rounds, alternating; wall
and CPU time of the command with its subprocesses), as a user runs them:
`tinythinker infer`, `tinythinker eval`, and the README's plain ``lm_eval --tasks
eval_tasks/tinythinker_<dataset>.yaml --model tinythinker --model_args pretrained=...`` (no
``--batch_size``: lm-eval's default of 1); target for the latter: <= 1.3 x infer + 15 s.
The environment report lm-eval records (``pip list`` and a dozen other subprocesses) is cached per
environment after the first evaluation (:func:`tinythinker.evaluate.harness.environment_report`);
``--cold-env-report`` deletes that cache before every lm-eval run, to measure first runs. ``--threads 1``
on a busy machine: torch's threads spin-wait when other jobs hold the cores.
``--processes N`` (with ``--cli``) also runs that plain call data parallel, ``accelerate launch
--multi_gpu --num_processes N`` (on CPUs: gloo), and compares every question's verdict with the
one-process run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
RAW = REPO.parent / "shared" / "data" / "raw"


def questions_folder(dataset: str, n: int, out: Path) -> tuple[Path, str]:
    """A stage data set folder whose ``{dataset}-full`` test split holds ``n`` questions."""
    from tinythinker.artifacts import configs_metadata, write_card, write_split
    from tinythinker.protocol import recall_prompt, summarize_target
    from tinythinker.data.records import FEATURES
    from tinythinker.data.sources import load_questions
    from tinythinker.data.world import write_world

    source = RAW / dataset
    if not source.exists():
        source = write_world(dataset, out.parent / f"{out.name}-world", overwrite=True) / "raw"
    split = load_questions(dataset, str(source), seed=42).splits
    questions = (split["test"] + split["validation"] + split["train"])[:n]
    rows = [{"id": q.id, "stage": "recall", "option": "", "question": q.text, "choices": list(q.options),
             "input": recall_prompt(q.text), "target": summarize_target(q.answer), "GT": q.answer,
             "teacher_recall": "", "teacher_analyses": []} for q in questions]
    config = f"{dataset}-full"
    write_split(out, config, "test", rows, FEATURES)
    write_card(out, configs_metadata(out, {config: ["test"]}), f"# {len(rows)} {dataset} questions (benchmark)")
    return out, "real" if source.parent == RAW else "world"


def quick_student(dataset: str, out: Path, steps: int, shape: str = "tiny") -> str:
    """A tiny seq2seq student trained briefly on the generated world's stage records (a fixed seed)."""
    import random

    import torch

    from tinythinker.data.splits import load_split
    from tinythinker.students import Student, make_tiny_student

    records = [(row["input"], row["target"]) for split in ("recall", "analyze", "summarize")
               for row in load_split("world", dataset, "full", split)]
    path = make_tiny_student("seq2seq", [text for pair in records for text in pair], out, seed=0, shape=shape)
    student = Student.load(path, device="cpu")
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=3e-3)
    rng = random.Random(0)
    torch.manual_seed(0)
    student.model.train()
    for _ in range(steps):
        prompts, targets = zip(*rng.sample(records, 32))
        student.model(**student.encode(list(prompts), list(targets))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    student.save(path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="csqa", choices=["csqa", "obqa", "strategyqa"])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--student", help="checkpoint (default: a tiny student trained briefly on the generated world's data)")
    parser.add_argument("--steps", type=int, default=150, help="training steps of the default student")
    parser.add_argument("--shape", default="tiny", choices=["tiny", "t5-small"], help="shape of the default student")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cli", action="store_true", help="also time `tinythinker infer`, `tinythinker eval` and plain `lm_eval` end to end")
    parser.add_argument("--processes", type=int, default=0, help="with --cli: also the plain lm_eval call under accelerate launch, N processes")
    parser.add_argument("--cold-env-report", action="store_true", help="delete the cached environment report before every lm-eval run")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lm_eval.tasks import TaskManager

    from tinythinker.evaluate.harness import evaluate_tasks, resolve_tasks
    from tinythinker.evaluate.tasks import tasks_folder
    from tinythinker.evaluate.lm_eval_model import TinyThinkerLM
    from tinythinker.data.splits import items_from_dataset
    from tinythinker.evaluate.engine import run_pipeline

    work = Path(tempfile.mkdtemp(prefix="tinythinker-bench-eval-"))
    data, origin = questions_folder(args.dataset, args.questions, work / "data")
    items = items_from_dataset(data, f"{args.dataset}-full", "test")
    student_path = args.student or quick_student(args.dataset, work / "student", args.steps, args.shape)
    lm = TinyThinkerLM(pretrained=student_path, batch_size=args.batch_size, device=args.device, progress=False)
    student = lm.student
    student.generate(["warm up"], max_new_tokens=4)  # first-call initialisation counts for neither side
    task = f"tinythinker_{args.dataset}"

    def direct():
        began, cpu = time.perf_counter(), time.process_time()
        traces = run_pipeline(student, items, batch_size=args.batch_size, seed=42, progress=False)
        return time.perf_counter() - began, time.process_time() - cpu, traces

    def through_lm_eval():  # what `tinythinker eval` does around the loaded model
        cold_env_report(args)
        lm.engine_seconds = 0.0
        began, cpu = time.perf_counter(), time.process_time()
        out = evaluate_tasks(lm, tasks=[task], metadata={"data": str(data)}, output_path=str(work / "lm_eval"), log_samples=True)
        return time.perf_counter() - began, time.process_time() - cpu, lm.engine_seconds, out

    engine_runs, lm_eval_runs = [], []
    for _ in range(args.repeat):  # alternate, so drifting machine load hits both sides alike
        engine_runs.append(direct())
        lm_eval_runs.append(through_lm_eval())
    began = time.perf_counter()
    resolve_tasks([task], [str(tasks_folder())])  # the task index `tinythinker eval` builds (inside lm_eval_s too)
    index_s = time.perf_counter() - began
    began = time.perf_counter()
    TaskManager(include_path=str(tasks_folder()))  # lm-eval's index of all its built-in tasks, for comparison
    full_index_s = time.perf_counter() - began
    engine_s, engine_cpu_s, traces = min(engine_runs, key=lambda r: r[0])
    lm_eval_s, lm_eval_cpu_s, inside_s, out = min(lm_eval_runs, key=lambda r: r[0])
    engine_cpu_s, lm_eval_cpu_s = min(r[1] for r in engine_runs), min(r[1] for r in lm_eval_runs)
    by_id = {s["doc"]["id"]: s for s in out["samples"][task]}
    same = all(json.loads(by_id[t.id]["filtered_resps"][0])["summary"] == t.summary for t in traces)
    result = {
        "dataset": args.dataset, "questions": len(items), "questions_from": origin, "device": str(student.device),
        "threads": args.threads, "batch_size": args.batch_size, "cold_env_report": args.cold_env_report, "student": f"{args.shape} seq2seq, {args.steps} steps on world data" if not args.student else student_path,
        "repeat": args.repeat,
        "engine_s": round(engine_s, 3),
        "lm_eval_s": round(lm_eval_s, 3),
        "lm_eval_task_index_s": round(index_s, 3),
        "lm_eval_inside_model_s": round(inside_s, 3),
        "overhead_s": round(lm_eval_s - engine_s, 3),
        "overhead_pct": round(100 * (lm_eval_s - engine_s) / engine_s, 2),
        # the medians of the runs: less sensitive than the minima to one run that other jobs left alone
        "overhead_median_pct": round(100 * (median(r[0] for r in lm_eval_runs) - median(r[0] for r in engine_runs))
                                     / median(r[0] for r in engine_runs), 2),
        "full_task_index_s": round(full_index_s, 3),
        "engine_cpu_s": round(engine_cpu_s, 3),
        "lm_eval_cpu_s": round(lm_eval_cpu_s, 3),
        "overhead_cpu_pct": round(100 * (lm_eval_cpu_s - engine_cpu_s) / engine_cpu_s, 2),
        "overhead_in_run_s": round(lm_eval_s - inside_s, 3),
        "overhead_in_run_pct": round(100 * (lm_eval_s - inside_s) / inside_s, 2),
        "engine_runs_s": [round(r[0], 3) for r in engine_runs],
        "lm_eval_runs_s": [round(r[0], 3) for r in lm_eval_runs],
        "words_per_question": round(sum(len((t.recall or "").split()) + sum(len(a.split()) for a in t.analyses.values())
                                        + len(t.summary.split()) for t in traces) / len(traces), 1),
        "accuracy_engine": sum(t.correct for t in traces) / len(traces),
        "accuracy_lm_eval": out["results"][task]["acc,none"],
        "same_traces": same,
    }
    if args.cli:
        result["cli"] = cli_times(args, data, student_path, work)
    print(json.dumps(result))


def free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def cold_env_report(args) -> None:
    if args.cold_env_report:
        import shutil

        from tinythinker.evaluate.harness import _user_cache

        shutil.rmtree(_user_cache() / "env-report", ignore_errors=True)


def cli_times(args, data: Path, student: str, work: Path) -> dict:
    """`tinythinker infer`, `tinythinker eval` and the README's plain `lm_eval` call end to end, as a
    user runs them (startup included); with ``--processes`` the plain call data parallel too."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    common = ["--student", student, "--data", str(data), "--config", f"{args.dataset}-full", "--device", args.device,
              "--gen-batch-size", str(args.batch_size)]
    task_file = REPO / "eval_tasks" / f"tinythinker_{args.dataset}.yaml"
    plain = ["--tasks", str(task_file), "--model", "tinythinker", "--model_args", f"pretrained={student}",
             "--metadata", f"data={data}", "--device", args.device, "--log_samples"]
    commands = {
        "tinythinker_infer_s": ["tinythinker", "infer", *common, "--out", str(work / "infer.jsonl"), "--overwrite"],
        # a fresh --out each round (ROUND): `tinythinker eval` resumes from the request cache it keeps there
        "tinythinker_eval_s": ["tinythinker", "eval", *common, "--tasks", f"tinythinker_{args.dataset}", "--out", str(work / "eval" / "ROUND")],
        "plain_lm_eval_s": ["lm_eval", *plain, "--output_path", str(work / "plain")],
    }
    if args.processes > 1:  # "PORT": a free port, picked afresh for every run
        launch = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes), "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "PORT", "-m"]
        commands[f"plain_lm_eval_{args.processes}_processes_s"] = [*launch, "lm_eval", *plain, "--output_path", str(work / "parallel")]
    import resource

    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(args.repeat):  # alternate, so drifting machine load hits every command alike
        for name, argv in commands.items():
            run_env = {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""} if name.endswith("processes_s") else env
            cold_env_report(args)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            argv = [free_port() if a == "PORT" else a.replace("ROUND", str(round_)) for a in argv]
            run = subprocess.run([sys.executable, "-m", *argv], env=run_env, capture_output=True, text=True)
            walls[name].append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if run.returncode != 0:
                (work / f"{name}.stderr").write_text(run.stderr)
                raise SystemExit(f"{name} failed (its stderr: {work / f'{name}.stderr'}):\n{run.stderr[-2000:]}")
    times: dict = {}
    for name in commands:  # the minimum over the repeats; CPU time of the command and its subprocesses
        times[name] = round(min(walls[name]), 3)
        times[name.removesuffix("_s") + "_cpu_s"] = round(min(cpus[name]), 3)
        times[name.removesuffix("_s") + "_runs_s"] = [round(w, 3) for w in walls[name]]
    times["plain_lm_eval_over_infer"] = round(times["plain_lm_eval_s"] / times["tinythinker_infer_s"], 2)
    times["plain_lm_eval_over_infer_cpu"] = round(times["plain_lm_eval_cpu_s"] / times["tinythinker_infer_cpu_s"], 2)
    times["plain_lm_eval_target_s"] = round(1.3 * times["tinythinker_infer_s"] + 15, 3)
    summary = json.loads((work / "infer.summary.json").read_text())
    times["accuracy_infer"] = summary["accuracy"]
    task = f"tinythinker_{args.dataset}"
    verdicts = {}
    for name in ("eval", "plain", "parallel"):
        if (work / name).exists():
            results = sorted((work / name).rglob("results_*.json"))[-1]  # the last of the --repeat runs
            times[f"accuracy_{name}"] = json.loads(results.read_text())["results"][task]["acc,none"]
            samples = results.parent / f"samples_{task}_{results.stem.removeprefix('results_')}.jsonl"
            verdicts[name] = {row["doc"]["id"]: row["acc"] for row in map(json.loads, samples.read_text().splitlines())}
    if "parallel" in verdicts:
        times["questions_parallel"] = len(verdicts["parallel"])
        times["verdicts_parallel_equal_one_process"] = verdicts["parallel"] == verdicts["plain"]
    return times


if __name__ == "__main__":
    main()
