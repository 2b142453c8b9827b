"""`tinythinker study` on a small world: every row and size in claims.json, accuracies that are the lm-eval
samples files' own, a rerun that skips finished rows; and the interval maths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinythinker.errors import TinyThinkerError
from tinythinker.study import (REFLECT_ROW, SFT_ROWS, StudySettings, bootstrap_interval, drawn_ids, open_study, paired_bootstrap,
                               parse_size, run_study, t_interval)

SMALL = StudySettings(questions=80, seeds=1, max_new_tokens=24, sizes=("1/2", "1"), max_steps=16, eval_every=8, batch_size=16, eval_limit=2,
                      reflect_iterations=1, reflect_samples=2, reflect_cycles=1, reflect_batch_size=8, reflect_train_limit=6)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    finished = []
    result = run_study(out, SMALL, progress=False, on_unit=lambda unit, records: finished.append(unit))
    return out, result, finished


def _samples_accuracy(path) -> float:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return sum(row["acc"] for row in rows) / len(rows)


def test_claims_hold_every_row_and_size_with_accuracies_from_the_samples_files(small_study):
    out, result, _ = small_study
    saved = json.loads((out / "claims.json").read_text(encoding="utf-8"))
    assert saved["cells"] == result["cells"] and (out / "claims.md").exists() and (out / "claims.png").stat().st_size > 0
    scored = [r for r in saved["records"] if r.get("accuracy") is not None]
    sft = {(r["row"], r["size"]) for r in scored if r["row"] in SFT_ROWS}
    assert sft == {(row, size) for row in SFT_ROWS for size in ("1/2", "1")}
    reflected = {r["size"] for r in scored if r["row"] == REFLECT_ROW.format(k=1)}
    assert reflected | {s["size"] for s in saved["stopped"]} == {"1/2", "1"}
    half = {r["questions"] for r in scored if r["size"] == "1/2"}
    assert half == {round(saved["training_questions"] / 2)}
    for record in scored:
        assert math.isclose(record["accuracy"], _samples_accuracy(out / record["samples_file"]), abs_tol=1e-9)
        assert (out / record["results_file"]).exists() and record["wall_seconds"] > 0
        scoring = json.loads((out / record["results_file"]).read_text(encoding="utf-8"))["config"]
        assert scoring["tinythinker_max_new_tokens"] == {"recall": 24, "analyze": 24}  # the study's one cap, every row
        if record["row"] in SFT_ROWS:
            assert record["steps"] == SMALL.max_steps and record["stopped_early"] is False and record["target_tokens"] > 0 and 1 <= record["best_step"] <= SMALL.max_steps
            assert [step for step, _ in record["validation_curve"]] == [8, 16]
    assert {c["row"] for c in saved["cells"]} >= set(SFT_ROWS) and all(c["low"] <= c["mean"] <= c["high"] for c in saved["cells"])
    assert {d["row"] for d in saved["differences"]} >= set(SFT_ROWS) - {"full"}
    assert all("paired by question id" in d["method"] for d in saved["differences"])  # K=1: the paired bootstrap


def test_every_row_of_a_size_trains_on_the_same_drawn_questions(small_study):
    import pyarrow.parquet as pq

    out, _, _ = small_study
    subset = next((out / "data").glob("seed42-q*"))
    ids = {}
    for config in ("csqa-full", "csqa-summarize_only", "csqa-cot", "csqa-dsbs"):
        for path in (subset / "data" / config).glob("*.parquet"):
            if path.name.split("-")[0] not in ("validation", "test"):
                ids[(config, path.name.split("-")[0])] = set(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    assert len({frozenset(v) for v in ids.values()}) == 1


def test_a_rerun_skips_finished_rows(small_study):
    out, result, finished = small_study
    claims_before = (out / "claims.json").read_text(encoding="utf-8")
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/row.json")}
    again = run_study(out, SMALL, progress=False)
    assert again["cells"] == result["cells"] and (out / "claims.json").read_text(encoding="utf-8") == claims_before
    assert stamps and {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/row.json")} == stamps
    assert len(finished) == 2 * (len(SFT_ROWS) + 1)


def test_bad_input_is_one_line(tmp_path, small_study):
    out, _, _ = small_study
    with pytest.raises(TinyThinkerError, match="max_steps=16, not 17"):
        open_study(out, StudySettings(**{**SMALL.__dict__, "max_steps": 17}))
    with pytest.raises(TinyThinkerError, match="outside"):
        parse_size("3/2")
    with pytest.raises(TinyThinkerError, match="not a share"):
        parse_size("half")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(TinyThinkerError, match="not a study"):
        open_study(tmp_path / "other", SMALL)


def test_t_interval_of_known_values():
    mean, low, high = t_interval([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert math.isclose(mean, 0.6) and math.isclose(low, 0.6 - half) and math.isclose(high, 0.6 + half)
    with pytest.raises(ValueError):
        t_interval([0.5])


def test_paired_bootstrap_is_seeded_and_contains_the_mean_difference():
    rng = np.random.default_rng(0)
    first = {f"q{i}": bool(v) for i, v in enumerate(rng.random(200) < 0.7)}
    second = {f"q{i}": bool(v) for i, v in enumerate(rng.random(200) < 0.5)}
    second["only-here"] = True  # unpaired: left out
    mean, low, high = paired_bootstrap(first, second, seed=3)
    assert paired_bootstrap(first, second, seed=3) == (mean, low, high)
    few = [paired_bootstrap(first, second, seed=seed, samples=50) for seed in (3, 4)]
    assert few[0] != few[1]  # another seed, other resamples
    assert math.isclose(mean, np.mean([first[k] - second[k] for k in first])) and low < mean < high
    assert bootstrap_interval([1.0] * 10, seed=0) == (1.0, 1.0, 1.0)


def test_drawn_questions_are_seeded_and_nested():
    ids = [f"q{i:03d}" for i in range(100)]
    assert drawn_ids(ids, 1, 10) == drawn_ids(ids, 1, 10) != drawn_ids(ids, 2, 10)
    assert set(drawn_ids(ids, 1, 10)) < set(drawn_ids(ids, 1, 25))


def test_the_command_refuses_bad_sizes_in_one_line_before_writing(tmp_path):
    from click.testing import CliRunner

    from tinythinker.cli import main

    result = CliRunner().invoke(main, ["study", "--sizes", "1/8,3/2", "--out", str(tmp_path / "s"), "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [
        "Error: --sizes: 3/2 is outside (0, 1]; give shares of the training questions such as 1/8,1/4,1"]
    assert not (tmp_path / "s").exists()
