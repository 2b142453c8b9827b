"""What the SFT tests share: a tiny stage data set (the "zoo"), tiny students, in-process and CLI training,
readers of a run folder, and one real interrupted run (a session fixture, registered in conftest.py).

The data set folder is written the way `tinythinker build` lays it out (configs {dataset}-{variant},
splits per variant, the shared columns), from a handful of questions whose rationales make the answer
learnable; every stage text comes from tinythinker.protocol.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch

from tinythinker import protocol
from tinythinker.artifacts import configs_metadata, write_card, write_split
from tinythinker.protocol import VARIANT_STAGES, VARIANTS
from tinythinker.train.loop import read_last

REPO = Path(__file__).resolve().parents[1]

# (stem, options, gold index, general knowledge, one analysis per option)
ANIMALS = [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"), ("owl", "hoot")]
FEATURES = datasets.Features({
    "id": datasets.Value("string"), "stage": datasets.Value("string"), "option": datasets.Value("string"),
    "question": datasets.Value("string"), "choices": datasets.List(datasets.Value("string")),
    "input": datasets.Value("string"), "target": datasets.Value("string"), "GT": datasets.Value("string"),
    "teacher_recall": datasets.Value("string"), "teacher_analyses": datasets.List(datasets.Value("string")),
})


def questions(n: int = 6):
    """Which animal says X? Three options; the gold one rotates through A, B, C."""
    out = []
    for i, (animal, sound) in enumerate(ANIMALS[:n]):
        others = [a for a, _ in ANIMALS if a != animal][i % 3 : i % 3 + 2]
        gold = i % 3
        options = others[:gold] + [animal] + others[gold:]
        analyses = ["it is right." if o == animal else "it is wrong." for o in options]
        out.append((f"q{i}", f"Which animal says {sound}?", options, "ABC"[gold], f"The {animal} says {sound}.", analyses))
    return out


def _row(qid, stage, option, question, options, text, target, gold, recall="", analyses=()):
    return {"id": qid, "stage": stage, "option": option, "question": question, "choices": list(options), "input": text,
            "target": target, "GT": gold, "teacher_recall": recall, "teacher_analyses": list(analyses)}


def write_stage_data(folder: Path, qs=None, dataset: str = "zoo") -> Path:
    """A stage data set folder with every variant's config; validation = test = the training questions."""
    qs = qs or questions()
    configs = {}
    for variant in [v for v in VARIANTS if v not in protocol.BASELINES]:  # the baselines' records: test_baselines.py
        stages = VARIANT_STAGES[variant]
        splits: dict[str, list[dict]] = {s: [] for s in ("recall", "recall_single", "analyze", "summarize", "validation")}
        for qid, stem, options, gold, gk, analyses in qs:
            q = protocol.render_question(stem, options)
            letters = protocol.letters_for(len(options))
            recall = gk if "recall" in stages else None
            if "recall" in stages:
                splits["recall"].append(_row(qid, "recall", "", q, options, protocol.recall_prompt(q), gk, gold))
                splits["recall_single"].append(_row(qid, "recall", "", q, options, protocol.recall_prompt(q), gk, gold))
            if "analyze" in stages:
                for x, text in zip(letters, analyses):
                    splits["analyze"].append(_row(qid, "analyze", x, q, options, protocol.analyze_prompt(q, x, recall), text, gold))
            pairs = list(zip(letters, analyses)) if "analyze" in stages else None
            splits["summarize"].append(_row(qid, "summarize", "", q, options, protocol.summarize_prompt(q, recall, pairs),
                                            protocol.summarize_target(gold), gold))
            for option, text in protocol.first_prompts(q, letters, variant):
                splits["validation"].append(_row(qid, stages[0], option, q, options, text, protocol.summarize_target(gold),
                                                 gold, gk, analyses))
        names = [s for s in splits if splits[s]]
        names = [s for s in names if s != "recall_single" or "recall" in stages]
        for split in names:
            write_split(folder, f"{dataset}-{variant}", split, splits[split], FEATURES)
        configs[f"{dataset}-{variant}"] = names
    write_card(folder, configs_metadata(folder, configs, default=f"{dataset}-full"), "# zoo\n\nA tiny stage data set for tests.")
    return folder


def stage_texts(qs=None) -> list[str]:
    qs = qs or questions()
    texts = []
    for _, stem, options, gold, gk, analyses in qs:
        q = protocol.render_question(stem, options)
        pairs = list(zip("ABC", analyses))
        texts += [protocol.summarize_prompt(q, gk, pairs), protocol.summarize_target(gold), gk, *analyses]
    return texts


