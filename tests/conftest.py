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
