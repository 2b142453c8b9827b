"""The regression test of the trainer, the engine and the protocol: on a small learnable world, a
tiny student trained with the real trainer answers held-out two-hop questions well above chance, and
above the same student trained to answer directly (summarize_only). Breaking label masking, the
schedule, a prompt or the engine makes it fail.

Settings are fixed (world seed, student seed, training seed); thresholds leave a wide margin below
what the run reaches (see LEARNING_* in the test and docs/training.md for the measured figures).
"""

from __future__ import annotations

import pytest

from dataset_builders.build import build_dataset
from tinythinker.pipeline import accuracy, items_from_dataset, run_pipeline
from tinythinker.sft import SFTSettings, train_sft
from tinythinker.students import Student, make_tiny_student
from tinythinker.world import write_world

pytestmark = pytest.mark.slow

WORLD = dict(seed=3, questions=2400)
STUDENT = dict(kind="causal", seed=0)
SFT = dict(schedule="mixed", lr=3e-3, batch_size=32, interval=20, epochs=4, eval_limit=0, seed=42)
FULL_AT_LEAST = 0.6  # chance: 0.2
GAP_AT_LEAST = 0.25  # full minus summarize_only


def _texts(folder, config):
    from tinythinker.pipeline import load_stage_split

    texts = []
    for split in ("recall", "analyze", "summarize"):
        rows = load_stage_split(str(folder), config, split)
        texts += rows["input"] + rows["target"]
    return texts


def _test_accuracy(student_dir, data, config, variant, limit=200):
    student = Student.load(student_dir, device="cpu")
    items = items_from_dataset(str(data), config, "test")[:limit]
    return accuracy(run_pipeline(student, items, variant=variant, batch_size=64, progress=False))["accuracy"]


def test_a_tiny_student_learns_the_world_and_coarse_to_fine_beats_answering_directly(tmp_path):
    world = write_world("csqa", tmp_path / "world", **WORLD)
    data = build_dataset("csqa", world / "raw", [world / "teacher.jsonl"], tmp_path / "data", seed=42).out
    student = make_tiny_student(STUDENT["kind"], _texts(data, "csqa-full"), tmp_path / "student", seed=STUDENT["seed"])
    scores = {}
    for variant in ("full", "summarize_only"):
        config = f"csqa-{variant}"
        run = train_sft(SFTSettings(data=str(data), config=config, student=str(student), **SFT), tmp_path / variant, progress=False)
        scores[variant] = _test_accuracy(run.best, data, config, variant)
    assert scores["full"] >= FULL_AT_LEAST, scores
    assert scores["full"] - scores["summarize_only"] >= GAP_AT_LEAST, scores
