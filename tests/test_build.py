"""`build`: the data set folder (Hub layout, card, builders), reproducibility, offline loading,
refusing existing output and leaving nothing behind when interrupted. The inputs are small
generated worlds (conftest: ``world``, ``world_build``)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from dataset_builders import BUILDERS
from hermetic import cache_env
from tinythinker.data.build import build_dataset
from tinythinker.artifacts import read_card_metadata, split_path, staged_folder
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import VARIANTS
from tinythinker.data.records import FEATURES, all_configs
from tinythinker.data.sources import get_spec
from tinythinker.data.world import DEFECTS, WORLD_TEACHER

REPO = Path(__file__).resolve().parents[1]


DATASETS = ("csqa", "obqa", "strategyqa")
DEFECT_REASONS = {"truncated": "truncated", "missing_option": "incomplete_options", "wrong_answer": "disagrees_with_label",
                  "bad_prefix": "bad_explanation_prefix", "no_key_information": "no_key_information"}  # the world's -> the build's


def _inputs(world, dataset):
    folder = world(dataset)
    return folder / "raw", [folder / "teacher.jsonl"]


def test_world_builds_load_with_datasets(world_build):
    for name in DATASETS:
        result = world_build(name)
        assert sorted(p.name for p in result.out.iterdir()) == [".tinythinker", "README.md", "data"]
        for config, splits in all_configs(name).items():
            loaded = datasets.load_dataset(str(result.out), config)
            assert list(loaded) == list(splits)
            for split in splits:
                assert loaded[split].features == FEATURES
                assert loaded[split].num_rows == result.counts[config][split] > 0
        validation = datasets.load_dataset(str(result.out), f"{name}-full", split="validation")
        # every validation question the teacher explained carries its rationale (the failed request and
        # all-defective questions have none)
        with_rationale = [bool(row["teacher_recall"] and row["teacher_analyses"]) for row in validation]
        assert sum(with_rationale) == result.selection.counts["validation"].with_rationales > 0.8 * len(validation)


def test_every_defect_kind_has_a_rejection_reason():
    assert set(DEFECT_REASONS) == set(DEFECTS)


def _merged_duplicates(world, dataset):
    """The exact duplicates the world writes (as the real releases have): none in csqa; in obqa the
    first train question again as the last train row; in strategyqa the first record again as the second."""
    raw = world(dataset) / "raw"
    if dataset == "obqa":
        rows = [json.loads(line) for line in (raw / "train.jsonl").read_text().splitlines()]
        assert rows[0]["question"] == rows[-1]["question"] and rows[0]["answerKey"] == rows[-1]["answerKey"]
        return [[rows[0]["id"], rows[-1]["id"]]]
    if dataset == "strategyqa":
        records = json.loads((raw / "strategyqa_train.json").read_text())
        assert records[0]["question"] == records[1]["question"] and records[0]["answer"] == records[1]["answer"]
        return [[records[0]["qid"], records[1]["qid"]]]
    return []


@pytest.mark.parametrize("dataset", DATASETS)
def test_card_records_provenance_and_counts(world, world_build, dataset):
    result = world_build(dataset)
    meta = read_card_metadata(result.out)
    assert [c["config_name"] for c in meta["configs"]] == [f"{dataset}-{v}" for v in VARIANTS]
    info = meta["tinythinker"]
    assert info["seed"] == 42 and info["source_revision"].startswith("sha256:")
    assert info["teacher"]["model"] == WORLD_TEACHER
    assert info["teacher"]["sampling"] == {"temperature": 0.8, "max_tokens": 256, "n": get_spec(dataset).samples}
    assert info["teacher"]["prompt_hash"].startswith("sha256:")
    assert info["merged_duplicates"] == _merged_duplicates(world, dataset)
    assert info["counts"] == result.counts
    train = info["selection"]["train"]
    # every kind of defect the world's teacher writes (DEFECTS) is rejected for its own reason, and counted
    assert set(train["rejected"]) == set(DEFECT_REASONS.values()) and all(count > 0 for count in train["rejected"].values())
    # the one failed request is counted in the split its question landed in (csqa: train or validation)
    splits = info["selection"].values()
    assert sum(s["failed_requests"] for s in splits) == 1
    assert all(s["without_rationales"] == ({"failed_request": 1} if s["failed_requests"] else {}) for s in splits)
    assert all(s["with_rationales"] == s["questions"] - s["failed_requests"] for s in splits)
    text = (result.out / "README.md").read_text()
    assert f"| `truncated` | {train['rejected']['truncated']} |" in text and f"`{dataset}-full`" in text and "load_dataset(" in text


def test_same_inputs_same_bytes(world, world_build, tmp_path):
    first = world_build("csqa").out
    again = build_dataset("csqa", *_inputs(world, "csqa"), tmp_path / "csqa").out
    files = sorted(p.relative_to(first) for p in first.rglob("*.parquet"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.parquet")) and len(files) == 18 + 3 + 4  # stage configs, cot, dsbs
    for rel in files:
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (first / "README.md").read_text() == (again / "README.md").read_text()


def test_reference_order_switch(world, tmp_path):
    result = build_dataset("csqa", *_inputs(world, "csqa"), tmp_path / "ref", reference_order=True)
    row = pq.read_table(split_path(result.out, "csqa-full", "summarize")).to_pylist()[0]
    gold = f"For option {row['GT']},"
    assert row["input"].split("Analyze: ", 1)[1].startswith(gold)  # the teacher wrote the gold option first
    assert read_card_metadata(result.out)["tinythinker"]["reference_order"] is True


def test_builder_is_a_datasets_builder(world_build, tmp_path):
    result = world_build("strategyqa")
    builder = BUILDERS["strategyqa"](questions=result.questions, selection=result.selection,
                                     config_name="strategyqa-no_recall", cache_dir=str(tmp_path / "cache"))
    assert isinstance(builder, datasets.ArrowBasedBuilder)
    assert [c.name for c in builder.BUILDER_CONFIGS] == [f"strategyqa-{v}" for v in VARIANTS]
    builder.download_and_prepare(output_dir=str(tmp_path / "prepared"), file_format="parquet")
    assert builder.info.features == FEATURES
    assert builder.info.splits["analyze"].num_examples == result.counts["strategyqa-no_recall"]["analyze"]


def test_next_round_requests_written(world, tmp_path):
    result = build_dataset("obqa", *_inputs(world, "obqa"), tmp_path / "o", next_round=tmp_path / "round2.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "round2.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [need.question_id for need in result.selection.needs_round]
    by_id = {need.question_id: need for need in result.selection.needs_round}
    for line in lines:
        assert line["body"]["n"] == by_id[line["custom_id"]].missing
        assert line["body"]["model"] == WORLD_TEACHER
    assert {line["body"]["max_tokens"] for line in lines} == {256, 512}  # doubled where cut off


def test_existing_output_is_refused(world, world_build):
    out = world_build("obqa").out
    before = sorted(p for p in out.rglob("*"))
    with pytest.raises(TinyThinkerError, match="output folder exists; pass --overwrite"):
        build_dataset("obqa", *_inputs(world, "obqa"), out)
    assert sorted(p for p in out.rglob("*")) == before


def test_no_training_rationale_is_an_error(world, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TinyThinkerError, match="no training question of obqa has a usable teacher rationale"):
        build_dataset("obqa", world("obqa") / "raw", [empty], tmp_path / "o")
    assert not (tmp_path / "o").exists()


class _InterruptAfter:
    """A progress sink that raises KeyboardInterrupt (Ctrl-C) after some steps of writing."""

    def __init__(self, steps):
        self.steps = steps

    def add_task(self, description, total=None):
        return description

    def advance(self, task, advance=1):
        if task == "writing configs":
            self.steps -= 1
            if self.steps == 0:
                raise KeyboardInterrupt


def test_interrupted_build_leaves_nothing(world, tmp_path):
    out = tmp_path / "csqa"
    with pytest.raises(KeyboardInterrupt):
        build_dataset("csqa", *_inputs(world, "csqa"), out, progress=_InterruptAfter(5))
    assert list(tmp_path.iterdir()) == []


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_build", REPO / "benchmarks" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sigint_as_at_a_terminal():
    """Ctrl-C's default action in the child: a shell starts background jobs (a CI runner's, a `cmd &`) with SIGINT
    ignored, and a child inherits that; at a terminal it is not ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_signalled_cli_build_leaves_no_output(tmp_path, signum):
    raw, responses = _load_benchmark().write_inputs(tmp_path, 2000, 100, 4)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "tinythinker", "build", "csqa", "--raw", str(raw),
                                "--responses", str(responses), "--out", str(out)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_at_a_terminal)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*")):
        assert process.poll() is None and time.monotonic() < deadline, "the build ended before it was interrupted"
        time.sleep(0.01)
    # Freeze the build, so that the signal lands while it is writing (the partial folder exists and the output
    # does not), however the machine schedules it; a SIGINT stays pending until SIGCONT.
    process.send_signal(signal.SIGSTOP)
    assert list(tmp_path.glob(".out.partial-*")) and not out.exists(), "the build ended before it was interrupted"
    process.send_signal(signum)
    process.send_signal(signal.SIGCONT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode != 0 and not out.exists()
    if signum == signal.SIGINT:
        assert process.returncode == 130 and stderr.strip().startswith("Interrupted; nothing half-written was kept"), stderr
        assert "Traceback" not in stderr
        assert list(tmp_path.glob(".out.partial-*")) == []
    else:  # a killed process cannot clean up: the next write to the same output does
        assert list(tmp_path.glob(".out.partial-*"))
        with staged_folder(out):
            pass
        assert list(tmp_path.glob(".out.partial-*")) == [] and out.is_dir()


def test_load_dataset_offline(world_build, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **cache_env(tmp_path)}  # an empty cache
    code = ("import datasets, sys; d = datasets.load_dataset(sys.argv[1], 'csqa-full'); "
            "print(d['summarize'].num_rows, d['test'][0]['target'])")
    done = subprocess.run([sys.executable, "-c", code, str(world_build("csqa").out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows, target = done.stdout.split(" ", 1)
    assert int(rows) == world_build("csqa").counts["csqa-full"]["summarize"] and target.startswith("So the answer is option")



CTRL_C_INSIDE_A_WRITE = r"""
import os, signal, sys, time
from pathlib import Path
from tinythinker.artifacts import interrupts_deferred, staged_folder, watch_interrupts

watch_interrupts()
out, case = Path(sys.argv[1]), sys.argv[2]
try:
    with staged_folder(out) as folder:
        (folder / "half.txt").write_text("half")
        if case == "deferred":
            with interrupts_deferred():  # the Ctrl-C waits for the block's end
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                (folder / "still.txt").write_text("written")
            print("not raised")
        else:
            try:  # a library that catches the KeyboardInterrupt and goes on
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            except KeyboardInterrupt:
                print("swallowed")
except KeyboardInterrupt:
    print("aborted", sorted(p.name for p in out.parent.iterdir()))
"""


@pytest.mark.parametrize("case, printed", [("deferred", ["aborted []"]), ("swallowed", ["swallowed", "aborted []"])])
def test_a_ctrl_c_that_a_library_defers_or_swallows_still_aborts_the_write(tmp_path, case, printed):
    done = subprocess.run([sys.executable, "-c", CTRL_C_INSIDE_A_WRITE, str(tmp_path / "out"), case], capture_output=True,
                          text=True, timeout=120, preexec_fn=sigint_as_at_a_terminal)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == printed


def test_a_megabyte_reply_is_counted_too_long_and_reaches_no_record(world, tmp_path):
    import json

    import pyarrow.parquet as pq

    raw, (responses,) = _inputs(world, "csqa")
    lines = [json.loads(line) for line in responses.read_text().splitlines()]
    index = next(i for i, line in enumerate(lines) if isinstance(line[1], dict))  # the reference's [request, reply] line
    choice = lines[index][1]["choices"][0]["message"]
    choice["content"] = choice["content"].replace("Key Information:", "Key Information: " + "padding " * 250_000, 1)
    huge = tmp_path / "teacher.jsonl"
    huge.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = build_dataset("csqa", raw, [huge], tmp_path / "out", seed=42).out
    counts = read_card_metadata(out)["tinythinker"]["selection"]
    assert sum(split["rejected"].get("too_long", 0) for split in counts.values()) == 1
    assert "| `too_long` | 1 |" in (out / "README.md").read_text()
    longest = max(len(text) for path in out.rglob("*.parquet") for column in ("input", "target")
                  for text in pq.read_table(path, columns=[column]).column(column).to_pylist())
    assert longest < 5_000
