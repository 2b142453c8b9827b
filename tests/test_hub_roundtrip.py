"""A Hub round trip, offline: `tinythinker push` to the local Hub (tests/hub_server.py), then everything
that reads from the Hub reads it back -- ``datasets.load_dataset``, ``transformers``, ``Student.load``,
`tinythinker train sft`, `infer` and `eval` with ``--data ORG/NAME`` -- pinned to commits, and every
Hub failure is one line naming the repo and the fix.

Every command runs as a subprocess with ``HF_ENDPOINT`` at the local Hub and a fresh ``HF_HOME``, so
neither the developer's cache nor the real Hub can change a result. The local Hub serves LFS, not Xet:
``HF_HUB_DISABLE_XET=1`` (test_hub.py checks the message without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers_data import TOY_QUESTIONS, all_texts, write_stage_data
from cli_batch import run_many
from hub_server import LocalHub

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_local_roundtrip_token_never_printed"
DATA, PREFS, STUDENT, PRIVATE = "org/name", "org/prefs", "org/student", "org/secret"

pytestmark = pytest.mark.timeout(900)


def environment(hub_endpoint: str, home: Path, token: str | None = TOKEN) -> dict:
    env = {**os.environ, "HF_ENDPOINT": hub_endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO), "TINYTHINKER_CACHE": str(home / "tinythinker")}
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_CACHE",
                 "HF_HUB_CACHE", "TINYTHINKER_DATA"):
        env.pop(name, None)
    if token:
        env["HF_TOKEN"] = token
    return env


def tinythinker(*args, endpoint: str, home: Path, token: str | None = TOKEN, cwd: Path | None = None, **env):
    return subprocess.run([sys.executable, "-m", "tinythinker", *map(str, args)], cwd=cwd or REPO, capture_output=True,
                          text=True, env={**environment(endpoint, home, token), **env}, timeout=600)


def python(code: str, *, endpoint: str, home: Path, token: str | None = TOKEN):
    """Run ``code`` in a fresh interpreter (huggingface_hub reads HF_ENDPOINT when imported); its last
    stdout line is JSON."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          env=environment(endpoint, home, token), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def parquet_rows(folder: Path, config: str) -> dict[str, list[dict]]:
    """{split: rows} of a config of a local folder, read file by file (whatever the files are named)."""
    rows: dict[str, list[dict]] = {}
    for path in sorted((folder / "data" / config).glob("*.parquet")):
        split = path.name.split("-")[0]
        rows.setdefault(split, []).extend(pq.read_table(path).to_pylist())
    return rows


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and TOKEN not in done.stdout + done.stderr
    return lines[0]


# --- what is published: a data set folder, a preference set (private) and a student --------------------

@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from tinythinker.data.preferences import PairSet, write_preference_config
    from tinythinker.students import make_tiny_student

    root = tmp_path_factory.mktemp("hub-roundtrip")
    data = write_stage_data(root / "csqa", dataset="csqa")
    old = write_stage_data(root / "csqa-old", TOY_QUESTIONS[:2], dataset="csqa")  # an earlier version: 2 questions
    rows = [{"id": q.id, "stage": "recall", "prompt": f"{q.text}\nRecall:", "chosen": q.recall, "rejected": "No idea."}
            for q in TOY_QUESTIONS]
    prefs = root / "preferences"
    info = {"student": "runs/x/best", "samples": 2, "sampling": {"do_sample": True, "temperature": 0.7, "top_k": 0},
            "seed": 42, "data": DATA, "config": "csqa-full"}
    write_preference_config(prefs, dataset="csqa", iteration=1, pair_sets=[PairSet("recall", rows, {"pairs": len(rows)})], info=info)
    student = make_tiny_student("seq2seq", all_texts(), root / "student", seed=0, d_model=32, layers=1, heads=2, d_ff=64,
                                vocab_size=400)
    return {"root": root, "data": data, "old": old, "prefs": prefs, "student": student}


