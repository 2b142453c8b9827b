"""The SFT trainer (tinythinker.train.sft, `tinythinker train sft`) on a tiny student and a tiny stage data
set (the zoo of tests/helpers_sft.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tinythinker.protocol import VARIANT_STAGES
from tinythinker.train.loop import read_last

from cli_batch import run_many
from helpers_sft import REPO, make_student, read_metrics, train, weights, write_stage_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return write_stage_data(root / "data"), make_student(root / "student")


@pytest.fixture(scope="module")
def trained(zoo, tmp_path_factory):
    data, student = zoo
    out = tmp_path_factory.mktemp("runs") / "sft"
    return out, train(data, student, out, log_every=1)


def test_a_tiny_student_learns_to_answer_its_training_questions(zoo, trained):
    from tinythinker.artifacts import read_card_metadata
    from tinythinker.data.splits import items_from_dataset
    from tinythinker.evaluate.engine import run_pipeline
    from tinythinker.students import Student

    data, _ = zoo
    out, result = trained
    assert result.steps == result.total_steps == 30 * 5  # 6 recall, 18 analyze, 6 summarize rows; batch 8
    assert result.best_accuracy == 1.0
    from tinythinker.runs import read_settings, run_method

    assert run_method(out) == "sft" and read_settings(out)["config"] == "zoo-full"  # the run folder's owner reads it
    # the kept checkpoint loads like any other and answers every training question right, greedily
    student = Student.load(out / "best", device="cpu")
    traces = run_pipeline(student, items_from_dataset(data, "zoo-full", "validation"), progress=False)
    assert [t.correct for t in traces] == [True] * 6
    assert all(t.summary == f"So the answer is option {t.gold}." for t in traces)
    # metrics: a train line per step (log_every=1), one validation per cycle (= epoch here)
    metrics = read_metrics(out)
    steps = [m for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert [m["step"] for m in steps] == list(range(1, 151))
    assert [m["stage"] for m in steps[:5]] == ["recall", "analyze", "analyze", "analyze", "summarize"]
    assert steps[-1]["lr"] == 0.0 and steps[-1]["loss"] < steps[0]["loss"] / 5
    assert [m["step"] for m in evals] == list(range(5, 151, 5)) and evals[0]["questions"] == 6
    assert [p["accuracy"] for p in result.curve] == [m["accuracy"] for m in evals]
    best = max(evals, key=lambda m: (m["accuracy"], -m["step"]))
    assert result.best_step == best["step"] and [m["best"] for m in evals].count(True) >= 1
    # the model card records how it was made, with the whole validation curve
    card = read_card_metadata(out / "best")
    assert card["tinythinker"] | {"version": None} == {
        "method": "sft", "data": str(Path(data).resolve()), "config": "zoo-full", "variant": "full",
        "student": str(Path(zoo[1]).resolve()), "seed": 0, "steps": 150, "total_steps": 150,
        "validation_accuracy": 1.0, "best_step": best["step"], "version": None}
    assert "base_model" not in card and card["pipeline_tag"] == "text2text-generation"
    body = (out / "best" / "README.md").read_text()
    assert "| learning rate | 0.001 |" in body and "recall 2 · analyze 6 · summarize 2 batches per cycle" in body
    assert body.count(" (kept) |") == 1 and "| 30 | 30 | 150 |" in body
    state = read_last(out / "last")
    assert state["step"] == 150 and state["metrics_bytes"] == (out / "metrics.jsonl").stat().st_size


def test_a_tiny_causal_student_learns_with_the_same_trainer(zoo, tmp_path):
    """Decoder-only students go through the same trainer (prompt masked out of the loss); they learn
    more slowly than T5 at this size, hence the higher learning rate and more epochs."""
    from tinythinker.artifacts import read_card_metadata
    from tinythinker.data.splits import items_from_dataset
    from tinythinker.evaluate.engine import run_pipeline
    from tinythinker.students import Student

    data, _ = zoo
    student = make_student(tmp_path / "causal", d_model=128, kind="causal")
    result = train(data, student, tmp_path / "sft", epochs=60, lr=5e-3)
    assert result.best_accuracy == 1.0
    best = Student.load(tmp_path / "sft" / "best", device="cpu")
    assert not best.is_seq2seq
    traces = run_pipeline(best, items_from_dataset(data, "zoo-full", "validation"), progress=False)
    assert [t.correct for t in traces] == [True] * 6
    assert read_card_metadata(tmp_path / "sft" / "best")["pipeline_tag"] == "text-generation"


def test_rerunning_a_finished_run_changes_nothing(zoo, trained):
    data, student = zoo
    out, result = trained
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = train(data, student, out, log_every=1)
    assert again.resumed_at == again.steps == 150 and again.best_accuracy == result.best_accuracy
    assert again.curve == result.curve
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_resume_point_of_the_format_before_accelerate_is_one_clear_error(zoo, trained, tmp_path):
    import shutil

    from tinythinker.errors import TinyThinkerError

    data, student = zoo
    old = tmp_path / "old"
    shutil.copytree(trained[0], old)
    for path in (old / "last").iterdir():  # last/ as the hand-made trainer wrote it: model/, trainer.pt, state.json
        if path.is_file():
            path.unlink()
    (old / "last" / "trainer.pt").write_bytes(b"")
    (old / "last" / "state.json").write_text(json.dumps({"step": 100, "total_steps": 150}))
    with pytest.raises(TinyThinkerError) as error:
        train(data, student, old, log_every=1)
    assert "older TinyThinker version" in str(error.value) and f"delete {old / 'last'}" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("variant", ["no_recall", "no_analyze", "summarize_only"])
def test_ablation_variants_train_their_stages_and_validate_their_pipeline(zoo, tmp_path, variant):
    data, student = zoo
    result = train(data, student, tmp_path / variant, config=f"zoo-{variant}", epochs=2, log_every=1)
    stages = {m["stage"] for m in read_metrics(tmp_path / variant) if m["kind"] == "train"}
    assert stages == set(VARIANT_STAGES[variant])
    assert len(result.curve) == 2 and result.curve[0]["questions"] == 6
    assert (tmp_path / variant / "best" / "model.safetensors").exists()


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_micro_batches_give_the_same_training_as_whole_batches(zoo, tmp_path, kind):
    data, student = zoo
    if kind == "causal":  # the loss counts a causal student's target tokens after the one-token shift
        student = make_student(tmp_path / "causal", d_model=64, kind="causal")
    whole = train(data, student, tmp_path / "whole", epochs=2, eval_limit=0, log_every=1)
    micro = train(data, student, tmp_path / "micro", epochs=2, eval_limit=0, log_every=1, micro_batch_size=3)
    assert whole.curve == micro.curve == [] and whole.best_accuracy is None
    losses = [[m["loss"] for m in read_metrics(tmp_path / name) if m["kind"] == "train"] for name in ("whole", "micro")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    a, b = weights(tmp_path / "whole" / "best"), weights(tmp_path / "micro" / "best")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert "trained without validation; this is the final model" in (tmp_path / "whole" / "best" / "README.md").read_text()


def test_a_run_folder_with_other_settings_is_refused(zoo, trained, tmp_path):
    from tinythinker.errors import TinyThinkerError

    data, student = zoo
    out, _ = trained
    with pytest.raises(TinyThinkerError, match=r"was trained with lr=0.001, not 0.002; rerun with the same settings"):
        train(data, student, out, lr=2e-3)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(TinyThinkerError, match="not a training run"):
            train(data, student, tmp_path / "other", overwrite=overwrite)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# --- the command line ---------------------------------------------------------------------------------

USER_ERRORS = [
    (["--config", "zoo-nothing"], "does not end in a variant"),
    (["--config", "zoo-nothing", "--variant", "full"], "no config 'zoo-nothing'; choose one of zoo-full, zoo-no_analyze"),
    (["--config", "zoo-full", "--variant", "no_recall"], "holds the full variant's records, not no_recall's"),
]


def test_user_errors_end_in_one_line(zoo, tmp_path):
    data, student = zoo
    commands = [["train", "sft", "--data", data, "--student", student, "--out", tmp_path / f"run{i}", "--no-progress", *args]
                for i, (args, _) in enumerate(USER_ERRORS)]
    for i, ((_, message), done) in enumerate(zip(USER_ERRORS, run_many(commands, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO))):
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], done.stderr
        assert not (tmp_path / f"run{i}").exists()  # a failed start leaves no run.json to refuse the corrected rerun


# --- interruption and resume (real processes: helpers_sft.interrupted_sft) ------------------------------

def test_interrupted_runs_resume_to_the_same_result(interrupted_sft):
    run, whole = interrupted_sft, interrupted_sft["whole"]
    code, stderr = run["interrupted"]
    # 1. Ctrl-C in the middle of the second cycle: the step finishes, RUN/last is saved, exit 130
    assert code == 130, stderr
    assert "rerun the same command to continue" in stderr
    assert 7 <= run["stopped"] < whole.total_steps
    # 2. the rerun was killed outright (SIGKILL) after its next checkpoint
    assert run["stopped"] < run["killed"] < whole.total_steps
    # 3. the third run finishes; everything matches the uninterrupted run
    done, out = run["done"], run["out"]
    assert done.returncode == 0, done.stderr
    assert f"resuming at step {run['killed']}" in done.stderr and "finished: 30 steps" in done.stderr
    assert read_metrics(out) == read_metrics(run["whole_out"])
    for folder in ("best", "last/model"):
        a, b = weights(run["whole_out"] / folder), weights(out / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    assert read_last(out / "last")["curve"] == whole.curve



def test_patience_ends_a_run_whose_validation_stopped_rising_and_a_rerun_keeps_it_ended(zoo, tmp_path):
    data, student = zoo
    # a learning rate too small to change a greedy answer: the first validation stays the best
    result = train(data, student, tmp_path / "sft", lr=1e-9, max_steps=100, eval_every=2, patience=3)
    assert result.stopped_early and result.total_steps == 100
    assert result.best_step == 2 and [p["step"] for p in result.curve] == [2, 4, 6, 8]
    assert result.steps == 8 and read_last(tmp_path / "sft" / "last")["step"] == 8
    again = train(data, student, tmp_path / "sft", lr=1e-9, max_steps=100, eval_every=2, patience=3)
    assert again.stopped_early and again.steps == 8 and again.resumed_at == 8 and again.curve == result.curve
    patient = train(data, student, tmp_path / "patient", lr=1e-9, max_steps=12, eval_every=2, patience=10)
    assert not patient.stopped_early and patient.steps == 12  # the cap came first


def test_patience_is_refused_below_one(zoo, tmp_path):
    from tinythinker.errors import TinyThinkerError

    data, student = zoo
    with pytest.raises(TinyThinkerError, match="patience must be at least 1"):
        train(data, student, tmp_path / "sft", max_steps=10, patience=0)
