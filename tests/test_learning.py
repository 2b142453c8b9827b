"""The regression test of the trainer, the engine and the protocol on the learnable world
(tinythinker world): a tiny student trained from scratch with the real trainer (mixed schedule)
learns the stage skills that generalise to held-out questions.

What it asserts, on held-out (test) questions of the default CSQA-shaped world:

* with the teacher's recall and analyses given, the student's summary picks the right option
  (the summarize stage reads the analyses: chance is 20%);
* every stage's output has its stage's shape (the stage markers are read: a broken schedule,
  label mask or prompt makes recalls, analyses or summaries come out in another stage's form);
* the same student trained to answer directly (summarize_only) stays near chance on these two-hop
  questions (no shortcut in the world).

It does not assert full-pipeline accuracy: in the time a CI test has, the tiny student does not yet
learn to find the recalled value among the options (see docs/training.md, "The learnable world").
Fixed seeds; thresholds leave a wide margin below the measured figures.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from dataset_builders.build import build_dataset
from tinythinker.pipeline import accuracy, items_from_dataset, oracles_from_dataset, run_pipeline
from tinythinker.sft import SFTSettings, train_sft
from tinythinker.students import Student
from tinythinker.world import write_world

pytestmark = pytest.mark.slow

SFT = dict(schedule="mixed", lr=3e-3, batch_size=32, interval=20, epochs=1, eval_limit=0, seed=42)
TEST_QUESTIONS = 100
SUMMARIZE_ORACLE_AT_LEAST = 0.8
DIRECT_AT_MOST = 0.4  # chance 0.2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    world = write_world("csqa", root / "world", seed=42)
    data = build_dataset("csqa", world / "raw", [world / "teacher.jsonl"], root / "data", seed=42).out
    student = root / "student"  # as a user makes it: the CLI (tokenizer trained on the data set's texts)
    subprocess.run([sys.executable, "-m", "tinythinker", "student", "init", "--tiny", "--kind", "causal", "--data", str(data),
                    "--config", "csqa-full", "--out", str(student)], check=True, capture_output=True)
    runs = {variant: train_sft(SFTSettings(data=str(data), config=f"csqa-{variant}", student=str(student), **SFT),
                               root / variant, progress=False).best
            for variant in ("full", "summarize_only")}
    return data, runs


def test_the_summarize_stage_learns_to_read_the_analyses(trained):
    data, runs = trained
    student = Student.load(runs["full"], device="cpu")
    items = items_from_dataset(str(data), "csqa-full", "test")[:TEST_QUESTIONS]
    recalls, analyses = oracles_from_dataset(str(data), "csqa-full", "test")
    traces = run_pipeline(student, items, variant="full", batch_size=64, progress=False,
                          given_recalls=recalls, given_analyses=analyses)
    assert accuracy(traces)["accuracy"] >= SUMMARIZE_ORACLE_AT_LEAST


def test_every_stage_output_has_its_stages_shape(trained):
    data, runs = trained
    student = Student.load(runs["full"], device="cpu")
    items = items_from_dataset(str(data), "csqa-full", "test")[:TEST_QUESTIONS]
    traces = run_pipeline(student, items, variant="full", batch_size=64, progress=False)
    recall = re.compile(r"^A \w+ is a kind of \w+\. .+\.$")
    shaped = {
        "recall": sum(bool(recall.match(t.recall)) for t in traces),
        "analyses": sum(all(f"so ({x}) is " in text and text.endswith(("right.", "wrong.")) for x, text in t.analyses.items())
                        for t in traces),
        "summary": sum(bool(re.fullmatch(r"So the answer is option [A-E]\.", t.summary)) for t in traces),
    }
    # measured after 1 epoch: recall 83, analyses 97, summary 98 of 100 (a stage-confused student: ~0)
    assert shaped["recall"] >= 0.6 * len(traces) and shaped["analyses"] >= 0.8 * len(traces) \
        and shaped["summary"] >= 0.8 * len(traces), shaped


def test_answering_directly_does_not_solve_two_hop_questions(trained):
    data, runs = trained
    student = Student.load(runs["summarize_only"], device="cpu")
    items = items_from_dataset(str(data), "csqa-summarize_only", "test")[:TEST_QUESTIONS]
    scores = accuracy(run_pipeline(student, items, variant="summarize_only", batch_size=64, progress=False))
    assert scores["accuracy"] <= DIRECT_AT_MOST
