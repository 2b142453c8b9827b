"""The TinyThinker tasks through the real lm-eval CLI (subprocesses), against the engine called directly.

One tiny seq2seq student, overfitted on the toy stage data and taught a wrong summary for one question
(so it answers three right and one wrong, by construction: tests/lm_eval_run.py), is evaluated by
``python -m lm_eval`` with ``--model tinythinker`` (in one process, and data parallel in two under
``accelerate launch``), by lm-eval's stock ``--model hf`` on the summarize-oracle task, and by
``tinythinker eval``; every per-question trace must equal what
:func:`tinythinker.evaluate.engine.run_pipeline` makes on the same questions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers_data import TOY_QUESTIONS
from lm_eval_run import REPO, TASKS, WRONG, cli, results, samples, task_paths, untimed

def test_lm_eval_cli_runs_the_engine(cli_run, direct):
    from tinythinker.evaluate import metrics as ev_metrics
    from tinythinker.evaluate.engine import vote

    out = cli_run
    metrics = results(out)
    # lm-eval's default batch_size of 1 does not reach the engine: it sizes its batches by memory
    [config] = [json.loads(p.read_text())["config"] for p in out.rglob("results_*.json")]
    assert config["batch_size"] == 1 and config["tinythinker_gen_batch_size"] == "auto" and config["tinythinker_processes"] == 1

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
    # neither hopeless nor perfect, by construction (the toy fixture): equality means something
    assert {t.id for t in direct["full"] if not t.correct} == {t.id for t in direct["summarize_oracle"] if not t.correct} == set(WRONG)

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
    from_samples = ev_metrics.attribution(*({qid: bool(row["acc"]) for qid, row in samples(out, f"tinythinker_csqa{suffix}").items()}
                                    for suffix in ("", "_analyze_oracle", "_summarize_oracle")))
    from_engine = ev_metrics.attribution(*({t.id: t.correct for t in direct[kind]} for kind in ("full", "analyze_oracle", "summarize_oracle")))
    assert from_samples == from_engine


def test_two_processes_answer_their_share_with_one_process_verdicts(toy, cli_run):
    """`accelerate launch --multi_gpu --num_processes 2 -m lm_eval ...` on CPUs (gloo): each process
    answers only every second question (its request cache holds only its share), rank 0 gathers and
    writes the results, and every greedy verdict and trace is the one-process run's. Three questions:
    lm-eval pads the process with fewer by repeating its last request."""
    import socket

    from sqlitedict import SqliteDict

    from tinythinker.evaluate import metrics as ev_metrics

    root, data, student = toy
    out = root / "two"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               "-m", "lm_eval", "run", "--model", "tinythinker", "--model_args", f"pretrained={student}", "max_new_tokens=24",
               "--tasks", task_paths(root), "--metadata", f"data={data}", "--limit", "3",
               "--output_path", str(out), "--log_samples", "--use_cache", str(out / "cache" / "requests")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    env.pop("TINYTHINKER_DATA", None)
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(out.rglob("results_*.json"))) == 1  # rank 0 writes
    [config] = [json.loads(p.read_text())["config"] for p in out.rglob("results_*.json")]
    assert config["tinythinker_processes"] == 2

    # each process answered its share: q1, q3 on rank 0 and q2 on rank 1, 4 tasks each
    shares = [set(SqliteDict(str(out / "cache" / f"requests_rank{rank}.db")).keys()) for rank in (0, 1)]
    assert [len(share) for share in shares] == [8, 4] and not shares[0] & shares[1]

    questions = [q.id for q in TOY_QUESTIONS[:3]]
    for task in ("tinythinker_csqa", "tinythinker_csqa_analyze_oracle", "tinythinker_csqa_summarize_oracle"):
        one, two = samples(cli_run, task), samples(out, task)
        assert sorted(two) == sorted(questions)
        for qid in questions:
            assert two[qid]["acc"] == one[qid]["acc"], (task, qid)
            assert [untimed(r) for r in two[qid]["filtered_resps"]] == [untimed(r) for r in one[qid]["filtered_resps"]], (task, qid)
        assert results(out)[task]["acc,none"] == pytest.approx(sum(one[q]["acc"] for q in questions) / 3)
    # the same attribution; sampled tasks are seeded per engine call, so their samples depend on which
    # questions share a process: each question's 3 samples (the padded request: repeated in order) vote
    attributed = [ev_metrics.attribution(*({q: bool(rows[q]["acc"]) for q in questions}
                                   for rows in (samples(run, f"tinythinker_csqa{suffix}") for suffix in ("", "_analyze_oracle", "_summarize_oracle"))))
                  for run in (cli_run, out)]
    assert attributed[0] == attributed[1]
    for qid, row in samples(out, "toy_csqa_sc3").items():
        responses = row["filtered_resps"][0]
        assert len(responses) % 3 == 0 and responses == responses[:3] * (len(responses) // 3)
        assert row["acc"] == ev_metrics.vote_metrics([json.loads(r) for r in responses[:3]], row["doc"])["acc"]


def test_tinythinker_eval_indexes_only_our_tasks_and_batches_by_gen_batch_size(toy, tmp_path, monkeypatch):
    """In one process: `tinythinker eval` builds a task index of our tasks only (lm-eval's public
    TaskManager(include_defaults=False) + simple_evaluate), hands --gen-batch-size to the engine as its
    generation batch, and writes lm-eval's own files (results JSON, per-task samples JSONL)."""
    import lm_eval.tasks

    from tinythinker.evaluate import harness as ev_harness
    from tinythinker.evaluate import tasks as ev_tasks
    from tinythinker.evaluate import engine as inference
    from tinythinker.errors import TinyThinkerError
    from tinythinker.evaluate.lm_eval_model import TinyThinkerLM

    root, data, student = toy
    managers, batches = [], []
    real_manager, real_pipeline = lm_eval.tasks.TaskManager, inference.run_pipeline

    def manager(*args, **kwargs):
        managers.append(kwargs.get("include_defaults", True))
        return real_manager(*args, **kwargs)

    def engine(*args, **kwargs):
        batches.append(kwargs["batch_size"])
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", manager)
    monkeypatch.setattr(inference, "run_pipeline", engine)
    out = tmp_path / "eval"
    argv = ev_harness.lm_eval_argv(["--model_args", "max_new_tokens=24", "progress=false"], student=str(student), data=str(data),
                           config="csqa-full", output_path=str(out), limit=2, batch_size=5, device="cpu")
    got = ev_harness.run_lm_eval(argv)
    assert managers == [False] and batches == [5, 5]  # the full task and the analyze oracle ran the engine
    assert got["config"]["tinythinker_gen_batch_size"] == 5 and "PyTorch version" in got["pretty_env_info"]
    [path] = list(out.rglob("results_*.json"))  # OUT/<model name>/results_<date>.json, as lm_eval writes it
    assert path.parent.parent == out and path.parent.name == json.loads(path.read_text())["model_name_sanitized"]
    folder, stamp = path.parent, path.stem.removeprefix("results_")
    for task in ev_tasks.task_names("csqa-full"):
        assert (folder / f"samples_{task}_{stamp}.jsonl").is_file()
        assert got["results"][task]["sample_len"] == 2

    # lm-eval's batch_size (the CLI's default 1) never shrinks the engine's batch
    lm = TinyThinkerLM(pretrained=str(student), batch_size=1, device="cpu", progress=False)
    assert lm.gen_batch_size is None and (lm.rank, lm.world_size) == (0, 1)  # None: sized by memory
    assert TinyThinkerLM(pretrained=str(student), gen_batch_size="auto", device="cpu").gen_batch_size is None
    assert TinyThinkerLM(pretrained=str(student), gen_batch_size="16", device="cpu").gen_batch_size == 16
    for bad in (0, "0", "many", "-1", "2.5"):
        with pytest.raises(TinyThinkerError, match="gen_batch_size"):
            TinyThinkerLM(pretrained=str(student), gen_batch_size=bad, device="cpu")


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
    args = ("tinythinker", "eval", "--student", student, "--config", "csqa-full", "--out", out,
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
    run = cli("tinythinker", "eval", "--student", "x", "--config", "csqa-full", "--gen-batch-size", "0", cwd=tmp_path)
    assert run.returncode == 2 and "--gen-batch-size" in run.stderr and "x>=1" in run.stderr
    run = cli("tinythinker", "eval", "--config", "csqa-bogus", "--student", "x", cwd=tmp_path)
    assert run.returncode == 2 and "variant one of" in run.stderr and "Traceback" not in run.stderr