@pytest.fixture(scope="module")
def hub(local, tmp_path_factory):
    """The local Hub with the old data set (commit recorded), then the current one, the preference set
    (private) and the student pushed by `tinythinker push`."""
    home = tmp_path_factory.mktemp("hf-push")
    with LocalHub(tokens={TOKEN}) as server:
        pushes = [(local["old"], DATA, ()), (local["data"], DATA, ()), (local["prefs"], PREFS, ("--private",)),
                  (local["student"], STUDENT, ()), (local["old"], PRIVATE, ("--private",))]
        pushed = {}
        done = run_many([("push", folder, "--repo", repo, *extra) for folder, repo, extra in pushes],
                        env=environment(server.endpoint, home), cwd=REPO)
        for (_, repo, _), result in zip(pushes, done):
            assert result.returncode == 0, result.stderr[-3000:]
            pushed.setdefault(repo, []).append(result.stdout)
        server.old_commit = server.repo(DATA).commits[-2]  # type: ignore[attr-defined]
        yield server


def test_push_put_binary_files_in_lfs(hub, local):
    data, student = hub.repo(DATA), hub.repo(STUDENT, "model")
    files = {p.relative_to(local["data"]).as_posix(): p.read_bytes() for p in local["data"].rglob("*") if p.is_file()}
    assert {path: data.files.get(path) for path in files} == files
    assert {p for p in files if p.endswith(".parquet")} <= data.lfs_files()
    assert all(p.endswith(".parquet") for p in data.lfs_files()) and "README.md" not in data.lfs_files()
    assert "model.safetensors" in student.lfs_files() and "config.json" not in student.lfs_files()
    assert hub.repo(PREFS).visibility == "private"
    assert {auth for _, _, auth in hub.storage_requests} == {None}


def test_a_push_removes_the_files_the_new_version_no_longer_has(hub, local, tmp_path):
    """The data set was pushed twice: 2 questions, then 4. Parquet names change with their content, so
    the second push deletes the first one's files in the same commit (they stay in its history)."""
    files = lambda folder: {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}  # noqa: E731
    new, old = files(local["data"]), files(local["old"])
    repo = hub.repo(DATA)
    assert set(repo.files) == new and {p for p in old - new if p.endswith(".parquet")}
    assert old <= set(repo.contents(hub.old_commit))
    # what a user who globs the split's files reads: the new rows only
    loaded = python(f"""
        import json, datasets
        test = datasets.load_dataset({DATA!r}, data_files={{"test": "data/csqa-full/test-*.parquet"}}, split="test")
        print(json.dumps(test.to_list()))
    """, endpoint=hub.endpoint, home=tmp_path / "hf")
    assert loaded == parquet_rows(local["data"], "csqa-full")["test"]


def test_load_dataset_and_preferences_from_the_hub(hub, local, tmp_path):
    loaded = python(f"""
        import json, datasets
        full = datasets.load_dataset({DATA!r}, "csqa-full")
        prefs = datasets.load_dataset({PREFS!r}, "csqa-dpo-iter1")
        old = datasets.load_dataset({DATA!r}, "csqa-full", revision={hub.old_commit!r})
        print(json.dumps({{"full": {{s: full[s].to_list() for s in full}}, "prefs": {{s: prefs[s].to_list() for s in prefs}},
                          "old_test": old["test"].num_rows}}))
    """, endpoint=hub.endpoint, home=tmp_path / "hf")
    assert loaded["full"] == parquet_rows(local["data"], "csqa-full")
    assert loaded["prefs"] == parquet_rows(local["prefs"], "csqa-dpo-iter1")
    assert loaded["old_test"] == 2 and len(loaded["full"]["test"]) == 4  # the pinned commit reads the old rows
    # the parquet files came through the LFS redirect to the storage host, without the token
    commit = hub.repo(DATA).commits[-1]
    assert any(m == "HEAD" and f"/datasets/{DATA}/resolve/{commit}/data/csqa-full/" in p for m, p, _ in hub.state.requests)
    assert any(m == "GET" and p.startswith("/lfs/") for m, p, _ in hub.storage_requests)


