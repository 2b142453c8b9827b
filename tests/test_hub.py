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
from tinythinker.errors import TinyThinkerError
from tinythinker.artifacts import OWNER_MARK
from tinythinker.hub import plan_push, repo_type_of

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_local_test_token_never_printed"


@pytest.fixture(scope="module")
def folder(world_build):
    """A built small generated strategyqa world (conftest)."""
    return world_build("strategyqa").out


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
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != OWNER_MARK}
        assert (folder / OWNER_MARK).is_file()  # the marker stays home
        assert repo.files == local and len(repo.commits) == 2  # the Hub's initial .gitattributes commit, then ours
        assert repo.visibility == "private"
        # parquet files went through LFS (batch API, PUT to the storage host, verify), the card inline
        assert repo.lfs_files() == {p for p in local if p.endswith(".parquet")} and "README.md" in local
        calls = [(method, path) for method, path, _ in hub.state.requests if path != "/api/agent-harnesses"]
        route = lambda path: path.split("?")[0]  # noqa: E731
        assert list(dict.fromkeys((m, route(p)) for m, p in calls)) == [
            ("POST", "/api/repos/create"),
            ("GET", "/api/datasets/someone/tt-strategyqa"),  # the head before: a push that changes nothing says so
            ("GET", "/api/datasets/someone/tt-strategyqa/tree/main"),  # the files a new version may leave behind
            ("POST", "/api/validate-yaml"),
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
        assert again.stdout.startswith(f"nothing to push: {hub.endpoint}/datasets/someone/tt-strategyqa already holds these "), again.stdout


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

        # the next version's weights come in shards: the old single file goes (it would load in their
        # place); a file added on the Hub stays
        from huggingface_hub import HfApi

        HfApi(endpoint=hub.endpoint, token="hf_x").upload_file(path_or_fileobj=b"# notes", path_in_repo="notes.md",
                                                              repo_id="someone/tiny-student")
        (checkpoint / "model.safetensors").unlink()
        for k in (1, 2):
            (checkpoint / f"model-0000{k}-of-00002.safetensors").write_bytes(bytes([k]) * 32)
        (checkpoint / "model.safetensors.index.json").write_text('{"weight_map": {}}')
        again = run_cli("push", str(checkpoint), "--repo", "someone/tiny-student", endpoint=hub.endpoint, home=tmp_path / "hf")
        assert again.returncode == 0, again.stderr
        assert sorted(repo.files) == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                      "model.safetensors.index.json", "notes.md"]


def test_dry_run_lists_files_and_sends_nothing(folder, tmp_path):
    with LocalHub() as hub:
        done = run_cli("push", str(folder), "--repo", "someone/x", "--dry-run", endpoint=hub.endpoint, home=tmp_path, token=None)
        assert done.returncode == 0, done.stderr
        assert [r for r in hub.state.requests if r[1] != "/api/agent-harnesses"] == []
    plan = plan_push(folder, "someone/x")
    assert f"would upload {len(plan.files)} files" in done.stdout
    assert "README.md" in done.stdout and all(path in done.stdout for path, _ in plan.files)
    assert any(path.startswith("data/strategyqa-full/analyze") for path, _ in plan.files)
    assert plan.repo_type == "dataset" and plan.total_bytes == sum(p.stat().st_size for p in folder.rglob("*")
                                                                   if p.is_file() and p.name != OWNER_MARK)  # the marker stays home


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
    assert refused.stderr.strip() == (
        f"Error: push to someone/x failed: {hub.endpoint} refused your token (401, not a valid token); set HF_TOKEN "
        "to a valid token with write access, or run `hf auth login`, then push again")


