"""The SFT trainer (tinythinker.train.sft, `tinythinker train sft`) on a tiny student and a tiny stage data set.

The data set folder is written here the way `tinythinker build` lays it out (the HELPERS contract:
configs {dataset}-{variant}, splits per variant, the shared columns), from a handful of questions
whose rationales make the answer learnable; every stage text comes from tinythinker.protocol.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch

from tinythinker import protocol
from tinythinker.artifacts import configs_metadata, write_card, write_split
from tinythinker.protocol import VARIANT_STAGES, VARIANTS
from tinythinker.train.loop import read_last

REPO = Path(__file__).resolve().parents[1]

# (stem, options, gold index, general knowledge, one analysis per option)
ANIMALS = [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"), ("owl", "hoot")]
FEATURES = datasets.Features({
    "id": datasets.Value("string"), "stage": datasets.Value("string"), "option": datasets.Value("string"),
    "question": datasets.Value("string"), "choices": datasets.List(datasets.Value("string")),
    "input": datasets.Value("string"), "target": datasets.Value("string"), "GT": datasets.Value("string"),
    "teacher_recall": datasets.Value("string"), "teacher_analyses": datasets.List(datasets.Value("string")),
})


def questions(n: int = 6):
    """Which animal says X? Three options; the gold one rotates through A, B, C."""
    out = []
    for i, (animal, sound) in enumerate(ANIMALS[:n]):
        others = [a for a, _ in ANIMALS if a != animal][i % 3 : i % 3 + 2]
        gold = i % 3
        options = others[:gold] + [animal] + others[gold:]
        analyses = ["it is right." if o == animal else "it is wrong." for o in options]
        out.append((f"q{i}", f"Which animal says {sound}?", options, "ABC"[gold], f"The {animal} says {sound}.", analyses))
    return out


def _row(qid, stage, option, question, options, text, target, gold, recall="", analyses=()):
    return {"id": qid, "stage": stage, "option": option, "question": question, "choices": list(options), "input": text,
            "target": target, "GT": gold, "teacher_recall": recall, "teacher_analyses": list(analyses)}


def write_stage_data(folder: Path, qs=None, dataset: str = "zoo") -> Path:
    """A stage data set folder with every variant's config; validation = test = the training questions."""
    qs = qs or questions()
    configs = {}
    for variant in [v for v in VARIANTS if v not in protocol.BASELINES]:  # the baselines' records: test_baselines.py
        stages = VARIANT_STAGES[variant]
        splits: dict[str, list[dict]] = {s: [] for s in ("recall", "recall_single", "analyze", "summarize", "validation")}
        for qid, stem, options, gold, gk, analyses in qs:
            q = protocol.render_question(stem, options)
            letters = protocol.letters_for(len(options))
            recall = gk if "recall" in stages else None
            if "recall" in stages:
                splits["recall"].append(_row(qid, "recall", "", q, options, protocol.recall_prompt(q), gk, gold))
                splits["recall_single"].append(_row(qid, "recall", "", q, options, protocol.recall_prompt(q), gk, gold))
            if "analyze" in stages:
                for x, text in zip(letters, analyses):
                    splits["analyze"].append(_row(qid, "analyze", x, q, options, protocol.analyze_prompt(q, x, recall), text, gold))
            pairs = list(zip(letters, analyses)) if "analyze" in stages else None
            splits["summarize"].append(_row(qid, "summarize", "", q, options, protocol.summarize_prompt(q, recall, pairs),
                                            protocol.summarize_target(gold), gold))
            for option, text in protocol.first_prompts(q, letters, variant):
                splits["validation"].append(_row(qid, stages[0], option, q, options, text, protocol.summarize_target(gold),
                                                 gold, gk, analyses))
        names = [s for s in splits if splits[s]]
        names = [s for s in names if s != "recall_single" or "recall" in stages]
        for split in names:
            write_split(folder, f"{dataset}-{variant}", split, splits[split], FEATURES)
        configs[f"{dataset}-{variant}"] = names
    write_card(folder, configs_metadata(folder, configs, default=f"{dataset}-full"), "# zoo\n\nA tiny stage data set for tests.")
    return folder


