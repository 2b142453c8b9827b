"""One writer per output folder (tinythinker.artifacts.output_lock, taken by every CLI command on its
--out): a second process on the same --out gets one line naming the first and writes nothing; a lock
left by a killed process is taken over. Real processes, frozen with SIGSTOP while they hold the lock."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_sft import REPO, cli, make_student, write_stage_data
from tinythinker.artifacts import output_lock
from tinythinker.errors import TinyThinkerError

pytestmark = pytest.mark.usefixtures("one_thread")


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tinythinker", *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _frozen_holding_lock(process: subprocess.Popen, out: Path) -> None:
    """Wait until ``process`` holds the lock of ``out`` (its pid is in the lock file), then freeze it there."""
    lock = out.parent / f".{out.name}.lock"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None and time.monotonic() < deadline, f"it ended before it was frozen: {process.communicate()}"
        try:
            if json.loads(lock.read_text())["pid"] == process.pid:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)


def _refused(result, first: subprocess.Popen, out: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{out} is being written by another tinythinker process (pid {first.pid}:" in lines[0], lines[0]


def test_a_second_build_on_one_out_is_refused_and_a_killed_builds_lock_is_taken_over(tmp_path):
    from test_build import _load_benchmark

    raw, responses = _load_benchmark().write_inputs(tmp_path, 2000, 100, 4)
    out = tmp_path / "out"
    build = ["build", "csqa", "--raw", raw, "--responses", responses, "--out", out]
    first = _start(*build)
    try:
        _frozen_holding_lock(first, out)
        before = sorted(p.name for p in tmp_path.iterdir())
        _refused(cli(*build), first, out)
        _refused(cli(*build, "--overwrite"), first, out)
        assert sorted(p.name for p in tmp_path.iterdir()) == before and not out.exists()  # the second wrote nothing
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / ".out.lock").exists()  # a killed process leaves its lock file; the kernel dropped the lock
    again = cli(*build)
    assert again.returncode == 0, again.stderr
    assert out.is_dir() and not (tmp_path / ".out.lock").exists()


def test_a_second_train_sft_on_one_out_is_refused_and_the_first_finishes_untouched(tmp_path):
    data, student = write_stage_data(tmp_path / "data"), make_student(tmp_path / "student")
    out = tmp_path / "sft"
    train = ["train", "sft", "--data", data, "--config", "zoo-full", "--student", student, "--out", out, "--interval", 2,
             "--epochs", 3, "--batch-size", 8, "--no-progress"]
    first = _start(*train)
    try:
        _frozen_holding_lock(first, out)
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
        _refused(cli(*train, "--overwrite", "--seed", 7), first, out)  # the case that replaced best/ and mixed metrics
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=240) == 0, first.stderr.read()
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 42 and (out / "best").is_dir()
    assert not (tmp_path / ".sft.lock").exists()


def test_one_process_may_lock_its_own_output_again_and_a_lock_is_free_after_it(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        with output_lock(tmp_path / "." / "out"):  # the same output, nested (a recipe step inside a run)
            assert (tmp_path / ".out.lock").exists()
        assert (tmp_path / ".out.lock").exists()  # still held by the outer block
    assert not (tmp_path / ".out.lock").exists()
    with output_lock(out):
        pass


def test_a_lock_held_by_another_process_is_one_error_in_the_library_too(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tinythinker.artifacts import output_lock\n"
                               "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TinyThinkerError, match=rf"is being written by another tinythinker process \(pid {holder.pid}:"):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the dead holder's lock is free
        assert json.loads((tmp_path / ".out.lock").read_text())["pid"] != holder.pid


def test_a_lock_leaves_no_folder_it_made_for_itself(tmp_path):
    with output_lock(tmp_path / "a" / "b" / "out"):
        assert (tmp_path / "a" / "b" / ".out.lock").exists()
    assert list(tmp_path.iterdir()) == []
    with output_lock(tmp_path / "a" / "b" / "out"):
        (tmp_path / "a" / "b" / "out").mkdir()
    assert (tmp_path / "a" / "b" / "out").is_dir() and not (tmp_path / "a" / "b" / ".out.lock").exists()