def test_a_read_only_token_is_told_what_to_do_for_a_new_and_an_existing_repo(folder, tmp_path):
    """The Hub answers 403 to a read-only token's create and commit; the line says so and what to do,
    not the raw HTTP text, and nothing is written."""
    with LocalHub(read_only_tokens={TOKEN}) as hub:
        new = run_cli("push", str(folder), "--repo", "someone/x", endpoint=hub.endpoint, home=tmp_path)
        assert hub.state.repos == {}
        existing = hub.state.add_repo("dataset", "someone/y")
        before = dict(existing.files)
        old = run_cli("push", str(folder), "--repo", "someone/y", endpoint=hub.endpoint, home=tmp_path)
        assert existing.files == before and len(existing.commits) == 1
    for repo, result in (("x", new), ("y", old)):
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (
            f"Error: push to someone/{repo} failed: your token may not write to 'someone' on {hub.endpoint} (403, a "
            "read-only token or another account's namespace); use a token with write access to 'someone' (a "
            "fine-grained one needs write access to that namespace's repos), or push to a namespace you own")


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


def test_a_link_out_of_the_folder_is_neither_listed_nor_pushed(folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    (copy / "notes.txt").symlink_to(secret)
    (copy / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    (copy / "card.md").symlink_to(copy / "README.md")  # a link inside the folder is an ordinary file
    plan = plan_push(copy, "someone/x")
    assert plan.skipped == ("elsewhere", "notes.txt")
    assert "card.md" in dict(plan.files) and not any(p.startswith(("elsewhere", "notes")) for p, _ in plan.files)
    with LocalHub() as hub:
        dry = run_cli("push", str(copy), "--repo", "someone/x", "--dry-run", endpoint=hub.endpoint, home=tmp_path)
        done = run_cli("push", str(copy), "--repo", "someone/x", endpoint=hub.endpoint, home=tmp_path)
        assert done.returncode == 0, done.stderr
        pushed = hub.state.repos[("dataset", "someone/x")].files
    for result in (dry, done):
        assert result.stdout.startswith(f"skipping 2 link(s) that point outside {copy} (a push would upload their targets): "
                                        "elsewhere, notes.txt"), result.stdout
    assert set(pushed) == {p for p, _ in plan.files} and b"not for the Hub" not in b"".join(pushed.values())


def test_bad_push_arguments(tmp_path):
    for repo in ("no-slash", "org/a..b", "org/a--b", "org/-a", "org/" + "a" * 100):
        with pytest.raises(TinyThinkerError, match="not a Hub repo id"):
            plan_push(tmp_path, repo)
    with pytest.raises(TinyThinkerError, match="no such folder"):
        plan_push(tmp_path / "absent", "a/b")
    with pytest.raises(TinyThinkerError, match="the folder is empty"):
        plan_push(tmp_path, "a/b")


def test_the_local_hub_answers_the_read_routes_as_the_hub(tmp_path):
    """The read protocol itself, through huggingface_hub's own functions and plain HTTP: info, tree,
    paths-info, refs, commits, resolve (regular: 200 + ETag; LFS: 302 to the storage host with the
    linked ETag and size), Range requests, and the errors' X-Error-Code."""
    import urllib.request
    from urllib.error import HTTPError

    from huggingface_hub import HfApi, HfFileSystem, hf_hub_download

    from hub_server import Blob, git_blob_id

    card, weights = b"---\nlicense: mit\n---\n# hello\n", bytes(range(256)) * 4
    sha = hashlib.sha256(weights).hexdigest()
    with LocalHub(tokens={TOKEN}) as hub:
        repo = hub.state.add_repo("dataset", "org/read")
        hub.state.storage[sha] = weights
        first = repo.add_commit("main", "add files", {**repo.resolve("main").files, "README.md": Blob.regular(card),
                                                      "data/w.parquet": Blob.lfs(sha, len(weights))})
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_tag("org/read", repo_type="dataset", tag="v1")
        second = repo.add_commit("main", "new card", {**first.files, "README.md": Blob.regular(b"# bye\n")})

        info = api.dataset_info("org/read", revision="v1", files_metadata=True)
        assert info.sha == first.oid and info.card_data["license"] == "mit" and info.private is False
        assert {s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings} == {
            ".gitattributes": (repo.resolve("main").files[".gitattributes"].size, None), "README.md": (len(card), None),
            "data/w.parquet": (len(weights), sha)}
        assert api.dataset_info("org/read").sha == second.oid
        tree = {e.path: e for e in api.list_repo_tree("org/read", repo_type="dataset", recursive=True, expand=True)}
        assert sorted(tree) == [".gitattributes", "README.md", "data", "data/w.parquet"]
        assert tree["data/w.parquet"].lfs.sha256 == sha and tree["README.md"].blob_id == git_blob_id(b"# bye\n")
        assert tree["README.md"].last_commit.oid == second.oid and tree["data/w.parquet"].last_commit.oid == first.oid
        assert [e.path for e in api.list_repo_tree("org/read", "data", repo_type="dataset")] == ["data/w.parquet"]
        assert [e.path for e in api.get_paths_info("org/read", ["README.md", "nope", "data"], repo_type="dataset")] == ["README.md", "data"]
        refs = api.list_repo_refs("org/read", repo_type="dataset")
        assert [(b.name, b.target_commit) for b in refs.branches] == [("main", second.oid)]
        assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first.oid)]
        assert [c.commit_id for c in api.list_repo_commits("org/read", repo_type="dataset")] == repo.commits[::-1]

        cache = tmp_path / "cache"
        got = hf_hub_download("org/read", "data/w.parquet", repo_type="dataset", endpoint=hub.endpoint, token=TOKEN, cache_dir=cache)
        assert Path(got).read_bytes() == weights and f"snapshots/{second.oid}/data/w.parquet" in got
        got = hf_hub_download("org/read", "README.md", repo_type="dataset", revision="v1", endpoint=hub.endpoint, token=TOKEN,
                              cache_dir=cache)
        assert Path(got).read_bytes() == card
        with HfFileSystem(endpoint=hub.endpoint, token=TOKEN).open("datasets/org/read/data/w.parquet", "rb", block_size=100) as f:
            f.seek(300)
            assert f.read(50) == weights[300:350]  # a ranged GET (through the redirect)

        def http(path, method="GET", **headers):
            request = urllib.request.Request(hub.endpoint + path, method=method, headers=headers)

            class NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *args, **kwargs):
                    return None

            try:
                with urllib.request.build_opener(NoRedirect).open(request) as reply:
                    return reply.status, dict(reply.headers), reply.read()
            except HTTPError as error:
                return error.code, dict(error.headers), error.read()

        status, headers, body = http("/datasets/org/read/resolve/main/README.md", Range="bytes=2-4")
        assert (status, headers["Content-Range"], body) == (206, "bytes 2-4/6", b"bye")
        status, headers, body = http("/datasets/org/read/resolve/main/README.md", "HEAD")
        assert (status, headers["ETag"], headers["X-Repo-Commit"], headers["Content-Length"], body) == (
            200, f'"{git_blob_id(b"# bye" + chr(10).encode())}"', second.oid, "6", b"")
        status, headers, _ = http("/datasets/org/read/resolve/main/data/w.parquet", "HEAD")
        assert status == 302 and headers["Location"] == f"{hub.storage_url}/lfs/{sha}"
        assert (headers["X-Linked-Etag"], headers["X-Linked-Size"], headers["X-Repo-Commit"]) == (f'"{sha}"', str(len(weights)), second.oid)
        with urllib.request.urlopen(urllib.request.Request(headers["Location"], headers={"Range": "bytes=-10"})) as reply:
            assert (reply.status, reply.read()) == (206, weights[-10:])
        assert http("/datasets/org/read/resolve/main/README.md", Range="bytes=10-")[0] == 416
        for path, status, code in [("/datasets/org/read/resolve/main/absent.txt", 404, "EntryNotFound"),
                                   ("/datasets/org/read/resolve/nope/README.md", 404, "RevisionNotFound"),
                                   ("/datasets/org/absent/resolve/main/README.md", 401, "RepoNotFound")]:
            got_status, headers, _ = http(path)
            assert (got_status, headers.get("X-Error-Code")) == (status, code), path
        assert http("/api/datasets/org/absent", Authorization=f"Bearer {TOKEN}")[0] == 404  # with a token: 404, not 401
