"""`tinythinker build / inspect / push` on the command line; every bad input ends in one line, exit 2,
and leaves no output behind. The inputs are a small generated world (conftest: ``world``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinythinker.artifacts import read_card_metadata
from tinythinker.cli import main

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    """The CLI as a real subprocess."""
    return subprocess.run([sys.executable, "-m", "tinythinker", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=180)


def cli_in_process(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def assert_one_line_error(result, *fragments):
    stderr = result.stderr if hasattr(result, "stderr") and isinstance(result.stderr, str) else result.output
    returncode = result.returncode if hasattr(result, "returncode") else result.exit_code
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def csqa_world(world):
    return world("csqa")


@pytest.fixture
def csqa_raw(tmp_path, csqa_world):
    """A copy of the world's csqa raw folder, for tests that break it."""
    folder = tmp_path / "raw"
    shutil.copytree(csqa_world / "raw", folder)
    return folder


@pytest.fixture
def csqa_responses(csqa_world):
    return csqa_world / "teacher.jsonl"


def build_args(raw, responses, out, *extra):
    return ["build", "csqa", "--raw", raw, "--responses", responses, "--out", out, *extra]


def test_build_inspect_and_dry_run(tmp_path, csqa_world, csqa_responses):
    out, next_round = tmp_path / "csqa", tmp_path / "round2.jsonl"
    done = cli(*build_args(csqa_world / "raw", csqa_responses, out, "--seed", "42", "--next-round", next_round))
    assert done.returncode == 0, done.stderr
    assert "csqa-summarize_only" in done.stdout and "rejected: truncated" in done.stdout
    selection = read_card_metadata(out)["tinythinker"]["selection"]
    needs_round = sum(split["needs_round"] for split in selection.values())
    assert needs_round > 0 and f"requests written to {next_round}" in done.stdout
    assert next_round.read_text().count("\n") == needs_round
    shown = cli("inspect", out)
    assert shown.returncode == 0, shown.stderr
    for text in ("csqa-full", "recall_single", "rejected: bad_explanation_prefix", "Recall:", "So the answer is option"):
        assert text in shown.stdout
    dry = cli("push", out, "--repo", "me/tt-csqa", "--dry-run")
    assert dry.returncode == 0 and "would upload 26 files" in dry.stdout  # README + 18 stage-config files + cot 3 + dsbs 4


def test_missing_raw_file(tmp_path, csqa_raw, csqa_responses):
    (csqa_raw / "dev_rand_split.jsonl").unlink()
    result = cli(*build_args(csqa_raw, csqa_responses, tmp_path / "out"))
    assert_one_line_error(result, "dev_rand_split.jsonl: raw file not found", "pass --raw")
    assert not (tmp_path / "out").exists()


def test_unreadable_raw_file(tmp_path, csqa_raw, csqa_responses):
    (csqa_raw / "dev_rand_split.jsonl").write_bytes(b"\x80\x81 not utf-8\n")
    result = cli_in_process(*build_args(csqa_raw, csqa_responses, tmp_path / "out"))
    assert_one_line_error(result, "dev_rand_split.jsonl: raw file is not UTF-8 text")


def test_raw_line_not_json(tmp_path, csqa_raw, csqa_responses):
    path = csqa_raw / "train_rand_split.jsonl"
    text = path.read_text()
    path.write_text(text + "{broken\n")
    result = cli(*build_args(csqa_raw, csqa_responses, tmp_path / "out"))
    assert_one_line_error(result, f"{path}:{text.count(chr(10)) + 1}: not valid JSON")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change,message", [
    ({"answerKey": None}, "has no answer ('answerKey')"),
    ({"answerKey": "Z"}, "has answer 'Z', not one of its options A, B, C, D, E"),
    ({"choices": 3}, "has 3 options, this data set needs 5"),
])
def test_bad_question(tmp_path, csqa_raw, csqa_responses, change, message):
    path = csqa_raw / "train_rand_split.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if "choices" in change:
        rows[2]["question"]["choices"] = rows[2]["question"]["choices"][: change["choices"]]
    else:
        rows[2]["answerKey"] = change["answerKey"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli_in_process(*build_args(csqa_raw, csqa_responses, tmp_path / "out"))
    assert rows[2]["id"] == "world-csqa-train-00002"
    assert_one_line_error(result, f"{path}:3: question world-csqa-train-00002", message)
    assert not (tmp_path / "out").exists()


def test_responses_not_jsonl(tmp_path, csqa_world, csqa_responses):
    responses = tmp_path / "teacher.json"
    lines = csqa_responses.read_text().splitlines()
    responses.write_text(json.dumps([json.loads(x) for x in lines[:2]], indent=2))
    result = cli(*build_args(csqa_world / "raw", responses, tmp_path / "out"))
    assert_one_line_error(result, f"{responses}:1: not valid JSON", "JSONL")
    assert not (tmp_path / "out").exists()


def test_responses_of_unknown_shape(tmp_path, csqa_world):
    responses = tmp_path / "teacher.jsonl"
    responses.write_text('{"question": "q", "answer": "A"}\n')
    result = cli_in_process(*build_args(csqa_world / "raw", responses, tmp_path / "out"))
    assert_one_line_error(result, f"{responses}:1: unknown response shape")


def test_responses_matching_no_question(tmp_path, world, csqa_world):
    responses = tmp_path / "teacher.jsonl"
    lines = (world("obqa") / "teacher.jsonl").read_text().splitlines()  # obqa's answers given to csqa
    responses.write_text("\n".join(lines[:3]) + "\n")
    result = cli(*build_args(csqa_world / "raw", responses, tmp_path / "out"))
    assert_one_line_error(result, f"{responses}:1: response matches no question of csqa")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path, csqa_world, csqa_responses):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli_in_process(*build_args(csqa_world / "raw", csqa_responses, out))
    assert_one_line_error(result, f"{out}: output folder exists; pass --overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --overwrite replaces only a folder the tool wrote (tests/test_overwrite.py has the others)
    refused = cli_in_process(*build_args(csqa_world / "raw", csqa_responses, out, "--overwrite"))
    assert_one_line_error(refused, f"{out}: --overwrite replaces only a folder that tinythinker wrote")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    for _ in range(2):  # into the empty folder, then over the folder it wrote
        replaced = cli_in_process(*build_args(csqa_world / "raw", csqa_responses, out, "--overwrite"))
        assert replaced.exit_code == 0, replaced.output
        assert sorted(p.name for p in out.iterdir()) == [".tinythinker", "README.md", "data"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial or old folder left beside it


def test_inspect_rejects_other_folders(tmp_path):
    assert_one_line_error(cli_in_process("inspect", tmp_path), "not a data set folder")
    assert_one_line_error(cli_in_process("inspect", tmp_path / "absent"), "no such folder")
