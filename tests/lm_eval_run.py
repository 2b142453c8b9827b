"""The lm-eval run that test_lm_eval and test_report read: toy stage data, a tiny student that answers
one question wrong by construction, the engine's own runs and one plain `lm_eval` CLI run.

Registered once in conftest.py (``pytest_plugins``), so the session fixtures are made once a test
session (a module importing them would make its own copy, and train and evaluate again).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_data import write_stage_data

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "eval_tasks"
CAPS = {"recall": 24, "analyze": 24}  # --model_args max_new_tokens=24: fits every toy text
WRONG = ("q3",)  # the question the toy student was taught to answer wrong


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    env.pop("TINYTHINKER_DATA", None)
    result = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return result


def samples(out: Path, task: str) -> dict[str, dict]:
    """The --log_samples records of one task, by question id."""
    [path] = [p for p in out.rglob(f"samples_{task}_*.jsonl") if p.name[len(f"samples_{task}_"):][:1].isdigit()]
    return {row["doc"]["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def untimed(response: str):
    """A response without the trace's timings (the text the student wrote, and its verdict)."""
    try:
        trace = json.loads(response)
    except json.JSONDecodeError:
        return response
    return {k: v for k, v in trace.items() if k not in ("seconds", "stage_seconds")} if isinstance(trace, dict) else trace


def results(out: Path) -> dict:
    [path] = out.rglob("results_*.json")
    return json.loads(path.read_text(encoding="utf-8"))["results"]


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """Toy stage data (as data set "csqa") and a tiny student overfitted on its records, taught a wrong
    summary for q3: it answers q1, q2 and q4 right and q3 wrong by construction (even with the teacher's
    recall and analyses given), so equal accuracies mean something. It carries the card an SFT run
    writes (the report reads method and data from it)."""
    from helpers_data import overfit_student

    from tinythinker.artifacts import write_card

    root = tmp_path_factory.mktemp("lm_eval")
    data = write_stage_data(root / "data", dataset="csqa")
    path = root / "student"
    overfit_student("seq2seq", str(tmp_path_factory.getbasetemp()), WRONG).save(path)
    write_card(path, {"tinythinker": {"method": "sft", "data": str(data), "config": "csqa-full", "seed": 0}}, "# toy student")
    return root, data, path


@pytest.fixture(scope="session")
def direct(toy):
    """The engine called directly: greedy full run, both oracles, and 3 sampled runs per question."""
    from tinythinker.data.splits import items_from_dataset, oracles_from_dataset
    from tinythinker.evaluate.engine import Sampling, run_pipeline
    from tinythinker.students import Student

    _, data, path = toy
    student = Student.load(path, device="cpu")
    items = items_from_dataset(data, "csqa-full", "test")
    recalls, analyses = oracles_from_dataset(data, "csqa-full", "test")
    run = dict(progress=False, batch_size=64, seed=42, max_new_tokens=CAPS)
    return {
        "full": run_pipeline(student, items, **run),
        "analyze_oracle": run_pipeline(student, items, given_recalls=recalls, **run),
        "summarize_oracle": run_pipeline(student, items, given_recalls=recalls, given_analyses=analyses, **run),
        "sc": run_pipeline(student, items, samples=3, sampling=Sampling(do_sample=True, temperature=0.7, top_k=0), **run),
    }


def task_paths(root: Path) -> str:
    """The full task, both oracles and self-consistency with 3 samples (a task of one's own that
    includes ours, as docs/evaluation.md shows), as YAML paths for plain `lm_eval --tasks`."""
    (root / "sc3.yaml").write_text(f"include: {TASKS / 'tinythinker_csqa_sc.yaml'}\ntask: toy_csqa_sc3\nrepeats: 3\n")
    names = ["tinythinker_csqa", "tinythinker_csqa_analyze_oracle", "tinythinker_csqa_summarize_oracle"]
    return ",".join([*(str(TASKS / f"{name}.yaml") for name in names), str(root / "sc3.yaml")])


@pytest.fixture(scope="session")
def cli_run(toy) -> Path:
    """Plain `lm_eval` with the task YAML paths (loading them registers --model tinythinker), without
    --batch_size (the README's call: lm-eval's batch_size is 1); returns the --output_path folder."""
    root, data, student = toy
    out = root / "cli"
    run = cli("lm_eval", "run", "--model", "tinythinker", "--model_args", f"pretrained={student}", "max_new_tokens=24",
              "--tasks", task_paths(root), "--metadata", f"data={data}", "--device", "cpu", "--output_path", out, "--log_samples", cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    return out