def test_student_from_the_hub_loads_with_transformers_and_student_load(hub, local, tmp_path):
    loaded = python(f"""
        import json, torch
        from transformers import AutoModelForSeq2SeqLM
        from tinythinker.students import Student
        model = AutoModelForSeq2SeqLM.from_pretrained({STUDENT!r})
        student = Student.load({STUDENT!r}, device="cpu")
        mine = Student.load({str(local["student"])!r}, device="cpu")
        same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        text = "What color is the sky on a clear day?"
        print(json.dumps({{"transformers": same(model, mine.model), "student": same(student.model, mine.model),
                          "seq2seq": student.is_seq2seq, "revision": student.revision,
                          "tokens": student.tokenizer(text)["input_ids"] == mine.tokenizer(text)["input_ids"]}}))
    """, endpoint=hub.endpoint, home=tmp_path / "hf")
    assert loaded == {"transformers": True, "student": True, "seq2seq": True, "tokens": True,
                      "revision": hub.repo(STUDENT, "model").commits[-1]}


INFER_REVISIONS = [("v1", 2), ("old", 2), (None, 4)]  # "old": the commit of the earlier version


@pytest.fixture(scope="module")
def hub_reads(hub, local, tmp_path_factory) -> dict:
    """{name: (its folder, its outcome)} of every command that reads the local Hub with the right token, run in
    one interpreter (tests/cli_batch.py) with one cache, as one user's runs: the reading commands below and the
    failure cases of that token and endpoint (HUB_FAILURES)."""
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.endpoint, token=TOKEN).create_branch(DATA, repo_type="dataset", branch="v1", revision=hub.old_commit,
                                                             exist_ok=True)
    root = tmp_path_factory.mktemp("hub-reads")
    commands = {
        "train": lambda t: ("train", "sft", "--data", DATA, "--config", "csqa-full", "--student", STUDENT, "--out", t / "sft",
                            "--epochs", "1", "--interval", "1", "--batch-size", "4", "--eval-limit", "2", "--no-progress"),
        "eval": lambda t: ("eval", "--student", STUDENT, "--data", DATA, "--revision", "main", "--config", "csqa-full",
                           "--out", t / "results", "--limit", "2", "--device", "cpu", "--model_args", "max_new_tokens=8"),
        **{f"infer-{revision}": (lambda revision: lambda t: (
            "infer", "--student", STUDENT, "--data", DATA,
            *(["--revision", hub.old_commit if revision == "old" else revision] if revision else []),
            "--config", "csqa-full", "--out", t / "t.jsonl"))(revision) for revision, _ in INFER_REVISIONS},
        "private": lambda t: _infer(t, PRIVATE),
        "local-revision": lambda t: _infer(t, local["data"], local["student"], "--revision", "v1"),
        **{case_id: case[0] for case_id, case in zip(HUB_FAILURE_IDS, HUB_FAILURES) if case[2] == TOKEN and case[3] is None},
    }
    folders = {name: root / name for name in commands}
    for folder in folders.values():
        folder.mkdir()
    done = run_many([command(folders[name]) for name, command in commands.items()], env=environment(hub.endpoint, root / "hf"),
                    cwd=root)
    return {"home": root / "hf", **{name: (folders[name], result) for name, result in zip(commands, done)}}


def test_train_sft_reads_the_hub_and_names_the_commit(hub, hub_reads):
    commit = hub.repo(DATA).commits[-1]
    folder, done = hub_reads["train"]
    run = folder / "sft"
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"of {DATA} at commit {commit}" in done.stderr
    settings = json.loads((run / "run.json").read_text())
    assert settings["data_commit"] == commit and settings["student_commit"] == hub.repo(STUDENT, "model").commits[-1]
    card = (run / "best" / "README.md").read_text()
    assert f"data_revision: {commit}" in card and f"at commit [`{commit}`]" in card and f"--revision {commit}" in card


def test_eval_reads_the_hub_and_the_results_name_the_commits(hub, hub_reads):
    commit, student_commit = hub.repo(DATA).commits[-1], hub.repo(STUDENT, "model").commits[-1]
    folder, done = hub_reads["eval"]
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = (folder / "results").rglob("results_*.json")
    report = json.loads(path.read_text())
    assert set(report["results"]) == {"tinythinker_csqa", "tinythinker_csqa_analyze_oracle", "tinythinker_csqa_summarize_oracle"}
    assert {task: config["metadata"].get("data_revision") for task, config in report["configs"].items()} == dict.fromkeys(report["results"], commit)
    assert report["config"]["model_args"]["revision"] == student_commit == report["config"]["tinythinker_student_revision"]


