"""The TinyThinker tasks through the real lm-eval CLI (subprocesses), against the engine called directly.

One tiny seq2seq student, trained for a few dozen steps on the toy stage data (so it answers some
questions right and some wrong), is evaluated by ``python -m lm_eval`` with ``--model tinythinker``,
by lm-eval's stock ``--model hf`` on the summarize-oracle task, and by ``tinythinker eval``; every
per-question trace must equal what :func:`tinythinker.pipeline.run_pipeline` makes on the same questions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_data import TOY_QUESTIONS, all_texts, stage_records, write_stage_data

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "eval_tasks"
CAPS = {"recall": 24, "analyze": 24}  # --model_args max_new_tokens=24: a half-trained student rambles


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    env.pop("TINYTHINKER_DATA", None)
    result = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return result


def samples(out: Path, task: str) -> dict[str, dict]:
    """The --log_samples records of one task, by question id."""
    [path] = [p for p in out.rglob(f"samples_{task}_*.jsonl") if p.name[len(f"samples_{task}_"):][:1].isdigit()]
    return {row["doc"]["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def results(out: Path) -> dict:
    [path] = out.rglob("results_*.json")
    return json.loads(path.read_text(encoding="utf-8"))["results"]


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """Toy stage data (as data set "csqa") and a tiny student trained briefly on its records, with
    the card an SFT run writes (the report reads method and data from it)."""
    import torch

    from tinythinker.artifacts import write_card
    from tinythinker.students import Student, make_tiny_student

    root = tmp_path_factory.mktemp("lm_eval")
    data = write_stage_data(root / "data", dataset="csqa")
    path = make_tiny_student("seq2seq", all_texts(), root / "student", seed=0, d_model=32, layers=1, heads=2, d_ff=64, vocab_size=400)
    torch.set_num_threads(2)
    student = Student.load(path, device="cpu")
    prompts, targets = zip(*stage_records())
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=1e-2)
    student.model.train()
    torch.manual_seed(0)
    for _ in range(60):
        loss = student.model(**student.encode(list(prompts), list(targets))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    student.save(path)
    write_card(path, {"tinythinker": {"method": "sft", "data": str(data), "config": "csqa-full", "seed": 0}}, "# toy student")
    return root, data, path


@pytest.fixture(scope="session")
def direct(toy):
    """The engine called directly: greedy full run, both oracles, and 3 sampled runs per question."""
    from tinythinker.pipeline import Sampling, items_from_dataset, oracles_from_dataset, run_pipeline
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


@pytest.fixture(scope="session")
def cli_run(toy) -> Path:
    """Plain `lm_eval` with the task YAML paths (loading them registers --model tinythinker): the
    full task, both oracles and self-consistency; returns the --output_path folder."""
    root, data, student = toy
    out = root / "cli"
    # self-consistency with 3 samples: a task of one's own that includes ours (as docs/evaluation.md shows)
    (root / "sc3.yaml").write_text(f"include: {TASKS / 'tinythinker_csqa_sc.yaml'}\ntask: toy_csqa_sc3\nrepeats: 3\n")
    names = ["tinythinker_csqa", "tinythinker_csqa_analyze_oracle", "tinythinker_csqa_summarize_oracle"]
    run = cli("lm_eval", "run", "--model", "tinythinker", "--model_args", f"pretrained={student}", "max_new_tokens=24",
              "--tasks", ",".join([*(str(TASKS / f"{name}.yaml") for name in names), str(root / "sc3.yaml")]), "--metadata", f"data={data}",
              "--device", "cpu", "--batch_size", "64", "--output_path", out, "--log_samples", cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_lm_eval_cli_runs_the_engine(cli_run, direct):
    from tinythinker import evaluation as ev
    from tinythinker.pipeline import vote

    out = cli_run
    metrics = results(out)

    # the full pipeline: the same trace per question as the engine, so the same accuracy
    full = samples(out, "tinythinker_csqa")
    assert set(full) == {q.id for q in TOY_QUESTIONS}
    for trace in direct["full"]:
        logged = json.loads(full[trace.id]["filtered_resps"][0])
        assert (logged["recall"], logged["analyses"], logged["summary"], logged["answer"]) == \
               (trace.recall, trace.analyses, trace.summary, trace.answer)
        assert full[trace.id]["acc"] == float(trace.correct)
    accuracy = sum(t.correct for t in direct["full"]) / len(direct["full"])
    assert metrics["tinythinker_csqa"]["acc,none"] == pytest.approx(accuracy)
    assert 0 < sum(t.correct for t in direct["full"] + direct["summarize_oracle"])  # the student is not hopeless ...
    assert not all(t.correct for t in direct["full"] + direct["summarize_oracle"])  # ... nor perfect: equality means something

    # the oracles: the teacher's text replaces the student's, as run_pipeline(given_*) does
    for kind in ("analyze_oracle", "summarize_oracle"):
        logged = samples(out, f"tinythinker_csqa_{kind}")
        for trace in direct[kind]:
            assert logged[trace.id]["acc"] == float(trace.correct), (kind, trace.id)
    for trace in direct["analyze_oracle"]:
        assert json.loads(samples(out, "tinythinker_csqa_analyze_oracle")[trace.id]["filtered_resps"][0])["analyses"] == trace.analyses
    for trace in direct["summarize_oracle"]:  # plain generation of the summarize prompt, cut at "\n"
        assert samples(out, "tinythinker_csqa_summarize_oracle")[trace.id]["filtered_resps"][0] == trace.summary

    # self-consistency: three sampled traces per question, the engine's vote
    voted = vote(direct["sc"])
    sc = samples(out, "toy_csqa_sc3")
    for q in TOY_QUESTIONS:
        traces = [json.loads(r) for r in sc[q.id]["filtered_resps"][0]]
        assert [t["answer"] for t in traces] == [t.answer for t in direct["sc"] if t.id == q.id]
        assert sc[q.id]["acc"] == float(voted[q.id] == q.answer)

    # attribution from the logged samples equals attribution from the engine's own runs
    from_samples = ev.attribution(*({qid: bool(row["acc"]) for qid, row in samples(out, f"tinythinker_csqa{suffix}").items()}
                                    for suffix in ("", "_analyze_oracle", "_summarize_oracle")))
    from_engine = ev.attribution(*({t.id: t.correct for t in direct[kind]} for kind in ("full", "analyze_oracle", "summarize_oracle")))
    assert from_samples == from_engine


def test_stock_hf_model_runs_the_summarize_oracle(toy, direct):
    """The summarize-oracle task is an ordinary generate_until task: lm-eval's own hf model runs it
    (found by name through --include_path) and agrees with the engine."""
    root, data, student = toy
    out = root / "hf"
    run = cli("lm_eval", "--model", "hf", "--model_args", f"pretrained={student},backend=seq2seq",
              "--include_path", TASKS, "--tasks", "tinythinker_csqa_summarize_oracle", "--metadata", f"data={data}",
              "--device", "cpu", "--batch_size", "8", "--output_path", out, "--log_samples", cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    logged = samples(out, "tinythinker_csqa_summarize_oracle")
    for trace in direct["summarize_oracle"]:
        assert logged[trace.id]["filtered_resps"][0] == trace.summary
        assert logged[trace.id]["acc"] == float(trace.correct)


def test_tinythinker_eval_resumes_from_its_request_cache(toy, direct):
    """`tinythinker eval` finds the tasks by name (it registers the model first) and, with no --data,
    reads the data set the student's card names; a rerun of the same command answers every greedy
    request from the cache it wrote."""
    root, data, student = toy
    out = root / "eval"
    args = ("tinythinker", "eval", "--student", student, "--config", "csqa-full", "--output-path", out,
            "--limit", "2", "--device", "cpu", "--model_args", "max_new_tokens=24")
    first = cli(*args, cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Cached requests: 0, Requests remaining: 6" in first.stderr  # 2 questions x 3 tasks
    assert "the data set the student's card names" in first.stderr
    logged = samples(out, "tinythinker_csqa")
    assert [json.loads(logged[t.id]["filtered_resps"][0])["summary"] for t in direct["full"][:2]] == [t.summary for t in direct["full"][:2]]
    second = cli(*args, cwd=root)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Cached requests: 6, Requests remaining: 0" in second.stderr


def test_tinythinker_eval_user_errors(tmp_path):
    run = cli("tinythinker", "eval", "--student", "x", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.startswith("Error: say what to evaluate")
    run = cli("tinythinker", "eval", "--config", "csqa-bogus", "--student", "x", cwd=tmp_path)
    assert run.returncode == 2 and "variant one of" in run.stderr and "Traceback" not in run.stderr
