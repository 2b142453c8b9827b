"""DPO loss for seq2seq and causal students: parity with TRL's DPOTrainer, the NLL term, the reference cache."""

from __future__ import annotations

import math

import pytest
import torch

from tinythinker.train.dpo import (
    chosen_token_count,
    data_fingerprint,
    dpo_loss,
    encode_pairs,
    model_fingerprint,
    pair_logprobs,
    reference_logprobs,
)
from tinythinker.students import IGNORE_INDEX, Student, make_tiny_student
from tinythinker.train.loop import read_last, read_rows

TEXTS = [
    "What do people use to cut paper?\n(A) scissors (B) spoon (C) cup\nRecall: Scissors have blades that cut paper.",
    "Analyze: For option A, scissors are made to cut. For option B, a spoon cannot cut paper.",
    "Summarize: So the answer is option A.",
]
PAIRS = [
    {"prompt": "What do people use to cut paper?\n(A) scissors (B) spoon (C) cup\nRecall:", "chosen": "Scissors cut paper.",
     "rejected": "Spoons are used to cut paper quickly."},
    {"prompt": "Where is ice?\n(A) fire (B) freezer\nRecall: Cold keeps ice.\nAnalyze: For option B,", "chosen": "a freezer is cold.",
     "rejected": "no."},
    {"prompt": "Which is a fruit?\n(A) apple (B) brick\nRecall:", "chosen": "An apple grows on trees.", "rejected": "Bricks."},
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Per kind: a reference checkpoint and a policy checkpoint (the reference with its weights nudged)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dpo")
    out = {}
    for kind in ("causal", "seq2seq"):
        reference = make_tiny_student(kind, TEXTS * 4, root / f"{kind}-ref", seed=0)
        policy = Student.load(reference, device="cpu")
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in policy.model.parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
        policy.save(root / f"{kind}-policy")
        out[kind] = (reference, root / f"{kind}-policy")
    return out


def our_loss(policy: Student, reference: Student, beta=0.5, nll_weight=0.5):
    batch = encode_pairs(policy, PAIRS, 200)
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logprobs(reference, batch)
    chosen, rejected = pair_logprobs(policy, batch)
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, nll_weight=nll_weight,
                             chosen_tokens=chosen_token_count(policy, batch))
    return batch, loss, metrics


