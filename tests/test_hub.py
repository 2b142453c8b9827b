"""`push` against a real HTTP Hub on 127.0.0.1 (tests/hub_server.py) that speaks huggingface_hub's calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub_server import LocalHub
from tinythinker.artifacts import split_path
from tinythinker.errors import TinyThinkerError
from tinythinker.hub import plan_push, repo_type_of

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_local_test_token_never_printed"


@pytest.fixture(scope="module")
def folder(world_build):
    """A built small generated strategyqa world (conftest)."""
    return world_build("strategyqa").out


def run_cli(*args, endpoint, home, token=TOKEN):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "tinythinker", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def test_push_dataset_folder(folder, tmp_path):
    with LocalHub() as hub:
        done = run_cli("push", str(folder), "--repo", "someone/tt-strategyqa", "--private", endpoint=hub.endpoint, home=tmp_path)
        assert done.returncode == 0, done.stderr
        repo = hub.state.repos[("dataset", "someone/tt-strategyqa")]
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert repo.files == local and len(repo.commits) == 1
        assert repo.visibility == "private"
        calls = [(method, path) for method, path, _ in hub.state.requests if path != "/api/agent-harnesses"]
        assert calls == [("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
                         ("POST", "/api/datasets/someone/tt-strategyqa/preupload/main"),
                         ("POST", "/api/datasets/someone/tt-strategyqa/commit/main")]
        assert {auth for _, path, auth in hub.state.requests if path != "/api/agent-harnesses"} == {f"Bearer {TOKEN}"}
        assert f"{hub.endpoint}/datasets/someone/tt-strategyqa" in done.stdout
        assert TOKEN not in done.stdout + done.stderr
        assert not any(TOKEN.encode() in p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file())

        again = run_cli("push", str(folder), "--repo", "someone/tt-strategyqa", endpoint=hub.endpoint, home=tmp_path)
        assert again.returncode == 0, again.stderr  # an existing repo is fine (exist_ok)
        assert len(repo.commits) == 2


def test_push_checkpoint_folder_as_model_repo(tmp_path):
    checkpoint = tmp_path / "student"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "t5"}')
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 64)
    assert repo_type_of(checkpoint) == "model"
    with LocalHub() as hub:
        done = run_cli("push", str(checkpoint), "--repo", "someone/tiny-student", endpoint=hub.endpoint, home=tmp_path / "hf")
        assert done.returncode == 0, done.stderr
        repo = hub.state.repos[("model", "someone/tiny-student")]
        assert sorted(repo.files) == ["config.json", "model.safetensors"] and repo.visibility == "public"
        assert ("POST", "/api/models/someone/tiny-student/commit/main") in [(m, p) for m, p, _ in hub.state.requests]


def test_dry_run_lists_files_and_sends_nothing(folder, tmp_path):
    with LocalHub() as hub:
        done = run_cli("push", str(folder), "--repo", "someone/x", "--dry-run", endpoint=hub.endpoint, home=tmp_path, token=None)
        assert done.returncode == 0, done.stderr
        assert [r for r in hub.state.requests if r[1] != "/api/agent-harnesses"] == []
    plan = plan_push(folder, "someone/x")
    assert f"would upload {len(plan.files)} files" in done.stdout
    assert "README.md" in done.stdout and split_path(folder, "strategyqa-full", "analyze").relative_to(folder).as_posix() in done.stdout
    assert plan.repo_type == "dataset" and plan.total_bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_push_without_token_is_one_clear_line(folder, tmp_path):
    done = run_cli("push", str(folder), "--repo", "someone/x", endpoint="http://127.0.0.1:9", home=tmp_path, token=None)
    assert done.returncode == 2
    assert done.stderr.strip() == "Error: no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again"


def test_refused_or_unreachable_push_is_one_line_without_the_token(folder, tmp_path):
    with LocalHub(tokens={"hf_the_right_one"}) as hub:
        refused = run_cli("push", str(folder), "--repo", "someone/x", endpoint=hub.endpoint, home=tmp_path)
        assert hub.state.repos == {}
    unreachable = run_cli("push", str(folder), "--repo", "someone/x", endpoint="http://127.0.0.1:9", home=tmp_path)
    for result in (refused, unreachable):
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("Error: push to someone/x failed") and TOKEN not in result.stderr
    assert "401" in refused.stderr


def test_bad_push_arguments(tmp_path):
    with pytest.raises(TinyThinkerError, match="not a Hub repo id"):
        plan_push(tmp_path, "no-slash")
    with pytest.raises(TinyThinkerError, match="no such folder"):
        plan_push(tmp_path / "absent", "a/b")
    with pytest.raises(TinyThinkerError, match="the folder is empty"):
        plan_push(tmp_path, "a/b")