def make_student(folder: Path, *, d_model: int = 128, kind: str = "seq2seq") -> Path:
    """A tiny T5 (or Llama-style causal model) with a tokenizer trained on the stage texts, saved like
    any checkpoint. Dropout is off so that a few epochs memorise the questions."""
    from tinythinker.students import make_tiny_student

    make_tiny_student(kind, stage_texts(), folder, seed=0, d_model=d_model, layers=2, heads=4, d_ff=2 * d_model,
                      vocab_size=400)
    config = json.loads((folder / "config.json").read_text())
    dropout = "dropout_rate" if kind == "seq2seq" else "attention_dropout"
    (folder / "config.json").write_text(json.dumps({**config, dropout: 0.0}))
    return folder


# --- training in-process ----------------------------------------------------------------------------

def train(data, student, out, **settings):
    from tinythinker.train.sft import SFTSettings, train_sft

    # validation caps of 24 tokens: an untrained student runs to the cap, and the tests need no longer texts
    options = dict(interval=2, epochs=30, lr=1e-3, batch_size=8, seed=0, max_new_tokens=24)
    run_options = {k: settings.pop(k) for k in ("micro_batch_size", "log_every", "overwrite") if k in settings}
    return train_sft(SFTSettings(data=str(data), config=settings.pop("config", "zoo-full"), student=str(student),
                                 **{**options, **settings}), out, progress=False, **run_options)


def read_metrics(out: Path, drop=("seconds", "tokens_per_second")) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def cli(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "tinythinker", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300, **kwargs)


# --- interruption and resume (real processes) ---------------------------------------------------------

def wait_for(predicate, process, what: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()}"
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"timed out waiting for {what}")


def logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def checkpoint_step(out: Path) -> int:
    """The step of ``out/last`` (0: none yet). A running trainer swaps last/ for the new one in two renames,
    so a poll that reads in between finds it gone: 0 too, and the caller polls again."""
    try:
        state = read_last(out / "last")
    except FileNotFoundError:
        return 0
    return state["step"] if state else 0


INTERRUPTED = dict(interval=2, epochs=6, lr=3e-3, batch_size=8, seed=0, max_new_tokens=24)  # 30 steps, a checkpoint every 5


def sft_args(data, student, out, *extra) -> list:
    """`tinythinker train sft` with INTERRUPTED's settings, logging every step."""
    return ["train", "sft", "--data", data, "--config", "zoo-full", "--student", student, "--out", out, "--log-every", 1,
            "--no-progress", *[a for k, v in INTERRUPTED.items() for a in (f"--{k.replace('_', '-')}", v)], *extra]


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (events an interrupted run wrote past the
    step its rerun resumed from are purged, as TensorBoard purges them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="session")
def interrupted_sft(tmp_path_factory) -> dict:
    """One `tinythinker train sft --report-to tensorboard` run (30 steps) stopped by Ctrl-C in its second
    cycle, rerun and killed outright (SIGKILL) a step or more past its next checkpoint, then rerun to the
    end; and the same training uninterrupted, in-process ("whole"). test_sft checks the resume, test_tracking
    the curves."""
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("interrupted-sft")
    data, student = write_stage_data(root / "data"), make_student(root / "student", d_model=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # in-process, one thread, like the CLI runs
    whole = train(data, student, root / "whole", log_every=1, **INTERRUPTED)
    torch.set_num_threads(threads)
    out = root / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tinythinker", *map(str, sft_args(data, student, out, "--report-to", "tensorboard"))]
    # 1. Ctrl-C in the middle of the second cycle: the step finishes, RUN/last is saved, exit 130
    run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_step(out) >= 7, run, "step 7")
    run.send_signal(signal.SIGINT)
    _, interrupted_stderr = run.communicate(timeout=300)
    interrupted_code, stopped = run.returncode, checkpoint_step(out)
    before = tensorboard_scalars(out / "tracking" / "tinythinker")  # written and closed on the way out
    # 2. the rerun continues; killed outright (SIGKILL) a step or more past its next checkpoint
    run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: stopped < checkpoint_step(out) < logged_step(out), run, "a step past the next checkpoint")
    run.kill()
    run.communicate(timeout=60)
    killed = checkpoint_step(out)
    # 3. the third run finishes
    done = cli(*command[3:])
    return {"data": data, "student": student, "whole": whole, "whole_out": root / "whole", "out": out,
            "interrupted": (interrupted_code, interrupted_stderr), "stopped": stopped, "killed": killed, "before": before,
            "done": done}
