"""One vocabulary across the CLI, as real subprocesses: out-of-range values are refused before any
work, and the old spellings still work for one release with a one-line warning on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tinythinker(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinythinker", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def warnings_of(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]


INFER = ("infer", "--student", "s", "--data", "d", "--config", "toy-full", "--out", "t.jsonl")
SFT = ("train", "sft", "--data", "d", "--config", "toy-full", "--student", "s", "--out", "o")


@pytest.mark.parametrize("args, option, bound", [
    (("eval", "--student", "s", "--config", "csqa-full", "--gen-batch-size", "0"), "--gen-batch-size", "x>=1"),
    (("eval", "--student", "s", "--config", "csqa-full", "--batch-size", "0"), "--batch-size", "x>=1"),  # the old spelling too
    (("eval", "--student", "s", "--config", "csqa-full", "--limit", "0"), "--limit", "x>0"),
    ((*INFER, "--gen-batch-size", "0"), "--gen-batch-size", "x>=1"),
    ((*INFER, "--samples", "0"), "--samples", "x>=1"),
    ((*INFER, "--limit", "0"), "--limit", "x>=1"),
    ((*INFER, "--temperature", "0"), "--temperature", "x>0"),
    ((*SFT, "--gen-batch-size", "0"), "--gen-batch-size", "x>=1"),
    (("inspect", ".", "--examples", "-1"), "--examples", "x>=0"),
    (("world", "csqa", "--out", "w", "--seed", "-1"), "--seed", "x>=0"),
    (("quickstart", "--seed", "-1"), "--seed", "x>=0"),
])
def test_out_of_range_values_are_refused(tmp_path, args, option, bound):
    result = tinythinker(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"Invalid value for '{option}'" in result.stderr and bound in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("args, option", [
    ((*SFT, "--lr", "nan"), "--lr"),
    ((*SFT, "--warmup-ratio", "nan"), "--warmup-ratio"),
    ((*INFER, "--temperature", "inf"), "--temperature"),
    (("reflect", "--student", "s", "--data", "d", "--config", "toy-full", "--out", "o", "--beta", "NaN"), "--beta"),
    (("teach", "csqa", "--raw", "r", "--out", "o", "--timeout", "inf"), "--timeout"),
])
def test_nan_and_inf_are_refused_in_one_line(tmp_path, args, option):
    result = tinythinker(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: Invalid value for '{option}'") and "is not a finite number" in last, result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, old, new, error", [
    # each fails fast after the warning (an --out that exists, or both spellings given): no model is loaded
    (("eval", "--student", "s", "--output-path", "res", "--batch-size", "4"), ["--output-path", "--batch-size"],
     ["--out", "--gen-batch-size"], "Error: say what to evaluate"),
    ((*INFER, "--batch-size", "4"), ["--batch-size"], ["--gen-batch-size"], "Error: t.jsonl: exists"),
    (("student", "init", "--tiny", "--data", "d", "--out", "t.jsonl"), ["--tiny"], [None],
     "Error: t.jsonl: is a file, not an output folder"),
    ((*SFT, "--eval-batch-size", "4", "--gen-batch-size", "4"), ["--eval-batch-size"], ["--gen-batch-size"],
     "Error: --eval-batch-size and --gen-batch-size are the same option; give --gen-batch-size only"),
    (("reflect", "--student", "s", "--data", "d", "--config", "toy-full", "--out", "o", "--eval-batch-size", "4",
      "--gen-batch-size", "4"), ["--eval-batch-size"], ["--gen-batch-size"],
     "Error: --eval-batch-size and --gen-batch-size are the same option"),
])
def test_old_spellings_warn_in_one_line(tmp_path, args, old, new, error):
    (tmp_path / "t.jsonl").write_text("")
    result = tinythinker(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    expected = [f"Warning: {o} is deprecated and goes in the next release; "
                + (f"use {n}" if n else "students are tiny by default (the only kind made here)") for o, n in zip(old, new)]
    assert warnings_of(result) == expected
    assert result.stderr.strip().splitlines()[-1].startswith(error), result.stderr


def test_run_dir_still_names_the_run_folder(tmp_path):
    recipe = REPO / "recipes" / "csqa-t5-small.yaml"
    result = tinythinker("run", recipe, "--run-dir", tmp_path / "r", "--dry-run", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert warnings_of(result) == ["Warning: --run-dir is deprecated and goes in the next release; use --out"]
    assert f"eval --student {tmp_path / 'r' / 'dpo' / 'best'} " in result.stdout and " --no-progress\n" in result.stdout
    assert f"report {tmp_path / 'r' / 'results'} --out {tmp_path / 'r' / 'report'}\n" in result.stdout


def _reflection_run(folder: Path) -> Path:
    """The two files `tinythinker report` reads from a self-reflection run folder."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config": "csqa-full", "iterations": 1}))
    lines = [{"kind": "eval", "iteration": 0, "student": "sft/best", "accuracy": 0.25, "correct": 1, "questions": 4},
             {"kind": "iteration", "iteration": 1, "pairs": {"recall": 10, "analyze": 30}, "best_accuracy": 0.5, "best_step": 2}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_report_out_folder_json_flag_and_old_file_options(tmp_path):
    dpo = _reflection_run(tmp_path / "dpo")
    new = tinythinker("report", dpo, "--out", tmp_path / "out", "--json", cwd=tmp_path)
    assert new.returncode == 0 and not warnings_of(new), new.stderr
    printed = json.loads(new.stdout)  # stdout holds the JSON only
    assert [p["accuracy"] for p in printed["reflection"][0]["points"]] == [0.25, 0.5]
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"accuracy_per_iteration.png", "training_dpo.png", "report.json", "report.md"}
    assert "](training_dpo.png)" in (tmp_path / "out" / "report.md").read_text()  # beside the markdown
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == printed

    old = tinythinker("report", dpo, "--plots", tmp_path / "plots", "--markdown", tmp_path / "r.md",
                      "--json", tmp_path / "r.json", cwd=tmp_path)
    assert old.returncode == 0, old.stderr
    assert [w.split(" is deprecated")[0] for w in warnings_of(old)] == ["Warning: --plots DIR", "Warning: --markdown FILE",
                                                                        "Warning: --json FILE"]
    assert (tmp_path / "plots" / "accuracy_per_iteration.png").exists()
    assert "](plots/training_dpo.png)" in (tmp_path / "r.md").read_text()  # relative to the markdown file
    assert json.loads((tmp_path / "r.json").read_text()) == printed


@pytest.mark.parametrize("command", [("build",), ("teach", "ask"), ("push",), ("train", "sft"), ("infer",), ("reflect",),
                                     ("eval",), ("quickstart",), ("run",)])
def test_every_long_command_takes_no_progress(command):
    from click.testing import CliRunner

    from tinythinker.cli import main

    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "--progress / --no-progress" in result.output
