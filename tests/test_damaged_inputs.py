"""Damaged files a user may meet (a truncated copy, bytes in a card, a broken tokenizer): each ends a real
`tinythinker` command in one line that names the file, never a traceback, and nothing is written."""

from __future__ import annotations

import os
import shutil

import pytest

from cli_batch import run_many
from helpers_sft import REPO, make_student, write_stage_data

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    return write_stage_data(root / "data"), make_student(root / "student"), root


def _damaged(root, data, student):
    cases = {}
    truncated = shutil.copytree(student, root / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases["truncated weights"] = ("student", truncated, f"{truncated}: cannot load the weights (model.safetensors: ")
    tokenizer = shutil.copytree(student, root / "tokenizer")
    (tokenizer / "tokenizer.json").write_bytes(b"\x00\xffnot json{")
    cases["garbage tokenizer"] = ("student", tokenizer, f"{tokenizer}: cannot read the tokenizer (tokenizer.json: ")
    broken_yaml = shutil.copytree(data, root / "yaml")
    card = broken_yaml / "README.md"
    card.write_text(card.read_text().replace("configs:", "configs: [unclosed", 1))
    cases["broken card YAML"] = ("data", broken_yaml, f"{card}:")
    binary = shutil.copytree(data, root / "binary")
    (binary / "README.md").write_bytes(b"---\nconfigs: \xff\xfe\n---\n")
    cases["binary card"] = ("data", binary, f"{binary / 'README.md'}: the card is not UTF-8 text")
    return cases


def test_damaged_students_and_cards_are_one_line_in_infer_and_train(inputs, tmp_path):
    data, student, root = inputs
    cases = _damaged(tmp_path, data, student)
    lines = []
    for name, (which, path, _) in cases.items():
        use = {"student": student, "data": data, which: path}
        lines.append(["infer", "--student", use["student"], "--data", use["data"], "--config", "zoo-full", "--split",
                      "validation", "--out", tmp_path / f"{name}.jsonl", "--no-progress"])
        lines.append(["train", "sft", "--data", use["data"], "--config", "zoo-full", "--student", use["student"], "--out",
                      tmp_path / f"{name}-sft", "--epochs", 1, "--no-progress"])
    results = run_many(lines, env=ENV, cwd=REPO)
    for (name, (_, _, message)), infer, train in zip(cases.items(), results[0::2], results[1::2]):
        for result in (infer, train):
            stderr = result.stderr.strip()
            assert result.returncode == 2 and "Traceback" not in stderr, (name, stderr[-2000:])
            assert stderr.splitlines()[-1].startswith(f"Error: {message}"), (name, stderr)
        assert not (tmp_path / f"{name}.jsonl").exists() and not (tmp_path / f"{name}-sft").exists(), name


def test_a_truncated_parquet_is_one_line_in_inspect(inputs, tmp_path):
    data, _, _ = inputs
    copy = shutil.copytree(data, tmp_path / "data")
    part = sorted((copy / "data").rglob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    (result,) = run_many([["inspect", copy]], env=ENV, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (f"Error: {part}: not a readable parquet file (Parquet magic bytes not found in footer. Either "
                                     "the file is corrupted or this is not a parquet file.); the file is damaged or incomplete: "
                                     "rebuild the folder or copy it again")
