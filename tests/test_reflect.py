"""`tinythinker reflect` end to end on a tiny student and a toy data set: two iterations, the
preference set, resume after SIGKILL with the same result, and one-line user errors."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch

from helpers_data import all_texts, stage_records, write_stage_data
from tinythinker.artifacts import read_card_metadata
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import summarize_target
from tinythinker.train.reflect import ReflectSettings, reflect
from tinythinker.students import Student, make_tiny_student

pytestmark = pytest.mark.slow

TIME_FIELDS = {"seconds", "pairs_per_second"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy -full config and a tiny T5 taught the toy records for 40 steps, with every summary
    replaced by "So the answer is option B.": its texts are short, its answers parse and are right
    on q1 and q4 (gold B), wrong on q2 and q3, so the run meets both sides of the pair rules
    (skipped questions, teacher fill-ups, recall and analyze pairs)."""
    torch.set_num_threads(1)  # one thread: on a busy shared CPU, two threads per process are far slower
    root = tmp_path_factory.mktemp("reflect")
    data = write_stage_data(root / "toy", variants=("full",))
    student = Student.load(make_tiny_student("seq2seq", all_texts(), root / "tiny", seed=0), device="cpu")
    summaries = [(x, summarize_target("B")) for x, _ in stage_records() if x.endswith("Summarize:")]
    others = [(x, y) for x, y in stage_records() if not x.endswith("Summarize:")]
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=1e-2)
    rng = random.Random(0)
    torch.manual_seed(0)
    student.model.train()
    for _ in range(40):
        batch = rng.sample(summaries, 4) + rng.sample(others, 4)
        loss = student.model(**student.encode([x for x, _ in batch], [y for _, y in batch])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.save(root / "sft-best")
    return {"root": root, "data": data, "student": root / "sft-best"}


def reflect_argv(toy, out) -> list[str]:
    return ["reflect", "--student", str(toy["student"]), "--data", str(toy["data"]), "--config", "toy-full", "--out", str(out),
            "--iterations", "2", "--samples", "3", "--temperature", "1.5", "--lr", "1e-4", "--batch-size", "4", "--cycles", "2",
            "--eval-limit", "2", "--max-new-tokens", "24", "--seed", "7", "--no-progress", "--report-to", "tensorboard"]


def run_cli(args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "tinythinker", *args], capture_output=True, text=True, env=env, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def finished(toy):
    """One uninterrupted two-iteration run (the reference for the resume test)."""
    out = toy["root"] / "run"
    began = time.perf_counter()
    result = run_cli(reflect_argv(toy, out))
    seconds = time.perf_counter() - began
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"two iterations end to end: {seconds:.1f} s")
    return out, result


def tensorboard_figures(out: Path) -> dict[str, list[tuple[int, float]]]:
    """The run's TensorBoard scalars (test_tracking.py reads them), timings left out."""
    from helpers_sft import tensorboard_scalars

    return {tag: points for tag, points in tensorboard_scalars(out / "tracking" / "tinythinker").items()
            if tag != "train/pairs_per_second"}


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIME_FIELDS}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def outcome(out: Path) -> dict:
    """Everything a run produced, minus wall-clock times (and with its own folder named OUT)."""
    read = lambda name: (out / name).read_text().replace(str(out), "OUT")  # noqa: E731
    metrics = [without_times(json.loads(line)) for line in read("metrics.jsonl").splitlines()]
    state = json.loads(read("state.json"))
    parquet = {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "preferences" / "data").rglob("*.parquet"))}
    samples = {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("iter*/samples/*.jsonl"))}
    return {"metrics": metrics, "summaries": [without_times(e.get("summary")) for e in state["iterations"].values()],
            "weights": (out / "best" / "model.safetensors").read_bytes(), "parquet": parquet, "samples": samples}