def stage_texts(qs=None) -> list[str]:
    qs = qs or questions()
    texts = []
    for _, stem, options, gold, gk, analyses in qs:
        q = protocol.render_question(stem, options)
        pairs = list(zip("ABC", analyses))
        texts += [protocol.summarize_prompt(q, gk, pairs), protocol.summarize_target(gold), gk, *analyses]
    return texts


def make_student(folder: Path, *, d_model: int = 128, kind: str = "seq2seq") -> Path:
    """A tiny T5 (or Llama-style causal model) with a tokenizer trained on the stage texts, saved like
    any checkpoint. Dropout is off so that a few epochs memorise the questions."""
    from tinythinker.students import make_tiny_student

    make_tiny_student(kind, stage_texts(), folder, seed=0, d_model=d_model, layers=2, heads=4, d_ff=2 * d_model,
                      vocab_size=400)
    config = json.loads((folder / "config.json").read_text())
    dropout = "dropout_rate" if kind == "seq2seq" else "attention_dropout"
    (folder / "config.json").write_text(json.dumps({**config, dropout: 0.0}))
    return folder


# --- training in-process ----------------------------------------------------------------------------

def train(data, student, out, **settings):
    from tinythinker.train.sft import SFTSettings, train_sft

    options = dict(interval=2, epochs=30, lr=1e-3, batch_size=8, seed=0)
    run_options = {k: settings.pop(k) for k in ("micro_batch_size", "log_every", "overwrite") if k in settings}
    return train_sft(SFTSettings(data=str(data), config=settings.pop("config", "zoo-full"), student=str(student),
                                 **{**options, **settings}), out, progress=False, **run_options)


def read_metrics(out: Path, drop=("seconds", "tokens_per_second")) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


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

def cli(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "tinythinker", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300, **kwargs)


@pytest.mark.parametrize("args, message", [
    (["--config", "zoo-nothing"], "does not end in a variant"),
    (["--config", "zoo-nothing", "--variant", "full"], "no config 'zoo-nothing'; choose one of zoo-full, zoo-no_analyze"),
    (["--config", "zoo-full", "--variant", "no_recall"], "holds the full variant's records, not no_recall's"),
])
def test_user_errors_end_in_one_line(zoo, tmp_path, args, message):
    data, student = zoo
    done = cli("train", "sft", "--data", data, "--student", student, "--out", tmp_path / "run", "--no-progress", *args)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "run" / "best").exists()


# --- interruption and resume (real processes) ---------------------------------------------------------

def _wait_for(predicate, process, what: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()}"
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def _checkpoint_step(out: Path) -> int:
    """The step of ``out/last`` (0: none yet). A running trainer swaps last/ for the new one in two renames,
    so a poll that reads in between finds it gone: 0 too, and the caller polls again."""
    try:
        state = read_last(out / "last")
    except FileNotFoundError:
        return 0
    return state["step"] if state else 0


def test_interrupted_runs_resume_to_the_same_result(zoo, tmp_path):
    data, _ = zoo
    student = make_student(tmp_path / "small", d_model=64)
    settings = dict(interval=2, epochs=6, lr=3e-3, batch_size=8, seed=0)
    whole = train(data, student, tmp_path / "whole", log_every=1, **settings)  # in-process, one thread, like the CLI runs

    out = tmp_path / "interrupted"
    args = ["train", "sft", "--data", data, "--config", "zoo-full", "--student", student, "--out", out, "--log-every", 1,
            "--no-progress", *[a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", v)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tinythinker", *map(str, args)]
    # 1. Ctrl-C in the middle of the second cycle: the step finishes, RUN/last is saved, exit 130
    run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_step(out) >= 7, run, "step 7")
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "rerun the same command to continue" in stderr
    stopped = _checkpoint_step(out)
    assert 7 <= stopped < whole.total_steps
    # 2. the rerun continues; killed outright (SIGKILL) just after its next checkpoint
    run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _checkpoint_step(out) > stopped, run, "the next checkpoint")
    run.kill()
    run.communicate(timeout=60)
    assert _checkpoint_step(out) < whole.total_steps
    # 3. the third run finishes; everything matches the uninterrupted run
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stderr and "finished: 30 steps" in done.stderr
    assert read_metrics(out) == read_metrics(tmp_path / "whole")
    for folder in ("best", "last/model"):
        a, b = weights(tmp_path / "whole" / folder), weights(out / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    assert read_last(out / "last")["curve"] == whole.curve
