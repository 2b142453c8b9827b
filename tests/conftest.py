"""Shared fixtures. Tests that read ../shared/data skip in a user's clone and fail under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _need_shared(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} is missing (it sits beside the repo in CI and development checkouts)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real raw data sets, prompts and public teacher rationales."""
    return _need_shared(SHARED_DATA)


@pytest.fixture(scope="session")
def raw_dir(shared_data) -> Path:
    """../shared/data/raw with one folder per data set."""
    return _need_shared(shared_data / "raw")


# --- small generated worlds (tinythinker world): the data of build, CLI, hub and recipe tests -------

WORLD_QUESTIONS = 80  # the minimum: 10 entities x 8 relations
WORLD_DEFECTS = 0.2  # well above the default, so every rejection kind appears in every data set's train split


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """``world(dataset)``: the folder of a small world (raw/, teacher.jsonl, world.json), written once
    a session with seed 42, WORLD_QUESTIONS questions and WORLD_DEFECTS defective teacher samples.
    Read only: a test that changes files copies them first."""
    from tinythinker.world import write_world

    root = tmp_path_factory.mktemp("worlds")
    made: dict[str, Path] = {}

    def get(dataset: str) -> Path:
        if dataset not in made:
            made[dataset] = write_world(dataset, root / dataset, questions=WORLD_QUESTIONS, defects=WORLD_DEFECTS)
        return made[dataset]

    return get


@pytest.fixture(scope="session")
def world_build(world, tmp_path_factory):
    """``world_build(dataset)``: the BuildResult of ``tinythinker build`` on ``world(dataset)`` (seed 42),
    built once a session. Read only."""
    from dataset_builders.build import build_dataset

    root = tmp_path_factory.mktemp("world-builds")
    built: dict[str, object] = {}

    def get(dataset: str):
        if dataset not in built:
            folder = world(dataset)
            built[dataset] = build_dataset(dataset, folder / "raw", [folder / "teacher.jsonl"], root / dataset)
        return built[dataset]

    return get
