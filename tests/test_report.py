"""`tinythinker report` on real lm-eval output (the run of tests/test_lm_eval.py) and a reflection log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from lm_eval_run import REPO  # the session fixtures toy, direct and cli_run come from there too (conftest.py)

from tinythinker.evaluate import metrics as ev_metrics
from tinythinker.evaluate import report as rp
from tinythinker.errors import TinyThinkerError


def reflection_run(folder, student_accuracy=0.25, best=(0.5, 0.75)):
    """A self-reflection folder as `tinythinker reflect` leaves it: run.json and metrics.jsonl
    (baseline eval line, per-step records, one summary line per iteration)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"config": "csqa-full", "iterations": len(best)}))
    lines = [{"kind": "eval", "iteration": 0, "student": "sft/best", "accuracy": student_accuracy, "correct": 1, "questions": 4}]
    for k, accuracy in enumerate(best, 1):
        lines += [{"iteration": k, "kind": "train", "step": 1, "dpo_loss": 0.69},
                  {"iteration": k, "kind": "eval", "step": 2, "accuracy": accuracy, "best": True},
                  {"kind": "iteration", "iteration": k, "start": "x", "pairs": {"recall": 10 * k, "analyze": 30 * k},
                   "best_accuracy": accuracy, "best_step": 2, "steps": 2}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_report_reads_real_lm_eval_output(cli_run, direct):
    report = rp.build_report([cli_run])
    kinds = {r.kind: r for r in report.results}
    assert set(kinds) == {"full", "analyze_oracle", "summarize_oracle"}  # toy_csqa_sc3 is not one of ours
    full = kinds["full"]
    assert (full.dataset, full.method, full.iteration, full.questions) == ("csqa", "sft", 0, 4)
    assert full.metrics["acc"] == pytest.approx(sum(t.correct for t in direct["full"]) / 4)
    assert full.correct == {t.id: t.correct for t in direct["full"]}

    # attribution: the engine's own oracle runs give the same split of the errors
    [row] = report.attribution
    expected = ev_metrics.attribution_summary(ev_metrics.attribution(*({t.id: t.correct for t in direct[kind]}
                                                        for kind in ("full", "analyze_oracle", "summarize_oracle"))))
    assert {k: row[k] for k in expected} == expected
    assert row["correct"] + row["recall"] + row["analyze"] + row["summarize"] + row["unattributed"] == 4

    [stages, errors] = rp.tables(report)
    measures = {(r[0], r[1]): r[2] for r in stages["rows"]}
    assert measures[("pipeline", "accuracy")] == f"{100 * full.metrics['acc']:.1f}"
    assert measures[("summarize", "accuracy with teacher's recall + analyses")] == f"{100 * kinds['summarize_oracle'].metrics['acc']:.1f}"
    assert stages["columns"][2] == "cli (SFT)"
    assert errors["rows"][0][3] == f"{100 * row['correct_rate']:.1f}"


def test_report_cli_side_by_side_with_reflection(cli_run, tmp_path):
    other = shutil.copytree(cli_run, tmp_path / "other-student")
    reflect = reflection_run(tmp_path / "dpo")
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "tinythinker", "report", str(cli_run), str(reflect), "--compare", str(other),
                          "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "cli (SFT)" in run.stdout and "other-student (SFT)" in run.stdout  # students side by side
    assert "Self-reflection: dpo" in run.stdout

    import matplotlib.image

    for name in ("accuracy_per_iteration.png", "stage_attribution.png", "stage_checks.png"):
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 600 and image.std() > 0.05, name  # drawn, not blank
    markdown = (out / "report.md").read_text()
    assert "### csqa: stages" in markdown and "| stage | measure | cli (SFT) | other-student (SFT) |" in markdown
    assert "| 2 | 75.0 | recall 20, analyze 60 | – |" in markdown  # iteration 2 of the reflection log
    data = json.loads((out / "report.json").read_text())
    assert [p["accuracy"] for p in data["reflection"][0]["points"]] == [0.25, 0.5, 0.75]
    assert {r["run"] for r in data["attribution"]} == {"cli", "other-student"}


def test_reflection_curve_is_found_from_the_students_path(tmp_path):
    reflect = reflection_run(tmp_path / "dpo", best=(0.5,))
    (reflect / "best").mkdir()
    assert rp.reflection_folder(str(reflect / "best")) == reflect
    assert rp.reflection_folder(str(reflect / "iter1" / "best")) == reflect
    assert rp.reflection_folder(str(tmp_path / "elsewhere")) is None
    curve = rp.load_curve(reflect, "dpo")
    assert curve.dataset == "csqa" and [p["iteration"] for p in curve.points] == [0, 1]


def test_a_reflection_that_kept_its_start_still_shows_its_curve(cli_run, tmp_path):
    """When no iteration improves, OUT/best is a copy of the starting student, whose card says SFT (or
    nothing): the reflection is found by the run's own files, not by the card."""
    reflect = reflection_run(tmp_path / "dpo", best=(0.2,))
    (reflect / "best").mkdir()
    results = shutil.copytree(cli_run, tmp_path / "results")
    for path in results.rglob("results_*.json"):  # the same results, as if of the reflection's best student
        data = json.loads(path.read_text())
        data["config"]["model_args"] = {**data["config"]["model_args"], "pretrained": str(reflect / "best")} \
            if isinstance(data["config"]["model_args"], dict) else f"pretrained={reflect / 'best'}"
        path.write_text(json.dumps(data))
    report = rp.build_report([results])
    assert [[p["accuracy"] for p in c.points] for c in report.curves] == [[0.25, 0.2]]


def test_report_errors(cli_run, tmp_path):
    (tmp_path / "empty").mkdir()
    run = subprocess.run([sys.executable, "-m", "tinythinker", "report", str(tmp_path / "empty")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no lm-eval results" in run.stderr and "Traceback" not in run.stderr
    broken = shutil.copytree(cli_run, tmp_path / "broken")
    [path] = [p for p in broken.rglob("samples_tinythinker_csqa_2*.jsonl")]
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(TinyThinkerError, match=r"samples_tinythinker_csqa_.*\.jsonl:5: not valid JSON"):
        rp.build_report([broken])
    bad = tmp_path / "bad" / "results_2026.json"
    bad.parent.mkdir()
    bad.write_text("{")
    with pytest.raises(TinyThinkerError, match="cannot read lm-eval results"):
        rp.build_report([bad.parent])
