"""`push` against a real HTTP Hub on 127.0.0.1 (tests/hub_server.py) that speaks huggingface_hub's calls.

The local Hub serves LFS, not Xet (as a Hub-compatible server may): pushes run with
HF_HUB_DISABLE_XET=1 unless a test says otherwise."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub_server import LocalHub
from tinythinker.demo import build_demo
from tinythinker.errors import TinyThinkerError
from tinythinker.hub import plan_push, repo_type_of

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_local_test_token_never_printed"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_demo("strategyqa", tmp_path_factory.mktemp("push") / "strategyqa").out


def run_cli(*args, endpoint, home, token=TOKEN, xet=False):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name in ("HF_TOKEN", "HF_HUB_DISABLE_XET", "HF_HUB_OFFLINE"):
        env.pop(name, None)
    if token:
        env["HF_TOKEN"] = token
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    return subprocess.run([sys.executable, "-m", "tinythinker", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def test_push_dataset_folder(folder, tmp_path):
    with LocalHub() as hub:
        done = run_cli("push", str(folder), "--repo", "someone/tt-strategyqa", "--private", endpoint=hub.endpoint, home=tmp_path)
        assert done.returncode == 0, done.stderr
        repo = hub.state.repos[("dataset", "someone/tt-strategyqa")]
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert repo.files == local and len(repo.commits) == 2  # the Hub's initial .gitattributes commit, then ours
        assert repo.visibility == "private"
        # parquet files went through LFS (batch API, PUT to the storage host, verify), the card inline
        assert repo.lfs_files() == {p for p in local if p.endswith(".parquet")} and "README.md" in local
        calls = [(method, path) for method, path, _ in hub.state.requests if path != "/api/agent-harnesses"]
        route = lambda path: path.split("?")[0]  # noqa: E731
        assert list(dict.fromkeys((m, route(p)) for m, p in calls)) == [
            ("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
            ("POST", "/api/datasets/someone/tt-strategyqa/preupload/main"),
            ("POST", "/datasets/someone/tt-strategyqa.git/info/lfs/objects/batch"),
            ("POST", "/datasets/someone/tt-strategyqa.git/info/lfs/objects/verify"),
            ("POST", "/api/datasets/someone/tt-strategyqa/commit/main")]
        assert sorted(p for m, p, _ in hub.storage_requests if m == "PUT") == sorted(
            f"/upload/{hashlib.sha256(local[p]).hexdigest()}" for p in repo.lfs_files())
        assert {auth for _, path, auth in hub.state.requests if path != "/api/agent-harnesses"} == {f"Bearer {TOKEN}"}
        assert {auth for _, _, auth in hub.storage_requests} == {None}  # the token never leaves the Hub
        assert f"{hub.endpoint}/datasets/someone/tt-strategyqa" in done.stdout and repo.commits[-1] in done.stdout
        assert TOKEN not in done.stdout + done.stderr
        assert not any(TOKEN.encode() in p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file())

        again = run_cli("push", str(folder), "--repo", "someone/tt-strategyqa", endpoint=hub.endpoint, home=tmp_path)
        assert again.returncode == 0, again.stderr  # an existing repo is fine (exist_ok)
        assert len(repo.commits) == 2 and repo.commits[-1] in again.stdout  # nothing changed: no empty commit


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
        assert repo.lfs_files() == {"model.safetensors"} and repo.files["model.safetensors"] == b"\x00" * 64
        assert ("POST", "/api/models/someone/tiny-student/commit/main") in [(m, p) for m, p, _ in hub.state.requests]


def test_dry_run_lists_files_and_sends_nothing(folder, tmp_path):
    with LocalHub() as hub:
        done = run_cli("push", str(folder), "--repo", "someone/x", "--dry-run", endpoint=hub.endpoint, home=tmp_path, token=None)
        assert done.returncode == 0, done.stderr
        assert [r for r in hub.state.requests if r[1] != "/api/agent-harnesses"] == []
    plan = plan_push(folder, "someone/x")
    assert f"would upload {len(plan.files)} files" in done.stdout
    assert "README.md" in done.stdout and all(path in done.stdout for path, _ in plan.files)
    assert any(path.startswith("data/strategyqa-full/analyze") for path, _ in plan.files)
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


def test_push_with_hf_xet_to_a_hub_without_xet_names_the_cause_and_the_fix(folder, tmp_path):
    """hf_xet uploads LFS files only through Xet; against a Hub-compatible server without it the client
    reports a 'network error'. The line says what is wrong instead, and the setting that fixes it."""
    pytest.importorskip("hf_xet")
    with LocalHub() as hub:
        done = run_cli("push", str(folder), "--repo", "someone/x", endpoint=hub.endpoint, home=tmp_path, xet=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0] == (f"Error: push to someone/x failed: {hub.endpoint} does not serve Xet storage, and hf_xet (installed "
                        "here) uploads large and binary files only through Xet; set HF_HUB_DISABLE_XET=1 to upload them "
                        "through LFS, then push again")
    assert TOKEN not in done.stdout + done.stderr


def test_bad_push_arguments(tmp_path):
    with pytest.raises(TinyThinkerError, match="not a Hub repo id"):
        plan_push(tmp_path, "no-slash")
    with pytest.raises(TinyThinkerError, match="no such folder"):
        plan_push(tmp_path / "absent", "a/b")
    with pytest.raises(TinyThinkerError, match="the folder is empty"):
        plan_push(tmp_path, "a/b")
