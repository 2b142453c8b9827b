"""--overwrite replaces only what this tool wrote, as real command lines (one subprocess, tests/cli_batch.py): a
user's folder survives `build`, `world` and `student init` with --overwrite; a folder the tool wrote is replaced;
a file given as --out is named as a file."""

from __future__ import annotations

import os

from cli_batch import run_many

from tinythinker.artifacts import OWNER_MARK


def test_overwrite_replaces_only_folders_the_tool_wrote(world, world_build, tmp_path):
    raw, responses = world("csqa") / "raw", world("csqa") / "teacher.jsonl"
    data = world_build("csqa").out
    mine = {name: tmp_path / name for name in ("build", "world", "student")}
    for folder in mine.values():
        (folder / "src").mkdir(parents=True)
        (folder / "src" / "main.py").write_text("print('mine')\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    ours = tmp_path / "ours"
    lines = {
        "build": ["build", "csqa", "--raw", raw, "--responses", responses, "--out", mine["build"], "--overwrite"],
        "world": ["world", "csqa", "--out", mine["world"], "--overwrite", "--questions", "80"],
        "student": ["student", "init", "--data", data, "--config", "csqa-full", "--out", mine["student"], "--overwrite"],
        "build-to-a-file": ["build", "csqa", "--raw", raw, "--responses", responses, "--out", a_file],
        "world-to-a-file": ["world", "csqa", "--out", a_file, "--overwrite"],
        "ours": ["world", "csqa", "--out", ours, "--questions", "80"],
        "ours-again": ["world", "csqa", "--out", ours, "--questions", "80", "--seed", "7", "--overwrite"],
    }
    results = dict(zip(lines, run_many(list(lines.values()), env=dict(os.environ), cwd=tmp_path)))
    for name, folder in mine.items():
        result = results[name]
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"Error: {folder}: --overwrite replaces only a folder that tinythinker wrote (it has no {OWNER_MARK} file); "
            "remove it yourself or choose another --out"], (name, result.stderr)
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["src", "src/main.py"], name
    assert results["build-to-a-file"].returncode == 2
    assert results["build-to-a-file"].stderr.strip() == f"Error: {a_file}: is a file, not an output folder; choose another --out"
    world_file = results["world-to-a-file"]  # click's own check of the option (a usage error)
    assert world_file.returncode == 2 and world_file.stderr.strip().endswith("is a file.") and "Traceback" not in world_file.stderr
    assert a_file.read_text() == "mine"
    assert results["ours"].returncode == 0 and results["ours-again"].returncode == 0, results["ours-again"].stderr
    assert (ours / OWNER_MARK).is_file() and '"seed": 7' in (ours / "world.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial left anywhere
