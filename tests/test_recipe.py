"""Recipes: validation, planning, and `tinythinker run` end to end with a teacher server on 127.0.0.1,
killed in the middle and rerun without redoing finished steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tinythinker.errors import TinyThinkerError
from tinythinker.recipe import builtin_recipe, load_recipe, plan, validate_recipe

from openai_server import serve

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "tinythinker", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_shipped_recipes_are_valid_and_plan_every_phase():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        steps = [s.name for s in plan(recipe, "/tmp/never-written").steps]
        assert steps[:2] == ["teach", "build"], path
        assert steps[-1] == "report"
        variants = recipe["sft"]["variants"]
        assert [s for s in steps if s.startswith("sft-")] == [f"sft-{v}" for v in variants]
        assert ("reflect" in steps) == (recipe["reflect"]["iterations"] > 0)
    quickstart = builtin_recipe("quickstart")
    assert quickstart["raw"] == quickstart["teacher"]["responses"] == "world"
    steps = {s.name: s for s in plan(quickstart, "/tmp/never-written").steps}
    assert list(steps)[:2] == ["world", "build"] and "teach" not in steps
    assert steps["world"].argv[:2] == ["world", "csqa"]
    built = steps["build"].argv  # the world step's files, not a folder or Hub id named "world"
    assert built[built.index("--raw") + 1] == str(steps["world"].output / "raw")
    assert built[built.index("--responses") + 1] == str(steps["world"].output / "teacher.jsonl")


def test_recipe_errors_name_the_key():
    with pytest.raises(TinyThinkerError, match="unknown key.*epoch"):
        validate_recipe({"dataset": "csqa", "sft": {"epoch": 3}})
    with pytest.raises(TinyThinkerError, match="'dataset' is required"):
        validate_recipe({})
    with pytest.raises(TinyThinkerError, match="unknown data set 'squad'"):
        validate_recipe({"dataset": "squad"})
    with pytest.raises(TinyThinkerError, match="sft.variants"):
        validate_recipe({"dataset": "obqa", "sft": {"variants": ["full", "no_summary"]}})
    for name in ("../../../tmp/escaped", "a/b", "..", "/abs"):
        with pytest.raises(TinyThinkerError, match="must be one folder name"):
            validate_recipe({"dataset": "csqa", "name": name})
    with pytest.raises(TinyThinkerError, match="demo data is gone; write raw: world"):
        validate_recipe({"dataset": "obqa", "raw": "demo"})
    for given, message in ((({"sft": {"epochs": -3}}), "recipe: sft.epochs: must be >= 1, got -3"),
                           ({"processes": "two"}, "recipe: processes: must be an integer, got 'two'"),
                           ({"dataset": ["csqa"]}, "recipe: dataset: must be a text, got ['csqa']"),
                           ({"sft": {"lr": float("nan")}}, "recipe: sft.lr: must be a number, got nan"),
                           ({"sft": {"bf16": "yes"}}, "recipe: sft.bf16: must be true or false, got 'yes'"),
                           ({"reflect": {"beta": 0}}, "recipe: reflect.beta: must be > 0, got 0"),
                           ({"world": {"defects": 1.5}}, "recipe: world.defects: must be < 1, got 1.5"),
                           ({"sft": {"schedule": "random"}}, "recipe: sft.schedule: must be one of blocks, mixed, got 'random'"),
                           ({"seed": True}, "recipe: seed: must be an integer, got True")):
        with pytest.raises(TinyThinkerError) as caught:
            validate_recipe({"dataset": "csqa", **given})
        assert str(caught.value) == message


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_bad_recipe_value_stops_run_before_any_step(tmp_path, dry_run):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("dataset: csqa\nraw: world\nteacher: {responses: world}\nstudent: tiny-seq2seq\nsft: {epochs: -3}\n")
    done = subprocess.run([sys.executable, "-m", "tinythinker", "run", str(recipe), "--out", str(tmp_path / "run"),
                           *(["--dry-run"] if dry_run else [])], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"Error: {recipe}: sft.epochs: must be >= 1, got -3", done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing ran, nothing was made


def test_processes_launch_through_accelerate_and_responses_skip_teaching(tmp_path):
    recipe = validate_recipe({"dataset": "obqa", "processes": 2, "teacher": {"responses": ["a.jsonl", "b.jsonl"]}})
    steps = {s.name: s for s in plan(recipe, tmp_path).steps}
    assert "teach" not in steps
    assert steps["build"].argv.count("--responses") == 2
    assert steps["sft-full"].command()[1:4] == ["-m", "accelerate.commands.launch", "--num_processes"]
    assert steps["build"].command()[1:3] == ["-m", "tinythinker"]


def test_steps_use_the_current_option_names_and_no_progress_leaves_the_fingerprint(tmp_path):
    recipe = validate_recipe({"dataset": "csqa", "raw": "world", "teacher": {"responses": "world"}, "student": "tiny-seq2seq",
                              "eval": {"batch_size": 8}})
    steps = {s.name: s for s in plan(recipe, tmp_path).steps}
    old = {"--output-path", "--run-dir", "--tiny", "--plots", "--markdown", "--eval-batch-size", "--json"}
    assert not [(name, a) for name, s in steps.items() for a in s.argv if a in old]
    assert steps["eval-sft-full"].argv[steps["eval-sft-full"].argv.index("--gen-batch-size") + 1] == "8"
    assert steps["report"].argv[-2:] == ["--out", str(tmp_path / "report")]
    assert not [s.reporting for s in steps.values() if s.reporting]
    quiet = {s.name: s for s in plan(recipe, tmp_path, progress=False).steps}
    assert {name for name, s in quiet.items() if s.reporting == ["--no-progress"]} == {"build", "sft-full", "eval-sft-full", "reflect",
                                                                                         "eval-dpo"}  # the others show none
    assert {name: s.fingerprint() for name, s in quiet.items()} == {name: s.fingerprint() for name, s in steps.items()}
    assert quiet["sft-full"].command()[-1] == "--no-progress"


def test_bad_recipe_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: csqa\nsft: [1, 2\n")
    result = _cli("run", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"Error: {bad}: not valid YAML")
    assert "Traceback" not in result.stderr
    missing = _cli("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "recipe not found" in missing.stderr


def _third_of_train(raw: Path, tmp_path: Path) -> Path:
    """A copy of the world's raw files with every third training question: each step of the recipe still runs,
    on a third of the work."""
    copy = tmp_path / "raw"
    copy.mkdir()
    for source in raw.iterdir():
        lines = source.read_text().splitlines(keepends=True)
        (copy / source.name).write_text("".join(lines[::3] if source.name.startswith("train") else lines))
    return copy


def _small_recipe(base_url: str, run_dir: Path, raw: Path) -> dict:
    return {
        "name": "tiny-e2e",
        "dataset": "csqa",
        "run_dir": str(run_dir),
        "raw": str(raw),
        "teacher": {"model": "gpt-4o-2024-05-13", "base_url": base_url, "rounds": 1, "concurrency": 8,
                    "splits": "train,validation,test"},
        "student": "tiny-seq2seq",
        "sft": {"epochs": 1, "batch_size": 64, "interval": 2, "lr": 1.0e-3, "eval_limit": 3, "max_new_tokens": 24},
        "reflect": {"iterations": 1, "samples": 2, "batch_size": 32, "cycles": 1, "eval_limit": 3, "train_limit": 6,
                    "max_new_tokens": 24},
        "eval": {"limit": 3, "batch_size": 32, "max_new_tokens": 24},
    }


@pytest.mark.slow
def test_run_survives_sigkill_and_skips_finished_steps(tmp_path, world):
    run_dir = tmp_path / "run"
    env = {"OPENAI_API_KEY": "sk-test-recipe", "TINYTHINKER_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    with serve() as server:
        recipe_file = tmp_path / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(_small_recipe(server.base_url, run_dir, _third_of_train(world("csqa") / "raw", tmp_path))))
        state = run_dir / "run_state.json"

        # First run: kill the whole process group once the SFT step has started.
        first = subprocess.Popen([sys.executable, "-m", "tinythinker", "run", str(recipe_file)], cwd=tmp_path,
                                 env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None:
            if state.exists() and "student" in json.loads(state.read_text())["finished"] and (run_dir / "sft-full" / "run.json").exists():
                break  # inside the SFT step: it has written its settings
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read()
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        finished_before = json.loads(state.read_text())["finished"]
        assert {"teach", "build", "student"} <= set(finished_before)
        assert "report" not in finished_before
        posts = server.stats.posts
        assert posts > 0
        build_files = {p: p.stat().st_mtime_ns for p in (run_dir / "data").rglob("*.parquet")}

        second = _cli("run", str(recipe_file), cwd=tmp_path, env=env)
        assert second.returncode == 0, second.stderr[-3000:]
        for step in ("teach", "build", "student"):
            assert f"{step}: finished earlier, skipped" in second.stderr
        assert server.stats.posts == posts  # the teacher was not asked again
        assert {p: p.stat().st_mtime_ns for p in (run_dir / "data").rglob("*.parquet")} == build_files

    summary = json.loads((run_dir / "summary.json").read_text())
    names = [s["name"] for s in summary["steps"]]
    assert names == ["teach", "build", "student", "sft-full", "eval-sft-full", "reflect", "eval-dpo", "report"]
    for step in summary["steps"]:
        assert Path(step["output"]).exists(), step
    assert (run_dir / "dpo" / "best" / "config.json").exists()
    assert list((run_dir / "report").glob("*.png"))
    # the report found each student's training run and embeds its curves
    assert {"training_sft-full.png", "training_dpo.png"} <= {p.name for p in (run_dir / "report").glob("*.png")}
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "![sft-full training curves](training_sft-full.png)" in markdown and "![dpo training curves](training_dpo.png)" in markdown
    assert "sk-test-recipe" not in "".join(p.read_text(errors="ignore") for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size < 5_000_000)

    third = _cli("run", str(recipe_file), cwd=tmp_path, env=env)
    assert third.returncode == 0
    assert third.stderr.count("finished earlier, skipped") == len(names)


def test_teacher_limits_default_to_the_servers_headers_and_recipes_can_set_them():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        teach = plan(load_recipe(path), "/tmp/never-written").steps[0]
        assert "--rpm" not in teach.argv and "--tpm" not in teach.argv, path  # teach reads the server's x-ratelimit headers
    teach = plan(validate_recipe({"dataset": "csqa", "teacher": {"rpm": 500, "tpm": 30000}}), "/tmp/never-written").steps[0]
    assert teach.argv[teach.argv.index("--rpm") + 1] == "500" and teach.argv[teach.argv.index("--tpm") + 1] == "30000"


def test_recipes_pass_trackers_and_hub_revisions_to_their_steps():
    base = {"dataset": "csqa", "raw": "tau/commonsense_qa", "student": "google-t5/t5-small"}
    quiet = {s.name: s for s in plan(validate_recipe(base), "/tmp/never-written").steps}
    recipe = validate_recipe({**base, "report_to": "tensorboard", "raw_revision": "v1", "student_revision": "abc123"})
    steps = {s.name: s for s in plan(recipe, "/tmp/never-written").steps}
    for name in ("sft-full", "reflect"):
        assert steps[name].command()[-2:] == ["--report-to", "tensorboard"]
    assert all("--report-to" not in s.command() for n, s in steps.items() if n not in ("sft-full", "reflect"))
    # a tracker changes how a step reports, not what it makes: turning it on reruns nothing
    assert steps["reflect"].fingerprint() == quiet["reflect"].fingerprint()
    for name in ("teach", "build"):
        argv = steps[name].argv
        assert argv[argv.index("--raw") + 1 : argv.index("--raw") + 4] == ["tau/commonsense_qa", "--revision", "v1"]
    sft = steps["sft-full"].argv
    assert sft[sft.index("--student") + 1 : sft.index("--student") + 4] == ["google-t5/t5-small", "--student-revision", "abc123"]
    assert "--student-revision" not in steps["reflect"].argv  # reflection starts from the SFT checkpoint
    with pytest.raises(TinyThinkerError, match="report_to 'mlflow' must be one of none, tensorboard, wandb, trackio"):
        validate_recipe({**base, "report_to": "mlflow"})
    with pytest.raises(TinyThinkerError, match="student_revision pins a Hub student, but student is tiny-seq2seq"):
        validate_recipe({**base, "student": "tiny-seq2seq", "student_revision": "v1"})
    with pytest.raises(TinyThinkerError, match="raw_revision pins a Hub data set, but raw is world"):
        validate_recipe({**base, "raw": "world", "raw_revision": "v1"})


def test_the_generation_cap_of_validation_and_sampling_is_a_recipe_key():
    recipe = validate_recipe({"dataset": "csqa", "sft": {"max_new_tokens": 32}, "reflect": {"iterations": 1, "max_new_tokens": 48},
                              "eval": {"max_new_tokens": 40}})
    steps = {s.name: s for s in plan(recipe, "/tmp/never-written").steps}
    for name, cap in (("sft-full", "32"), ("reflect", "48")):
        argv = steps[name].argv
        assert argv[argv.index("--max-new-tokens") + 1] == cap, name
    for name in ("eval-sft-full", "eval-dpo"):
        argv = steps[name].argv
        assert argv[argv.index("--model_args") + 1] == "max_new_tokens=40", name
    default = {s.name: s for s in plan(validate_recipe({"dataset": "csqa"}), "/tmp/never-written").steps}
    assert "--max-new-tokens" not in default["sft-full"].argv  # the engine's caps unless a recipe sets one
    with pytest.raises(TinyThinkerError, match="sft.max_new_tokens"):
        validate_recipe({"dataset": "csqa", "sft": {"max_new_tokens": 0}})
