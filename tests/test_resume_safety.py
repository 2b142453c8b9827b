"""The resume point ``RUN/last`` is data: JSON and safetensors, never a pickle (issue 22).

A run folder is copied and shared, and unpickling a file runs whatever code it names: a crafted
``last/`` (as accelerate's save_state wrote it: custom_checkpoint_<n>.pkl, random_states_<n>.pkl,
optimizer.bin) must be refused unread, in one line, and what the loop writes must read back without pickle."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from helpers_sft import cli, make_student, train, write_stage_data
from tinythinker.artifacts import OWNER_MARK

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest)

SETTINGS = dict(interval=2, epochs=1, lr=1e-3, batch_size=8, seed=0, max_new_tokens=24)


class Probe:
    """Unpickled, it runs a shell command (as a crafted checkpoint would): here it touches ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-epoch run (data, student, run folder). Read only: a test that changes it copies it."""
    root = tmp_path_factory.mktemp("resume-safety")
    data, student = write_stage_data(root / "data"), make_student(root / "student", d_model=64)
    train(data, student, root / "run", log_every=1, **SETTINGS)
    return data, student, root / "run"


def _crafted_copy(run_folder, tmp_path, names=("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin")):
    """A copy of the run whose last/ holds pickles that touch a marker file when loaded; (copy, marker)."""
    out, marker = tmp_path / "crafted", tmp_path / "pwned"
    shutil.copytree(run_folder, out)
    for path in (out / "last").iterdir():
        if path.is_file():
            path.unlink()
    for name in names:
        (out / "last" / name).parent.mkdir(parents=True, exist_ok=True)
        (out / "last" / name).write_bytes(pickle.dumps(Probe(marker)))
    return out, marker


def test_the_probe_runs_code_when_unpickled(tmp_path):
    """The crafted file is live: loading it in a fresh interpreter writes the marker."""
    path, marker = tmp_path / "probe.pkl", tmp_path / "marker"
    path.write_bytes(pickle.dumps(Probe(marker)))
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(path)], check=True)
    assert marker.exists()


def test_a_pickled_resume_point_is_refused_in_one_line_and_never_loaded(run, tmp_path):
    data, student, folder = run
    out, marker = _crafted_copy(folder, tmp_path)
    done = cli("train", "sft", "--data", data, "--config", "zoo-full", "--student", student, "--out", out, "--log-every", 1,
               "--no-progress", *[a for k, v in SETTINGS.items() for a in (f"--{k.replace('_', '-')}", v)])
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "pickle format" in lines[0] and "not read for safety" in lines[0] and "--overwrite" in lines[0], lines[0]
    assert not marker.exists()


def test_a_pickle_anywhere_in_last_is_refused_and_overwrite_starts_over(run, tmp_path):
    from tinythinker.errors import TinyThinkerError

    data, student, folder = run
    out, marker = _crafted_copy(folder, tmp_path, names=("model/pytorch_model.bin",))
    with pytest.raises(TinyThinkerError, match=r"pickle format \(model/pytorch_model.bin\) that is not read for safety"):
        train(data, student, out, log_every=1, **SETTINGS)
    result = train(data, student, out, log_every=1, overwrite=True, **SETTINGS)
    assert result.steps == result.total_steps and result.resumed_at is None
    assert not marker.exists()


def test_the_resume_point_is_json_and_safetensors_and_loads_without_pickle(run, monkeypatch):
    from safetensors.torch import load_file

    from tinythinker.train.loop import STATE_FILE, TENSORS_FILE, read_state
    from tinythinker.train.sft import SFTSettings, SFTTrainer, checked

    data, student, folder = run
    last = folder / "last"
    assert {p.name for p in last.iterdir()} == {"model", STATE_FILE, TENSORS_FILE, OWNER_MARK}
    for path in last.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.is_file() and path.name != OWNER_MARK:  # the marker is plain text, read by nothing
            assert path.suffix == ".safetensors", path
            load_file(path)
    saved = read_state(last)
    assert len(saved["ranks"]) == 1 and torch.is_tensor(saved["ranks"][0]["rng"]["torch"])

    def refuse(*args, **kwargs):
        raise AssertionError("a resume read a pickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    settings = checked(SFTSettings(data=str(data), config="zoo-full", student=str(student), **SETTINGS))
    trainer = SFTTrainer(settings, folder, overwrite=False, progress=False)
    trainer.setup()  # restores model, optimizer, scheduler, schedule, counters, window and RNG from last/
    assert trainer.counters.step == trainer.counters.total_steps == saved["counters"]["step"]
    assert torch.equal(torch.get_rng_state(), saved["ranks"][0]["rng"]["torch"])
    state = trainer.optimizer.state_dict()
    assert state["param_groups"][0]["betas"] == (0.9, 0.999)
    assert all(torch.equal(state["state"][0][k], saved["optimizer"]["state"]["0"][k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert trainer.scheduler.get_last_lr() == saved["scheduler"]["_last_lr"]


@pytest.mark.parametrize("kind", ["sft", "reflect", "study"])
def test_a_setting_added_later_gets_its_default_and_a_changed_one_is_named(kind):
    """One resume rule for every run folder (first_change): a saved run.json without a field a later
    version added still matches; a field that differs is named."""
    from dataclasses import asdict, replace

    from tinythinker.study import StudySettings
    from tinythinker.train.settings import ReflectSettings, SFTSettings, first_change

    settings = {"sft": SFTSettings(data="d", config="zoo-full", student="s"), "reflect": ReflectSettings(student="s", data="d", config="zoo-full"),
                "study": StudySettings()}[kind]
    saved = json.loads(json.dumps(asdict(settings)))
    newest = list(saved)[-1]
    older = {k: v for k, v in saved.items() if k != newest}  # as a run written before that field existed
    assert first_change(saved, settings) is None and first_change(older, settings) is None
    field = "seed"
    assert first_change(saved, replace(settings, **{field: getattr(settings, field) + 1})) == field
    assert first_change({**saved, field: -1}, settings, ignore=(field,)) is None