def test_loss_and_gradients_match_trl_dpo_trainer_for_a_causal_student(checkpoints, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    reference_path, policy_path = checkpoints["causal"]
    reference = Student.load(reference_path, device="cpu")
    ours = Student.load(policy_path, device="cpu")
    batch, loss, _ = our_loss(ours, reference)
    loss.backward()

    # TRL 1.x: the reference's rpo_alpha is loss_type ["sigmoid", "sft"] with weights [1, rpo_alpha]
    theirs = Student.load(policy_path, device="cpu")
    trl_reference = Student.load(reference_path, device="cpu")
    config = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.5, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                       max_length=None, per_device_train_batch_size=len(PAIRS), use_cpu=True, bf16=False, report_to=[],
                       precompute_ref_log_probs=False)
    # a causal student reads the target after one space (Student.encode); TRL appends eos itself
    data = Dataset.from_list([{"prompt": p["prompt"], "chosen": " " + p["chosen"], "rejected": " " + p["rejected"]} for p in PAIRS])
    trainer = DPOTrainer(model=theirs.model, ref_model=trl_reference.model, args=config, train_dataset=data,
                         processing_class=theirs.tokenizer)
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    # the same batch: TRL's own tokenisation gives exactly our sequences and completion positions
    assert torch.equal(trl_batch["input_ids"], batch["input_ids"])
    assert torch.equal(trl_batch["completion_mask"], (batch["labels"] != -100).long())

    trl_loss = trainer.compute_loss(trainer.model, trl_batch)
    trl_loss.backward()
    assert abs(float(trl_loss.detach()) - float(loss.detach())) < 1e-5
    their_grads = dict(trainer.model.named_parameters())
    checked = 0
    for name, parameter in ours.model.named_parameters():
        torch.testing.assert_close(parameter.grad, their_grads[name].grad, atol=1e-5, rtol=0)
        checked += 1
    assert checked == len(their_grads) > 0
    assert any(float(p.grad.abs().max()) > 1e-3 for p in ours.model.parameters())  # the comparison is not vacuous


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_nll_term_is_the_models_own_mean_token_loss_and_dpo_starts_at_log2(checkpoints, kind):
    reference_path, policy_path = checkpoints[kind]
    reference = Student.load(reference_path, device="cpu")
    policy = Student.load(policy_path, device="cpu")
    # policy == reference: every log-ratio is 0, so the sigmoid loss is log 2 and rewards are 0. Both sides
    # run in the same batch and the same grad mode, hence the same kernels and bit-identical log-probs (with
    # gradients on, torch picks another CPU attention kernel than under no_grad: the ratios would be float
    # noise, 1e-6 or so, not 0)
    with torch.no_grad():
        _, _, metrics = our_loss(reference, reference, nll_weight=0.0)
    assert metrics["reward_margin"] == metrics["reward_chosen"] == metrics["reward_rejected"] == 0.0
    assert metrics["dpo_loss"] == pytest.approx(math.log(2), rel=1e-7)  # float32's log 2

    batch, loss, metrics = our_loss(policy, reference, beta=0.5, nll_weight=0.5)
    # transformers' mean token cross-entropy over the chosen responses, on the same batch in the same grad
    # mode as our log-probs (the rejected rows' labels masked, their decoder inputs kept): the two differ
    # only in float32 summation order (< 100 tokens: well under 1e-5 relative)
    half = len(PAIRS)
    inputs = dict(batch)
    if policy.is_seq2seq:
        inputs["decoder_input_ids"] = policy.model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    inputs["labels"] = batch["labels"].clone()
    inputs["labels"][half:] = IGNORE_INDEX
    model_nll = float(policy.model(**inputs).loss.detach())
    assert metrics["nll"] == pytest.approx(model_nll, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(metrics["dpo_loss"] + 0.5 * model_nll, rel=1e-5)
    assert metrics["dpo_loss"] != pytest.approx(math.log(2), abs=1e-4)  # the nudged policy differs from its reference


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_a_few_steps_on_the_dpo_loss_raise_the_reward_margin(checkpoints, kind):
    reference_path, _ = checkpoints[kind]
    reference = Student.load(reference_path, device="cpu")
    policy = Student.load(reference_path, device="cpu")
    policy.model.eval()  # no dropout, as in DPO training
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    for _ in range(5):
        _, loss, metrics = our_loss(policy, reference, nll_weight=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, _, metrics = our_loss(policy, reference, nll_weight=0.0)
    assert metrics["reward_margin"] > 0.5 and metrics["reward_accuracy"] == 1.0


def test_reference_logprobs_are_cached_by_model_and_data_fingerprint(checkpoints, tmp_path):
    reference_path, policy_path = checkpoints["seq2seq"]
    reference = Student.load(reference_path, device="cpu")
    calls = []
    hook = reference.model.register_forward_hook(lambda *args: calls.append(1))
    first = reference_logprobs(reference, PAIRS, cache_dir=tmp_path, batch_size=2)
    assert len(calls) == 2 and first.shape == (len(PAIRS), 2) and len(list(tmp_path.glob("ref-logps-*.pt"))) == 1

    # a rerun (another process, same checkpoint) reads the cache: no forward pass at all
    reloaded = Student.load(reference_path, device="cpu")
    reloaded.model.register_forward_hook(lambda *args: calls.append(1))
    calls.clear()
    again = reference_logprobs(reloaded, PAIRS, cache_dir=tmp_path, batch_size=2)
    assert calls == [] and torch.equal(again, first)
    assert model_fingerprint(reloaded) == model_fingerprint(reference)

    # what they are: the pairs' log-probabilities under the model
    with torch.no_grad():
        chosen, rejected = pair_logprobs(reference, encode_pairs(reference, PAIRS))
    torch.testing.assert_close(first, torch.stack([chosen, rejected], dim=1), atol=1e-5, rtol=1e-5)

    # other data or other weights: another key, computed again
    changed = [dict(PAIRS[0], chosen="Scissors cut paper well."), *PAIRS[1:]]
    assert data_fingerprint(changed, 200) != data_fingerprint(PAIRS, 200) != data_fingerprint(PAIRS, 100)
    calls.clear()
    reference_logprobs(reloaded, changed, cache_dir=tmp_path, batch_size=8)
    assert len(calls) == 1
    policy = Student.load(policy_path, device="cpu")
    assert model_fingerprint(policy) != model_fingerprint(reference)
    reference_logprobs(policy, PAIRS, cache_dir=tmp_path, batch_size=8)
    assert len(list(tmp_path.glob("ref-logps-*.pt"))) == 3
    hook.remove()


def test_dpo_step_count_and_validation_cadence_are_the_references():
    """REFERENCE code (dpo.py): R = r//B + 1, A = (a//r + 1) x R, max_steps = 10 x (R + A), eval every R + A."""
    from tinythinker.train.dpo import dpo_schedule, dpo_steps

    assert dpo_steps({"recall": 1000, "analyze": 3500}, 32) == {"recall": 32, "analyze": 128}
    plan = dpo_schedule({"recall": 1000, "analyze": 3500}, batch_size=32, cycles=10, seed=1)
    assert plan.total_steps == 1600 and plan.eval_every == 160 and plan.cycles == 10
    assert plan.steps_per_epoch == 32 + 110  # each block ends when its pairs run out
    assert dpo_steps({"recall": 64, "analyze": 64}, 32) == {"recall": 3, "analyze": 6}  # r % B == 0: one more step
    assert dpo_steps({"recall": 0, "analyze": 3500}, 32) == {"analyze": 110}  # one stage alone: a // B + 1
    assert dpo_steps({"recall": 1000, "analyze": 0}, 32) == {"recall": 32}


def test_dpo_schedule_alternates_passes_of_recall_and_analyze_pairs_and_validates_every_r_plus_a():
    from tinythinker.train.dpo import dpo_schedule

    # R = 10//4 + 1 = 3, A = (45//10 + 1) x 3 = 15; an epoch is 3 recall + 12 analyze batches
    plan = dpo_schedule({"recall": 10, "analyze": 45}, batch_size=4, cycles=3, seed=1)
    steps = list(plan.steps())
    assert len(steps) == plan.total_steps == 3 * (3 + 15)
    epoch = ["recall"] * 3 + ["analyze"] * 12
    assert [s.stage for s in steps] == (epoch * 4)[:54]
    assert [s.index + 1 for s in steps if s.cycle_end] == [18, 36, 54]  # mid-epoch, as the reference's eval_steps
    for e in range(3):  # every whole epoch shows every pair once
        for stage, size in (("recall", 10), ("analyze", 45)):
            assert sorted(int(r) for s in steps if s.epoch == e and s.stage == stage for r in s.rows) == list(range(size))
    orders = [[int(r) for s in steps if s.epoch == e and s.stage == "recall" for r in s.rows] for e in range(2)]
    assert orders[0] != orders[1]  # reshuffled every epoch
    assert [s.rows.tolist() for s in dpo_schedule({"recall": 10, "analyze": 45}, batch_size=4, cycles=3, seed=1).steps()] == \
        [s.rows.tolist() for s in steps]  # seeded
    # a stage without pairs is left out; the other trains alone: 9//4 + 1 = 3 steps per cycle
    only = dpo_schedule({"recall": 0, "analyze": 9}, batch_size=4, cycles=2, seed=1)
    assert [s.stage for s in only.steps()] == ["analyze"] * 6 and only.eval_every == 3
    with pytest.raises(ValueError):
        dpo_schedule({"recall": 0, "analyze": 0}, batch_size=4, cycles=2, seed=1)


@pytest.mark.parametrize("bf16", [False, True])
def test_the_log_ratio_is_zero_at_step_0_though_reference_and_training_batches_differ(checkpoints, bf16, tmp_path):
    """Reference log-probs come in batches of 64, training in shuffled batches of 32 (other padding): both
    are scored in fp32 (also under --bf16, whose autocast would make them differ), so the ratio starts at 0."""
    from tinythinker.train.dpo import DPORun, DPOSettings

    reference_path, _ = checkpoints["seq2seq"]
    reference = Student.load(reference_path, device="cpu", bf16=bf16)
    words = "cold ice keeps water in a freezer and scissors cut paper".split()
    pairs = [{"prompt": f"{PAIRS[i % 3]['prompt']} {i}", "chosen": " ".join(words[: 1 + i % 11]),
              "rejected": " ".join(words[i % 5 :])} for i in range(80)]
    ref = {"recall": reference_logprobs(reference, pairs, cache_dir=tmp_path / "cache", batch_size=64)}
    ratios = []

    class FirstStep(DPORun):
        def loss(self, batch, totals):
            if not ratios:
                with torch.no_grad(), self.student.full_precision():
                    chosen, rejected = pair_logprobs(self.student, batch[1], model=self.model)
                ratios.append(torch.cat([chosen - batch[0][:, 0], rejected - batch[0][:, 1]]))
            return super().loss(batch, totals)

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # accelerate keeps one precision per process: this test's own, then a fresh one
    try:
        run = FirstStep(reference_path, {"recall": pairs}, ref, DPOSettings(batch_size=32, cycles=1, bf16=bf16),
                        tmp_path / "run", progress=False)
        assert run.accelerator.mixed_precision == ("bf16" if bf16 else "no")
        run.setup()
        run._train_step(next(iter(run.schedule.steps())))
    finally:
        AcceleratorState._reset_state(True)
    assert len(ratios[0]) == 64 and ratios[0].abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_dpo_run_trains_either_kind_and_keeps_a_loadable_best(checkpoints, kind, tmp_path):
    from tinythinker.train.dpo import DPORun, DPOSettings

    reference_path, _ = checkpoints[kind]
    reference = Student.load(reference_path, device="cpu")
    pairs = {"recall": [PAIRS[0], PAIRS[2]], "analyze": [PAIRS[1]]}
    ref = {stage: reference_logprobs(reference, rows, cache_dir=tmp_path / "cache") for stage, rows in pairs.items()}
    settings = DPOSettings(lr=5e-3, batch_size=2, cycles=2, nll_weight=0.1, warmup_ratio=0.0)
    run = DPORun(reference_path, pairs, ref, settings, tmp_path / "run", progress=False, log_every=1)
    run.setup()
    result = run.train()
    # R = 2//2 + 1 = 2, A = (1//2 + 1) x 2 = 2: 2 cycles of 4 steps; an epoch is 1 recall + 1 analyze batch
    assert result.steps == result.total_steps == 2 * (2 + 2) and result.best_accuracy is None  # no validation items
    trained = [r for r in result.records if r["kind"] == "train"]
    assert [r["stage"] for r in trained] == ["recall", "analyze"] * 4
    assert trained[-1]["reward_margin"] > trained[0]["reward_margin"]
    assert read_last(tmp_path / "run" / "last")["step"] == result.total_steps
    best = Student.load(result.best, device="cpu")
    assert model_fingerprint(best) != model_fingerprint(reference)
    # a finished run called again returns its result without training
    again = DPORun(reference_path, pairs, ref, settings, tmp_path / "run", progress=False)
    again.setup()
    assert again.train().resumed_at == result.total_steps


# A DPO run under `accelerate launch` that gets Ctrl-C on the main process only, after step STOP_AT.
STOPPING_RUN = """
import os, signal, sys
import torch
from tinythinker.train.dpo import DPORun
from tinythinker.train.settings import DPOSettings

start, out, inputs, stop_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
given = torch.load(inputs, weights_only=False)


class Stopping(DPORun):
    def _train_step(self, step):
        super()._train_step(step)
        if step.index + 1 == stop_at and self.is_main:
            os.kill(os.getpid(), signal.SIGINT)


run = Stopping(start, given["pairs"], given["ref"], DPOSettings(**given["settings"]), out, progress=False)
run.setup()
try:
    run.train()
except KeyboardInterrupt:
    print("stopped")
"""


def test_a_mid_cycle_resume_under_two_processes_logs_what_an_uninterrupted_run_logs(checkpoints, tmp_path):
    """Each process's unlogged figures survive the stop: the first row after the resume is the uninterrupted one."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tinythinker.train.dpo import DPORun, DPOSettings

    reference_path, policy_path = checkpoints["seq2seq"]  # starting off the reference: rewards far from 0 (no ties) from step 1
    reference = Student.load(reference_path, device="cpu")
    # batches of 3 over 2 processes: process 0 trains 2 pairs of each, process 1 one, so figures carried
    # over from the wrong process show; per epoch 2 recall steps, then 4 analyze steps; one cycle of
    # R + A = 3 + 9 = 12 steps (two epochs)
    pairs = {stage: [{**PAIRS[i % 3], "chosen": f"{PAIRS[i % 3]['chosen']} {i}"} for i in range(n)]
             for stage, n in (("recall", 6), ("analyze", 12))}
    ref = {stage: reference_logprobs(reference, rows, cache_dir=tmp_path / "cache") for stage, rows in pairs.items()}
    settings = dict(lr=5e-3, batch_size=3, cycles=1, nll_weight=0.1)
    whole = DPORun(policy_path, pairs, ref, DPOSettings(**settings), tmp_path / "one", progress=False)
    whole.setup()
    whole.train()
    torch.save({"pairs": pairs, "ref": ref, "settings": settings}, tmp_path / "inputs.pt")
    (tmp_path / "run.py").write_text(STOPPING_RUN)

    def launch(stop_at: int) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), str(tmp_path / "run.py"),
                   str(policy_path), str(tmp_path / "two"), str(tmp_path / "inputs.pt"), str(stop_at)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    # step 4 is in the middle of the first analyze block (steps 3-6): steps 3 and 4 are not logged yet
    assert launch(4).count("stopped") == 2  # both processes stop after the same step
    assert read_last(tmp_path / "two" / "last")["step"] == 4
    assert "stopped" not in launch(0)
    one, two = ([{k: v for k, v in row.items() if k not in ("seconds", "pairs_per_second")} for row in rows]
                for rows in (whole.result().records, read_rows(tmp_path / "two" / "metrics.jsonl")))
    assert [(r["kind"], r["step"], r["pairs"], r["steps"]) for r in two] == [(r["kind"], r["step"], r["pairs"], r["steps"]) for r in one]
    for a, b in zip(one, two):
        # numbers up to float32 rounding (it differs between 1 and 2 processes), everything else exactly
        assert b.keys() == a.keys()
        numbers = [k for k, v in a.items() if isinstance(v, float)]
        assert {k: v for k, v in b.items() if k not in numbers} == {k: v for k, v in a.items() if k not in numbers}
        assert [b[k] for k in numbers] == pytest.approx([a[k] for k in numbers], rel=1e-4, abs=1e-6)
    a, b = load_file(tmp_path / "one" / "best" / "model.safetensors"), load_file(tmp_path / "two" / "best" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
