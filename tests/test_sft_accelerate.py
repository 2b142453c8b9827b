"""`accelerate launch --multi_gpu --num_processes 2 -m tinythinker train sft ...` on a machine without GPUs:
data parallel SFT in two real CPU processes (gloo) gives the training of one process (the loss is the
token mean of the whole batch), and only the main process writes the log and the checkpoints.

(`accelerate launch --cpu` starts several CPU processes only through MPI; without MPI it runs one.
The trainer sees a multi-process launch on a machine without accelerators and uses the CPUs.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from helpers_sft import REPO, make_student, read_metrics, train, weights, write_stage_data
from tinythinker.train.loop import read_last, read_state

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    data = write_stage_data(tmp_path / "data")
    student = make_student(tmp_path / "student", d_model=64)
    # batch 5: recall and summarize (6 rows) end in a 1-row batch, so one process has no row of it
    settings = dict(interval=2, epochs=2, lr=3e-3, batch_size=5, seed=0)
    single = train(data, student, tmp_path / "one", log_every=1, **settings)

    out = tmp_path / "two"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "tinythinker", "train", "sft", "--data", str(data), "--config", "zoo-full", "--student", str(student),
               "--out", str(out), "--log-every", "1", "--micro-batch-size", "2", "--no-progress",
               *[str(a) for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", v)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr and done.stderr.count("finished: ") == 1  # the summary from the main process only

    one, two = read_metrics(tmp_path / "one"), read_metrics(out)
    assert [(m["kind"], m["step"]) for m in two] == [(m["kind"], m["step"]) for m in one]  # each line once
    losses = [[m["loss"] for m in rows if m["kind"] == "train"] for rows in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert [m["tokens"] for m in two if m["kind"] == "train"] == [m["tokens"] for m in one if m["kind"] == "train"]
    assert [m["questions"] for m in two if m["kind"] == "eval"] == [6, 6]  # validation split over both processes
    a, b = weights(tmp_path / "one" / "best"), weights(out / "best")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    ranks = read_state(out / "last")["ranks"]  # JSON + safetensors: what each process resumes from
    assert len(ranks) == 2 and not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])  # each process its own RNG
    assert read_last(out / "last")["step"] == single.total_steps
    assert (out / "best" / "README.md").read_text().count("| processes | 2 |") == 1
