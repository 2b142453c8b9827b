"""`tinythinker student init` and `tinythinker infer` as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers_data import TOY_QUESTIONS, overfit_student, write_stage_data


def tinythinker(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "tinythinker", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_stage_data(tmp_path_factory.mktemp("cli") / "toy")


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-student") / "seq2seq"
    overfit_student("seq2seq", str(tmp_path_factory.getbasetemp())).save(folder)
    return folder


@pytest.fixture(scope="module")
def built(world_build):
    """A built small generated csqa world (conftest)."""
    return world_build("csqa").out


def test_student_init_on_world_data_then_oracle_infer(built, tmp_path):
    from tinythinker.data.splits import items_from_dataset, oracles_from_dataset
    from tinythinker.students import Student

    out = tmp_path / "tiny"
    result = tinythinker("student", "init", "--kind", "causal", "--data", built, "--config", "csqa-full", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "wrote causal student" in result.stdout
    student = Student.load(out, device="cpu")
    assert not student.is_seq2seq and (out / "README.md").exists()
    question = items_from_dataset(built, "csqa-full", "test")[0].question
    assert student.tokenizer.decode(student.tokenizer(question, add_special_tokens=False)["input_ids"]) == question

    again = tinythinker("student", "init", "--data", built, "--out", out)
    assert again.returncode == 2 and again.stderr.strip() == f"Error: {out}: output folder exists; pass --overwrite to replace it or choose another --out"

    # the teacher's recall and analyses from the data set replace the (untrained) student's
    traces = tmp_path / "oracle.jsonl"
    result = tinythinker("infer", "--student", out, "--data", built, "--config", "csqa-full", "--split", "test",
                         "--oracle", "both", "--limit", "3", "--out", traces)
    assert result.returncode == 0, result.stderr
    recalls, analyses = oracles_from_dataset(built, "csqa-full", "test")
    rows = [json.loads(line) for line in traces.read_text().splitlines()]
    assert len(rows) == 3 and all(r["recall"] == recalls[r["id"]] and r["analyses"] == analyses[r["id"]] for r in rows)
    assert json.loads((tmp_path / "oracle.summary.json").read_text())["oracle"] == "both"


def test_infer_writes_traces_and_summary(data, trained_folder, tmp_path):
    out = tmp_path / "traces" / "test.jsonl"
    result = tinythinker("infer", "--student", trained_folder, "--data", data, "--config", "toy-full", "--split", "test",
                         "--out", out)
    assert result.returncode == 0, result.stderr
    assert "accuracy 1.0000 on 4 questions (full, greedy)" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["answer"], r["correct"]) for r in rows] == [(q.id, q.answer, True) for q in TOY_QUESTIONS]
    assert rows[0]["recall"] == TOY_QUESTIONS[0].recall
    summary = json.loads((tmp_path / "traces" / "test.summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["variant"] == "full" and summary["questions"] == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["test.jsonl", "test.summary.json"]  # no partial left


def test_infer_self_consistency_and_limit(data, trained_folder, tmp_path):
    out = tmp_path / "sc.jsonl"
    result = tinythinker("infer", "--student", trained_folder, "--data", data, "--config", "toy-full", "--out", out,
                         "--samples", "3", "--temperature", "0.7", "--limit", "2", "--gen-batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert "self-consistency over 3 samples" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in rows] == [(q.id, s) for q in TOY_QUESTIONS[:2] for s in range(3)]


@pytest.mark.parametrize("change, message", [  # (missing split / data folder: in-process in test_pipeline)
    ({"--student": "missing-student-folder/x/y"}, "no such student folder"),
    ({"--config": "toy-nothing"}, "no config 'toy-nothing'; choose one of"),
])
def test_infer_bad_input_is_one_line(data, trained_folder, tmp_path, change, message):
    args = {"--student": trained_folder, "--data": data, "--config": "toy-full", "--out": tmp_path / "t.jsonl", **change}
    result = tinythinker("infer", *[x for pair in args.items() for x in pair])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "t.jsonl").exists()


def test_partial_results_survive_a_torn_line_and_other_runs_are_ignored(tmp_path):
    from tinythinker.commands.students import _partial_line, _read_partial

    path = tmp_path / ".t.jsonl.partial"
    path.write_text(_partial_line(settings_key="k") + _partial_line(chunk=0, traces=[{"id": "q1"}]) + '{"chunk": 1, "tra')
    assert _read_partial(path, "k") == {0: [{"id": "q1"}]}
    assert _read_partial(path, "other settings") == {}