def test_infer_pins_a_branch_tag_or_commit(hub, hub_reads):
    for revision, questions in INFER_REVISIONS:
        folder, done = hub_reads[f"infer-{revision}"]
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads((folder / "t.summary.json").read_text())
        expected = hub.old_commit if revision else hub.repo(DATA).commits[-1]
        assert (summary["data_revision"], summary["questions"]) == (expected, questions)
        assert summary["student_revision"] == hub.repo(STUDENT, "model").commits[-1]


def test_offline_a_revision_resolves_to_the_commit_the_cache_saw(hub, hub_reads, tmp_path):
    """With HF_HUB_OFFLINE=1 and the cache of the runs above, main resolves to the commit that cache saw; an id
    the cache never saw is one line."""
    offline, never = run_many([_infer(tmp_path / "offline", DATA, STUDENT, "--limit", "1"), _infer(tmp_path / "never", "org/never-read")],
                              env={**environment(hub.endpoint, hub_reads["home"]), "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr[-3000:]
    summary = json.loads((tmp_path / "offline" / "t.summary.json").read_text())
    assert summary["data_revision"] == hub.repo(DATA).commits[-1]
    assert summary["student_revision"] == hub.repo(STUDENT, "model").commits[-1]
    assert one_error_line(never).startswith("Error: org/never-read: no local folder of that name, and no Hub dataset repo of that "
                                            "id in the local cache (HF_HUB_OFFLINE=1 keeps the Hub out of reach)")


# --- bad input: one line naming the repo and the fix, never a traceback, never the token ------------------

def _infer(tmp_path, data=DATA, student=STUDENT, *extra):
    return ("infer", "--student", student, "--data", data, "--config", "csqa-full", "--out", tmp_path / "t.jsonl", *extra)


def _train(tmp_path, data=DATA, *extra):
    return ("train", "sft", "--data", data, "--config", "csqa-full", "--student", STUDENT, "--out", tmp_path / "run",
            "--epochs", "1", *extra)


def _eval(tmp_path, data=DATA, *extra):
    return ("eval", "--student", STUDENT, "--data", data, "--config", "csqa-full", "--out", tmp_path / "res",
            "--limit", "1", *extra)


def _reflect(tmp_path, data=DATA, *extra):
    return ("reflect", "--student", STUDENT, "--data", data, "--config", "csqa-full", "--out", tmp_path / "run", *extra)


def _build(tmp_path, raw=DATA, *extra):  # raw questions from the Hub (they would be in tau/commonsense_qa's layout)
    return ("build", "csqa", "--raw", raw, "--responses", tmp_path / "teacher.jsonl", "--out", tmp_path / "run", *extra)


MISSING = "{repo}: no such dataset repo on {endpoint}, or your token cannot read it; check the id (ORG/NAME) and the token's access, or pass a local folder"
NO_REVISION = ("{repo}: the dataset repo has no revision 'nope' on {endpoint}; pass an existing branch, tag or commit id with "
               "--revision (or leave --revision out for main)")
PRIVATE_NO_TOKEN = ("{repo}: no such dataset repo on {endpoint}, or it is private and no token is set; check the id (ORG/NAME), "
                    "or set HF_TOKEN (or run `hf auth login`) with read access to it")
BAD_TOKEN = "{repo}: {endpoint} refused your token (401 invalid credentials); set HF_TOKEN to a valid token or run `hf auth login`"
UNREACHABLE = ("{repo}: cannot reach the Hub at {endpoint} (ConnectError); check your network and HF_ENDPOINT, or set "
               "HF_HUB_OFFLINE=1 to use what is in the local cache")
MISSING_STUDENT = ("org/nobody: no such model repo on {endpoint}, or your token cannot read it; check the id (ORG/NAME) and the "
                   "token's access, or pass a local folder")


HUB_FAILURES = [  # (command, repo, token, endpoint: None for the local Hub, expected)
    (lambda t: _infer(t, "org/missing"), "org/missing", TOKEN, None, MISSING),
    (lambda t: _train(t, "org/missing"), "org/missing", TOKEN, None, MISSING),
    (lambda t: _eval(t, "org/missing"), "org/missing", TOKEN, None, MISSING),
    (lambda t: _infer(t, DATA, STUDENT, "--revision", "nope"), DATA, TOKEN, None, NO_REVISION),
    (lambda t: _train(t, DATA, "--revision", "nope"), DATA, TOKEN, None, NO_REVISION),
    (lambda t: _reflect(t, "org/missing"), "org/missing", TOKEN, None, MISSING),
    (lambda t: _reflect(t, DATA, "--revision", "nope"), DATA, TOKEN, None, NO_REVISION),
    (lambda t: _eval(t, DATA, "--revision", "nope"), DATA, TOKEN, None, NO_REVISION),
    (lambda t: _build(t, "org/missing"), "org/missing", TOKEN, None, MISSING),
    (lambda t: _build(t, DATA, "--revision", "nope"), DATA, TOKEN, None, NO_REVISION),
    (lambda t: ("student", "init", "--data", "org/missing", "--out", t / "run"), "org/missing", TOKEN, None, MISSING),
    (lambda t: _infer(t, PRIVATE), PRIVATE, None, None, PRIVATE_NO_TOKEN),
    (lambda t: _infer(t, DATA), DATA, "hf_not_a_token_of_this_hub", None, BAD_TOKEN),
    (lambda t: _infer(t, DATA), DATA, TOKEN, "http://127.0.0.1:9", UNREACHABLE),
    (lambda t: _train(t, DATA), DATA, TOKEN, "http://127.0.0.1:9", UNREACHABLE),
    (lambda t: _infer(t, DATA, "org/nobody"), "org/nobody", TOKEN, None, MISSING_STUDENT),
]
HUB_FAILURE_IDS = ["missing-infer", "missing-train", "missing-eval", "revision-infer", "revision-train", "missing-reflect",
                   "revision-reflect", "revision-eval", "missing-build", "revision-build", "missing-student-init",
                   "private-no-token", "wrong-token", "unreachable-infer", "unreachable-train", "missing-student"]


@pytest.fixture(scope="module")
def hub_failures(hub, hub_reads, tmp_path_factory) -> dict:
    """{case id: (its folder, its outcome)}: the cases that share an endpoint and a token run in one
    interpreter (tests/cli_batch.py), each in a folder of its own; those of the right token and the local
    Hub ran with the reading commands (hub_reads)."""
    root = tmp_path_factory.mktemp("hub-failures")
    groups: dict[tuple, list[str]] = {}
    for case_id, (_, _, token, endpoint, _) in zip(HUB_FAILURE_IDS, HUB_FAILURES):
        if case_id not in hub_reads:
            groups.setdefault((token, endpoint or hub.endpoint), []).append(case_id)
    command = {case_id: case[0] for case_id, case in zip(HUB_FAILURE_IDS, HUB_FAILURES)}
    outcomes = {case_id: hub_reads[case_id] for case_id in HUB_FAILURE_IDS if case_id in hub_reads}
    for index, ((token, endpoint), case_ids) in enumerate(groups.items()):
        folders = [root / case_id for case_id in case_ids]
        for folder in folders:
            folder.mkdir()
        done = run_many([command[case_id](folder) for case_id, folder in zip(case_ids, folders)],
                        env=environment(endpoint, root / f"hf-{index}", token), cwd=root)
        outcomes.update({case_id: (folder, result) for case_id, folder, result in zip(case_ids, folders, done)})
    return outcomes


@pytest.mark.parametrize("command, repo, token, endpoint, expected", HUB_FAILURES, ids=HUB_FAILURE_IDS)
def test_hub_failures_are_one_line(hub, hub_failures, request, command, repo, token, endpoint, expected):
    endpoint = endpoint or hub.endpoint
    folder, done = hub_failures[request.node.callspec.id]
    line = one_error_line(done)
    assert line == "Error: " + expected.format(repo=repo, endpoint=endpoint)
    assert not (folder / "run").exists() and not (folder / "t.jsonl").exists() and not (folder / "res").exists()
    if token and token != TOKEN:
        assert token not in done.stderr


def test_private_repo_reads_with_the_token(hub_reads):
    _, done = hub_reads["private"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 questions" in done.stdout


def test_revision_of_a_local_folder_is_refused(local, hub_reads):
    assert one_error_line(hub_reads["local-revision"][1]) == (
        f"Error: --revision v1 names a Hub commit, but {local['data']} is a local folder; leave --revision out or pass a Hub id "
        "(ORG/NAME)")


def test_eval_pins_data_and_student_commits(tmp_path):
    """What `tinythinker eval` hands lm-eval, and which commit the tasks read when the data set comes
    from the student's card (no --data)."""
    from tinythinker.artifacts import write_card
    from tinythinker.evaluate.harness import lm_eval_argv
    from tinythinker.evaluate.tasks import data_revision, data_source

    student = tmp_path / "student"
    student.mkdir()
    write_card(student, {"tinythinker": {"method": "sft", "data": DATA, "data_revision": "a" * 40, "config": "csqa-full"}}, "# s")
    metadata = {"pretrained": str(student)}
    assert data_source("csqa", metadata) == DATA and data_revision("csqa", metadata, DATA) == "a" * 40
    assert data_revision("csqa", {**metadata, "data_revision": "b" * 40}, DATA) == "b" * 40
    assert data_revision("csqa", metadata, "other/data") is None and data_revision("obqa", metadata, DATA) is None

    argv = lm_eval_argv(student=STUDENT, data=DATA, config="csqa-full", data_revision="c" * 40, student_revision="d" * 40)
    model_args = argv[argv.index("--model_args") + 1 : argv.index("--metadata")]
    metadata_args = argv[argv.index("--metadata") + 1 : argv.index("--batch_size")]
    assert f"revision={'d' * 40}" in model_args and metadata_args == [f"data={DATA}", f"data_revision={'c' * 40}"]


def test_build_reads_a_hub_source_at_a_pinned_revision(hub, world, tmp_path):
    """The raw questions from the Hub (tau/commonsense_qa's layout) in two versions: `build --revision`
    reads the first while main has the second, and the card names the commit read."""
    import datasets

    from tinythinker.artifacts import read_card_metadata

    raw = world("csqa") / "raw"

    def hub_rows(name: str) -> list[dict]:  # the release format as the Hub's csqa has it
        rows = [json.loads(line) for line in (raw / name).read_text().splitlines() if line.strip()]
        return [{"id": r["id"], "question": r["question"]["stem"], "question_concept": "", "answerKey": r["answerKey"],
                 "choices": {"label": [c["label"] for c in r["question"]["choices"]],
                             "text": [c["text"] for c in r["question"]["choices"]]}} for r in rows]

    train, dev = hub_rows("train_rand_split.jsonl"), hub_rows("dev_rand_split.jsonl")
    home = tmp_path / "hf"
    for version, rows in (("v1", train), ("v2", train[: len(train) // 2])):
        folder = tmp_path / version
        for split, split_rows in (("train", rows), ("validation", dev)):
            (folder / "data").mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(split_rows).to_parquet(folder / "data" / f"{split}-{version}.parquet")
        done = tinythinker("push", folder, "--repo", "org/csqa-raw", endpoint=hub.endpoint, home=home)
        assert done.returncode == 0, done.stderr[-3000:]
    first = hub.repo("org/csqa-raw").commits[-2]
    out = tmp_path / "built"
    done = tinythinker("build", "csqa", "--raw", "org/csqa-raw", "--revision", first, "--responses", world("csqa") / "teacher.jsonl",
                       "--out", out, endpoint=hub.endpoint, home=home)
    assert done.returncode == 0, done.stderr[-3000:]
    provenance = read_card_metadata(out)["tinythinker"]
    assert provenance["source_revision"].startswith(f"org/csqa-raw@{first} ")
    assert provenance["raw_counts"] == {"train": len(train), "validation": len(dev)}  # v1's rows, not main's
    refused = tinythinker("build", "csqa", "--raw", raw, "--revision", "v1", "--responses", world("csqa") / "teacher.jsonl",
                          "--out", tmp_path / "local", endpoint=hub.endpoint, home=home)
    assert one_error_line(refused) == (f"Error: --revision v1 names a Hub commit, but {raw} is a local folder; leave --revision "
                                       "out or pass a Hub id (ORG/NAME) with --raw")
