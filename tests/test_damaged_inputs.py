"""Damaged files a user may meet (a truncated copy, bytes in a card, a broken tokenizer): each ends a real
`tinythinker` command in one line that names the file, never a traceback, and nothing is written."""

from __future__ import annotations

import os
import shutil

import pytest

from cli_batch import file_permissions_bind, run_many
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


def test_a_read_only_parent_folder_is_one_line_and_nothing_is_written(inputs, tmp_path):
    prefix = file_permissions_bind()
    if prefix is None:
        pytest.skip("root without setpriv: file permissions do not bind")
    data, student, _ = inputs
    parent = tmp_path / "read-only"
    parent.mkdir()
    lines = {
        "world": ["world", "csqa", "--out", parent / "world"],
        "student init": ["student", "init", "--data", data, "--out", parent / "student"],
        "infer": ["infer", "--student", student, "--data", data, "--config", "zoo-full", "--split", "validation",
                  "--out", parent / "predictions.jsonl", "--no-progress"],
        "train sft": ["train", "sft", "--data", data, "--config", "zoo-full", "--student", student,
                      "--out", parent / "nested" / "sft", "--epochs", 1, "--no-progress"],
    }
    parent.chmod(0o555)
    try:
        results = run_many(list(lines.values()), env=ENV, cwd=REPO, prefix=prefix)
    finally:
        parent.chmod(0o755)
    for name, result in zip(lines, results):
        stderr = result.stderr.strip()
        assert result.returncode == 2 and "Traceback" not in stderr and len(stderr.splitlines()) == 1, (name, stderr[-2000:])
        assert stderr.startswith(f"Error: cannot write {parent}/") and "Permission denied" in stderr, (name, stderr)
    assert list(parent.iterdir()) == []


def _gpt2_student(folder, tokenizer_from, positions: int):
    """A GPT-2 student (learned absolute positions, ``positions`` of them) with the tokenizer of another."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_rows_longer_than_the_students_positions_are_counted_at_train_start(inputs, tmp_path):
    """A decoder with 48 learned positions meets prompt + target rows over 48 tokens: train sft says how many,
    per stage, and what to pass, before any step (and leaves no run folder); with inputs cut to fit it trains."""
    data, _, root = inputs
    decoder = _gpt2_student(tmp_path / "gpt2", make_student(tmp_path / "causal", kind="causal"), positions=48)
    refused, fits = run_many([
        ["train", "sft", "--data", data, "--config", "zoo-full", "--student", decoder, "--out", tmp_path / "sft",
         "--epochs", 1, "--no-progress"],
        ["train", "sft", "--data", data, "--config", "zoo-full", "--student", decoder, "--out", tmp_path / "sft-cut",
         "--epochs", 1, "--max-input-length", 24, "--max-length", 24, "--eval-limit", 1, "--no-progress"],
    ], env=ENV, cwd=REPO)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert lines[-1].startswith(f"Error: {decoder} takes at most 48 tokens (input and target together), and these "
                                "training rows are longer: "), lines
    assert "--max-input-length" in lines[-1] and "of" in lines[-1].split("longer: ")[1]
    assert not (tmp_path / "sft").exists()
    assert fits.returncode == 0, fits.stderr[-2000:]
