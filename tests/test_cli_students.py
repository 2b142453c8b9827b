"""`tinythinker student init` and `tinythinker infer` as real command lines, run in real subprocesses (a batch
of command lines each, tests/cli_batch.py)."""

from __future__ import annotations

import json
import os

import pytest

from cli_batch import run_many
from helpers_data import TOY_QUESTIONS, overfit_student, write_stage_data

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
BAD_INFER = [  # (missing split / data folder: in-process in test_pipeline)
    ({"--student": "missing-student-folder/x/y"}, "no such student folder"),
    ({"--config": "toy-nothing"}, "no config 'toy-nothing'; choose one of"),
    ({"--out": "."}, ".: is a folder; --out names the traces JSONL file to write"),  # refused before any inference
]


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

    out, traces = tmp_path / "tiny", tmp_path / "oracle.jsonl"
    made, again, oracle = run_many([
        ["student", "init", "--kind", "causal", "--data", built, "--config", "csqa-full", "--out", out],
        ["student", "init", "--data", built, "--out", out],
        # the teacher's recall and analyses from the data set replace the (untrained) student's
        ["infer", "--student", out, "--data", built, "--config", "csqa-full", "--split", "test", "--oracle", "both",
         "--limit", "3", "--out", traces],
    ], env=ENV, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "wrote causal student" in made.stdout
    student = Student.load(out, device="cpu")
    assert not student.is_seq2seq and (out / "README.md").exists()
    question = items_from_dataset(built, "csqa-full", "test")[0].question
    assert student.tokenizer.decode(student.tokenizer(question, add_special_tokens=False)["input_ids"]) == question

    assert again.returncode == 2 and again.stderr.strip() == f"Error: {out}: output folder exists; pass --overwrite to replace it or choose another --out"

    assert oracle.returncode == 0, oracle.stderr
    recalls, analyses = oracles_from_dataset(built, "csqa-full", "test")
    rows = [json.loads(line) for line in traces.read_text().splitlines()]
    assert len(rows) == 3 and all(r["recall"] == recalls[r["id"]] and r["analyses"] == analyses[r["id"]] for r in rows)
    assert json.loads((tmp_path / "oracle.summary.json").read_text())["oracle"] == "both"


@pytest.fixture(scope="module")
def infer_runs(data, trained_folder, tmp_path_factory):
    """The module's infer command lines, run in one subprocess: {name: (outcome, the folder of its --out)}."""
    root = tmp_path_factory.mktemp("infer")
    lines = {
        "traces": ["--config", "toy-full", "--split", "test", "--out", root / "traces" / "test.jsonl"],
        "sc": ["--config", "toy-full", "--out", root / "sc" / "sc.jsonl", "--samples", "3", "--temperature", "0.7",
                             "--limit", "2", "--gen-batch-size", "4"],
    }
    for i, (change, _) in enumerate(BAD_INFER):
        args = {"--student": trained_folder, "--data": data, "--config": "toy-full", "--out": root / f"bad{i}" / "t.jsonl", **change}
        lines[f"bad{i}"] = [x for pair in args.items() for x in pair]
    commands = [["infer", *(line if name.startswith("bad") else ["--student", trained_folder, "--data", data, *line])]
                for name, line in lines.items()]
    for name in lines:
        (root / name).mkdir(exist_ok=True)
    results = run_many(commands, env=ENV, cwd=root)
    return {name: (result, root / name) for name, result in zip(lines, results)}


def test_infer_writes_traces_and_summary(infer_runs):
    result, folder = infer_runs["traces"]
    out = folder / "test.jsonl"
    assert result.returncode == 0, result.stderr
    assert "accuracy 1.0000 on 4 questions (full, greedy)" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["answer"], r["correct"]) for r in rows] == [(q.id, q.answer, True) for q in TOY_QUESTIONS]
    assert rows[0]["recall"] == TOY_QUESTIONS[0].recall
    summary = json.loads((folder / "test.summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["variant"] == "full" and summary["questions"] == 4
    assert sorted(p.name for p in folder.iterdir()) == ["test.jsonl", "test.summary.json"]  # no partial left


def test_infer_self_consistency_and_limit(infer_runs):
    result, folder = infer_runs["sc"]
    assert result.returncode == 0, result.stderr
    assert "self-consistency over 3 samples" in result.stdout
    rows = [json.loads(line) for line in (folder / "sc.jsonl").read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in rows] == [(q.id, s) for q in TOY_QUESTIONS[:2] for s in range(3)]


@pytest.mark.parametrize("case", range(len(BAD_INFER)))
def test_infer_bad_input_is_one_line(infer_runs, case):
    result, folder = infer_runs[f"bad{case}"]
    message = BAD_INFER[case][1]
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert list(folder.iterdir()) == []


def test_partial_results_survive_a_torn_line_and_other_runs_are_ignored(tmp_path):
    from tinythinker.commands.students import _partial_line, _read_partial

    path = tmp_path / ".t.jsonl.partial"
    path.write_text(_partial_line(settings_key="k") + _partial_line(chunk=0, traces=[{"id": "q1"}]) + '{"chunk": 1, "tra')
    assert _read_partial(path, "k") == {0: [{"id": "q1"}]}
    assert _read_partial(path, "other settings") == {}
