"""Training curves: `--report-to tensorboard` (real TensorBoard event files, read back with TensorBoard's
own reader) through an interruption and its resume, the one-line error when a tracker's package is
missing, and the curves `tinythinker report` draws from a run's metrics.jsonl."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cli_batch import run_many
from helpers_sft import REPO, cli, read_metrics, sft_args, tensorboard_scalars, write_stage_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sft_run(interrupted_sft) -> dict:
    """`train sft --report-to tensorboard` stopped by Ctrl-C, rerun and killed (SIGKILL) past its next
    checkpoint, rerun to the end (helpers_sft.interrupted_sft; test_sft checks its resume)."""
    assert interrupted_sft["interrupted"][0] == 130 and interrupted_sft["done"].returncode == 0, interrupted_sft["done"].stderr
    return interrupted_sft


def test_tensorboard_gets_the_metrics_lines_and_a_resumed_run_logs_each_step_once(sft_run):
    out = sft_run["out"]
    assert [step for step, _ in sft_run["before"]["train/loss"]][:7] == list(range(1, 8))  # flushed when Ctrl-C stopped it
    scalars = tensorboard_scalars(out / "tracking" / "tinythinker")
    metrics = read_metrics(out, drop=())
    train = [m for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert len(train) == 30 and len(evals) == 6
    expected = {"train/loss": [(m["step"], m["loss"]) for m in train],
                "train/lr": [(m["step"], m["lr"]) for m in train],
                "validation/accuracy": [(m["step"], m["accuracy"]) for m in evals]}
    for stage in ("recall", "analyze", "summarize"):
        expected[f"train/loss_{stage}"] = [(m["step"], m["loss"]) for m in train if m["stage"] == stage]
    for tag, points in expected.items():  # every step once, in order, with metrics.jsonl's figure (float32 there)
        assert [step for step, _ in scalars[tag]] == [step for step, _ in points], tag
        assert [value for _, value in scalars[tag]] == pytest.approx([value for _, value in points], rel=1e-6, abs=1e-9), tag
    hyperparameters = list((out / "tracking" / "tinythinker").glob("*/hparams.yml"))
    assert hyperparameters and "lr: 0.003" in hyperparameters[-1].read_text()


def test_a_missing_tracker_package_is_one_line_before_anything_runs(tmp_path):
    try:
        __import__("trackio")
        pytest.skip("trackio is installed here")
    except ImportError:
        pass
    data = write_stage_data(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset: csqa\nraw: world\nteacher:\n  responses: world\nstudent: tiny-seq2seq\nreport_to: trackio\n"
                      f"run_dir: {tmp_path / 'run'}\n")
    commands = {  # in one interpreter (tests/cli_batch.py), each a real CLI call
        "train": sft_args(data, tmp_path / "student", tmp_path / "train", "--report-to", "trackio"),
        "reflect": ["reflect", "--student", tmp_path / "student", "--data", data, "--config", "zoo-full", "--out",
                    tmp_path / "reflect", "--report-to", "trackio", "--no-progress"],
        "run": ["run", recipe],
    }
    for command, done in zip(commands, run_many(list(commands.values()), env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)):
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.strip() == "Error: --report-to trackio needs the trackio package: pip install trackio", command
        assert not (tmp_path / command).exists(), command


# --- the curves in the report -----------------------------------------------------------------------

def is_drawn_png(path: Path) -> bool:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    return path.read_bytes()[:8] == PNG_SIGNATURE and image.shape[1] > 600 and image.std() > 0.05


def test_report_draws_the_training_curves_of_a_run_and_links_them(sft_run, tmp_path):
    out = sft_run["out"]
    report = tmp_path / "report"
    done = cli("report", out, "--out", report)
    assert done.returncode == 0, done.stderr[-3000:]
    png = report / f"training_{out.name}.png"
    assert f"plot:{png}" in "".join(done.stdout.split()) and is_drawn_png(png)  # (rich wraps long paths)
    umask = os.umask(0)
    os.umask(umask)
    assert png.stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as any file written here (not mkstemp's 0600)
    markdown = (report / "report.md").read_text()
    assert "## Training curves" in markdown and f"### {out.name} (SFT)" in markdown
    assert f"![{out.name} training curves]({png.name})" in markdown  # relative to the markdown file
    best = max((m for m in read_metrics(out) if m["kind"] == "eval"), key=lambda m: (m["accuracy"], -m["step"]))
    assert f"at cycle {best['cycle']} (step {best['step']})" in markdown
    assert json.loads((report / "report.json").read_text())["training"] == [{"run": out.name, "kind": "sft", "folder": str(out)}]


def test_missing_empty_or_torn_metrics_give_no_curves_and_no_crash(sft_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(sft_run["out"] / "run.json", empty)
    (empty / "metrics.jsonl").write_text("")
    torn = shutil.copytree(sft_run["out"], tmp_path / "torn", ignore=shutil.ignore_patterns("tracking", "best", "last"))
    lines = (torn / "metrics.jsonl").read_text().splitlines()
    (torn / "metrics.jsonl").write_text("\n".join(lines[:12]) + "\n" + lines[12][:20])  # a run killed mid-write
    report = tmp_path / "report"
    done = cli("report", empty, torn, "--out", report)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in report.glob("*.png")) == ["training_torn.png"]  # the lines before the torn one
    markdown = (report / "report.md").read_text()
    assert "### torn (SFT)" in markdown and "### empty" not in markdown
    alone = cli("report", empty, "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "Training curves" not in (tmp_path / "alone" / "report.md").read_text() and not list((tmp_path / "alone").glob("*.png"))