def test_two_iterations_end_to_end(finished, toy):
    out, result = finished
    state = json.loads((out / "state.json").read_text())
    assert [state["iterations"][k]["done"] for k in ("1", "2")] == [True, True] and state["stopped"] is None
    assert state["iterations"]["1"]["start"] == str(toy["student"])
    assert state["iterations"]["2"]["start"] == str(out / "iter1" / "best")  # each iteration starts from the previous best
    assert list(state["iterations"]["1"]["steps"]) == ["sample", "pairs", "reference", "dpo", "next"]
    from tinythinker.runs import run_method

    assert run_method(out) == "dpo"

    # the preference set: one loadable config per iteration, columns for DPO tools, a card with the counts
    for k in (1, 2):
        pairs = datasets.load_dataset(str(out / "preferences"), f"toy-dpo-iter{k}")
        summary = state["iterations"][str(k)]["summary"]
        assert {split: pairs[split].num_rows for split in pairs} == {s: n for s, n in summary["pairs"].items() if n}
        assert sum(summary["pairs"].values()) > 0
        for split in pairs:
            assert pairs[split].column_names == ["id", "stage", "prompt", "chosen", "rejected"]
            assert set(pairs[split]["stage"]) == {split}
    meta = read_card_metadata(out / "preferences")
    recorded = meta["tinythinker"]["iterations"]["toy-dpo-iter1"]
    assert recorded["student"] == str(toy["student"]) and recorded["seed"] == 7 and recorded["sampling"]["temperature"] == 1.5
    assert recorded["counts"]["recall"]["samples"] == 4 * 3  # 4 training questions x 3 samples

    # metrics: the starting accuracy, 2 validations per iteration, a summary per iteration
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(m["iteration"], m.get("cycle")) for m in metrics if m["kind"] == "eval"]
    assert evals == [(0, None), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert [m["iteration"] for m in metrics if m["kind"] == "iteration"] == [1, 2]
    assert all(m["questions"] == 2 for m in metrics if m["kind"] == "eval")
    assert any(m["kind"] == "train" and m["stage"] == "recall" for m in metrics)

    # --report-to tensorboard: the same figures, the iterations one after another on one step axis
    # (the starting student's accuracy at step 0)
    offsets = {1: 0, 2: state["iterations"]["1"]["summary"]["steps"]}
    train = [m for m in metrics if m["kind"] == "train"]
    scalars = tensorboard_figures(out)
    for tag, key in (("train/loss", "loss"), ("train/reward_margin", "reward_margin"), ("train/reward_accuracy", "reward_accuracy"),
                     ("train/dpo_loss", "dpo_loss")):
        assert scalars[tag] == [(offsets[m["iteration"]] + m["step"], pytest.approx(m[key], rel=1e-6, abs=1e-9)) for m in train]
    assert scalars["validation/accuracy"] == [(offsets.get(m["iteration"], 0) + m.get("step", 0), m["accuracy"])
                                              for m in metrics if m["kind"] == "eval"]

    # the best checkpoints load, carry a card, and OUT/best is the best of every iteration, the
    # starting student (iteration 0) included; a tie keeps the earlier one
    best = Student.load(out / "best", device="cpu")
    assert best.is_seq2seq
    accuracies = [state["baseline"]["accuracy"]] + [state["iterations"][k]["summary"]["best_accuracy"] for k in ("1", "2")]
    chosen = state["chosen"]
    assert chosen["iteration"] == accuracies.index(max(accuracies)) and chosen["accuracy"] == max(accuracies)
    source = out / f"iter{chosen['iteration']}" / "best" if chosen["iteration"] else Path(toy["student"])
    if chosen["iteration"]:
        assert (out / "best" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    else:
        import torch

        start = Student.load(source, device="cpu")
        assert all(torch.equal(a, b) for a, b in zip(start.model.state_dict().values(), best.model.state_dict().values()))
    card = (out / "iter1" / "best" / "README.md").read_text()
    assert "iteration 1" in card and "Validation curve" in card
    assert not (out / "iter1" / "last").exists()  # finished iterations keep no resume point
    assert "best student" in result.stderr

    # the same command again: nothing to do, nothing recomputed
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in ("state.json", "metrics.jsonl", "run.json")}
    again = run_cli(reflect_argv(toy, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_sigkill_in_the_middle_then_rerun_gives_the_same_result(finished, toy, tmp_path):
    reference_out, _ = finished
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "tinythinker", *reflect_argv(toy, out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # kill it inside iteration 1's DPO, after its first cycle's checkpoint
    deadline = time.monotonic() + 300
    while not (out / "iter1" / "last").exists() and process.poll() is None and time.monotonic() < deadline:  # renamed into place whole
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:]
    state = json.loads((out / "state.json").read_text())
    assert "dpo" not in state["iterations"]["1"]["steps"]  # really killed in the middle
    cached = {p: p.stat().st_mtime_ns for p in (out / "iter1" / "reference").glob("ref-logps-*.pt")}
    assert cached

    rerun = run_cli(reflect_argv(toy, out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # the reference log-probs of iteration 1 were read back, not recomputed
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    assert outcome(out) == outcome(reference_out)
    assert tensorboard_figures(out) == tensorboard_figures(reference_out)  # each step once, as in the run never killed
    assert not list(out.rglob(".*partial*"))


@pytest.mark.parametrize("change, message", [
    ({"stages": ("recall", "summarize")}, "--stages recall,summarize"),
    ({"stages": ()}, "--stages (none)"),
    ({"samples": 0}, "--samples must be at least 1"),
    ({"beta": 0.0}, "--beta must be positive"),
    ({"nll_weight": -1.0}, "--nll-weight and --top-k must be 0 or more"),
    ({"eval_limit": -1}, "--eval-limit must be 0 or more"),
])
def test_bad_settings_are_refused_before_anything_runs(change, message, tmp_path):
    settings = ReflectSettings(student="s", data="d", config="toy-full", **change)
    with pytest.raises(TinyThinkerError, match=re.escape(message)):
        reflect(settings, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_one_clear_error_and_leave_no_run_behind(toy, tmp_path):
    def refused(out, **change):
        settings = ReflectSettings(**{"student": str(toy["student"]), "data": str(toy["data"]), "config": "toy-full", **change})
        with pytest.raises(TinyThinkerError) as error:
            reflect(settings, out, progress=False)
        assert "\n" not in str(error.value)
        return str(error.value)

    out = tmp_path / "out"
    assert "toy-nope" in refused(out, config="toy-nope")
    assert f"{tmp_path / 'missing'}: no such student folder" in refused(out, student=str(tmp_path / "missing"))
    assert not out.exists()  # a mistake in the inputs does not start a run that would then refuse the fix
    no_validation = write_stage_data(tmp_path / "bare", variants=("no_recall",))
    assert "has no recall_single, recall split" in refused(out, data=str(no_validation), config="toy-no_recall")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert "not a self-reflection run; choose another --out or pass --overwrite" in refused(tmp_path / "taken")


def test_a_rerun_with_other_settings_is_one_line_and_exit_2(finished, toy):
    out, _ = finished
    result = run_cli(reflect_argv(toy, out) + ["--beta", "0.1"])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"Error: {out} was run with beta=0.5, not 0.1; rerun with the same options to continue it, "
                     "or pass --overwrite or another --out"]


def test_recall_pairs_only_without_validation_in_process(toy, tmp_path):
    settings = ReflectSettings(student=str(toy["student"]), data=str(toy["data"]), config="toy-full", iterations=1,
                               stages=("recall",), samples=2, temperature=1.5, lr=1e-4, batch_size=4, cycles=1,
                               eval_limit=0, seed=3)
    result = reflect(settings, tmp_path / "run", progress=False)
    assert result.baseline is None and result.stopped is None
    [summary] = result.iterations
    assert list(summary["pairs"]) == ["recall"] and summary["best_accuracy"] is None
    assert set(datasets.load_dataset(str(tmp_path / "run" / "preferences"), "toy-dpo-iter1")) == {"recall"}
    assert not list((tmp_path / "run" / "iter1" / "samples").glob("analyze-*"))  # no analysis was sampled
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {m["kind"] for m in metrics} == {"train", "iteration"}
    assert Student.load(result.best, device="cpu").is_seq2seq


def test_two_processes_give_the_pairs_and_training_of_one(finished, toy, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): sampling chunks, validation and DPO batches are
    shared out, the pairs are the same bytes, and the batch-level loss normalisation gives the same
    training (up to float rounding).

    One iteration, compared with the first of the single-process run: what must hold. A second
    iteration samples from a student trained under other float rounding (1e-7), and a uniform draw that
    falls that close to a token's boundary in the CDF takes the next token, so its pairs may differ by
    a text (seen: one more recall pair file in one run of three)."""
    import socket

    from safetensors.torch import load_file

    single, _ = finished
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "two"
    argv = reflect_argv(toy, out)
    argv[argv.index("--iterations") + 1] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               "-m", "tinythinker", *argv, "--micro-batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr and done.stderr.count("best student:") == 1  # the main process reports
    one, two = outcome(single), outcome(out)
    first = lambda files: {name: data for name, data in files.items() if "iter1" in name}  # noqa: E731
    assert first(one["parquet"]) and first(two["parquet"]) == first(one["parquet"])
    assert first(one["samples"]) and first(two["samples"]) == first(one["samples"])
    losses = [[m["loss"] for m in run["metrics"] if m["kind"] == "train" and m["iteration"] == 1] for run in (one, two)]
    assert losses[0] and losses[1] == pytest.approx(losses[0], rel=1e-5)
    a, b = (load_file(run / "iter1" / "best" / "model.safetensors") for run in (single, out))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
