"""The block-interleaved stage schedule of REFERENCE 7 (tinythinker.train.sft.StageSchedule): pure, no model."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from tinythinker.protocol import TRAINED_STAGES, VARIANTS
from tinythinker.train.sft import StageSchedule, block_lengths

LETTER = {"recall": "R", "analyze": "A", "summarize": "S", "cot": "C", "label": "L", "rationale": "T"}


def schedule(sizes, *, n_options=3, interval=1, batch_size=2, epochs=1, seed=42):
    return StageSchedule(sizes, n_options=n_options, interval=interval, batch_size=batch_size, epochs=epochs, seed=seed)


def pattern(steps) -> str:
    """Stages as letters, cycles separated by '|'."""
    out, previous = [], None
    for step in steps:
        if previous is not None and step.cycle != previous:
            out.append("|")
        out.append(LETTER[step.stage])
        previous = step.cycle
    return "".join(out)


def test_full_variant_block_order_until_every_stage_is_used_up():
    # batches: recall 5, analyze 14, summarize 4; blocks: recall 1, analyze 1x3, summarize 1
    plan = schedule({"recall": 10, "analyze": 27, "summarize": 7})
    steps = list(plan.steps())
    # summarize runs out after cycle 4, so the last cycle has no summarize block; analyze's last block is short
    assert pattern(steps) == "RAAAS|RAAAS|RAAAS|RAAAS|RAA"
    assert len(plan) == plan.total_steps == len(steps) == 5 + 14 + 4
    assert plan.cycles_per_epoch == 5
    assert [s.index for s in steps] == list(range(len(steps)))
    assert [s.index for s in steps if s.cycle_end] == [4, 9, 14, 19, 22]
    assert [s.index for s in steps if s.block_end] == [0, 3, 4, 5, 8, 9, 10, 13, 14, 15, 18, 19, 20, 22]


def test_a_stage_that_runs_out_early_is_skipped_for_the_rest_of_the_epoch():
    # interval 2, two options: blocks recall 2, analyze 4, summarize 2; analyze has only 3 batches
    plan = schedule({"recall": 12, "analyze": 6, "summarize": 12}, n_options=2, interval=2)
    assert pattern(plan.steps()) == "RRAAASS|RRSS|RRSS"
    # recall runs out first
    plan = schedule({"recall": 2, "analyze": 20, "summarize": 8}, n_options=2, interval=2)
    assert pattern(plan.steps()) == "RAAAASS|AAAASS|AA"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_its_stages_in_pipeline_order(variant):
    stages = TRAINED_STAGES[variant]
    sizes = {stage: 40 for stage in stages}
    plan = schedule(sizes, n_options=4, interval=2, batch_size=4, epochs=2)
    lengths = block_lengths(stages, 2, 4)
    cycle = "".join(LETTER[s] * lengths[s] for s in stages)
    steps = list(plan.steps())
    assert {s.stage for s in steps} == set(stages)
    # each stage has 10 batches per epoch: whole cycles while every stage lasts, then the rest
    for epoch in range(2):
        text = pattern(s for s in steps if s.epoch == epoch)
        assert text.split("|")[0] == cycle
        assert text.replace("|", "").count(LETTER[stages[0]]) == 10
    if variant == "summarize_only":
        assert pattern(s for s in steps if s.epoch == 0) == "SS|SS|SS|SS|SS"
    if variant == "dsbs":  # the label and rationale tasks alternate in blocks of interval batches
        assert pattern(s for s in steps if s.epoch == 0) == "LLTT|LLTT|LLTT|LLTT|LLTT"


def test_every_record_once_per_epoch_reshuffled_per_epoch_and_seeded():
    sizes = {"recall": 9, "analyze": 25, "summarize": 9}
    plan = schedule(sizes, batch_size=4, epochs=3)
    steps = list(plan.steps())
    orders = {}
    for epoch, stage in itertools.product(range(3), sizes):
        rows = np.concatenate([s.rows for s in steps if s.epoch == epoch and s.stage == stage])
        assert sorted(rows.tolist()) == list(range(sizes[stage]))  # each record exactly once
        orders[epoch, stage] = rows.tolist()
    assert orders[0, "analyze"] != orders[1, "analyze"] != orders[2, "analyze"]
    assert [len(s.rows) for s in steps if s.epoch == 0 and s.stage == "recall"] == [4, 4, 1]  # last batch smaller
    # same seed: same schedule; another seed: another order, same blocks
    again = list(schedule(sizes, batch_size=4, epochs=3).steps())
    assert all(a.stage == b.stage and a.rows.tolist() == b.rows.tolist() for a, b in zip(steps, again))
    other = list(schedule(sizes, batch_size=4, epochs=3, seed=7).steps())
    assert pattern(other) == pattern(steps)
    assert [s.rows.tolist() for s in other] != [s.rows.tolist() for s in steps]
    # a stage's order does not depend on the variant it is trained in
    alone = list(schedule({"summarize": 9}, batch_size=4, epochs=1).steps())
    assert np.concatenate([s.rows for s in alone]).tolist() == orders[0, "summarize"]


def test_each_epoch_starts_a_fresh_cycle_and_cycles_count_on_across_epochs():
    plan = schedule({"recall": 6, "analyze": 10, "summarize": 2}, epochs=2)
    steps = list(plan.steps())
    per_epoch = pattern(s for s in steps if s.epoch == 0)
    assert per_epoch == "RAAAS|RAA|R"
    assert pattern(steps) == per_epoch + "|" + per_epoch
    assert plan.cycles_per_epoch == 3
    assert sorted({s.cycle for s in steps}) == list(range(6))
    assert steps[plan.steps_per_epoch].stage == "recall" and steps[plan.steps_per_epoch].cycle == 3


def test_resuming_at_any_step_continues_the_same_sequence():
    plan = schedule({"recall": 7, "analyze": 19, "summarize": 5}, epochs=3)
    everything = list(plan.steps())
    for start in range(len(everything) + 1):
        rest = list(plan.steps(start))
        assert [(s.index, s.epoch, s.cycle, s.stage, s.block_end, s.cycle_end) for s in rest] == \
            [(s.index, s.epoch, s.cycle, s.stage, s.block_end, s.cycle_end) for s in everything[start:]]
        assert all(a.rows.tolist() == b.rows.tolist() for a, b in zip(rest, everything[start:]))
    with pytest.raises(ValueError):
        list(plan.steps(len(everything) + 1))


def test_invariants_on_random_sizes():
    rng = random.Random(0)
    for _ in range(200):
        variant = rng.choice(VARIANTS)
        stages = TRAINED_STAGES[variant]
        sizes = {s: rng.randint(0, 60) for s in stages}
        if not any(sizes.values()):
            sizes[stages[-1]] = 1
        n_options, interval, batch = rng.randint(2, 5), rng.randint(1, 4), rng.randint(1, 8)
        plan = schedule(sizes, n_options=n_options, interval=interval, batch_size=batch, epochs=2, seed=rng.randint(0, 9))
        lengths = block_lengths(stages, interval, n_options)
        steps = list(plan.steps())
        assert len(steps) == 2 * sum(-(-n // batch) for n in sizes.values())
        for epoch in range(2):
            used = dict.fromkeys(stages, 0)
            epoch_steps = [s for s in steps if s.epoch == epoch]
            for cycle in sorted({s.cycle for s in epoch_steps}):
                order = [s.stage for s in epoch_steps if s.cycle == cycle]
                blocks = [(k, len(list(g))) for k, g in itertools.groupby(order)]
                assert [k for k, _ in blocks] == [s for s in stages if s in order]  # pipeline order, one block each
                for stage in stages:
                    count = dict(blocks).get(stage, 0)
                    left = -(-sizes[stage] // batch) - used[stage]
                    assert count == min(lengths[stage], left)  # full block unless the stage runs out; skipped when out
                    used[stage] += count
            assert all(used[s] == -(-sizes[s] // batch) for s in stages)


@pytest.mark.parametrize("bad", [dict(interval=0), dict(batch_size=0), dict(epochs=0), dict(n_options=0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        schedule({"recall": 3, "analyze": 3, "summarize": 3}, **bad)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at least one record"):
        schedule({"recall": 0, "summarize": 0})
    with pytest.raises(ValueError, match="unknown stage"):
        schedule({"recall_single": 3})


def test_mixed_schedule_draws_every_record_once_per_epoch_from_one_pool():
    sizes = {"recall": 37, "analyze": 185, "summarize": 37}
    schedule = StageSchedule(sizes, n_options=5, interval=3, batch_size=8, epochs=2, seed=5, mixed=True)
    total = sum(sizes.values())
    assert schedule.steps_per_epoch == -(-total // 8) and schedule.pool_lengths == {"mixed": 3 * 7}
    steps = list(schedule.steps())
    assert {s.stage for s in steps} == {"mixed"} and len(steps) == schedule.total_steps
    for epoch in range(2):
        rows = np.concatenate([s.rows for s in steps if s.epoch == epoch])
        assert sorted(rows.tolist()) == list(range(total))  # every record once, all stages pooled
        per_stage = {stage: sorted(np.concatenate([idx for st, _, idx in schedule.locate(rows) if st == stage]).tolist())
                     for stage in sizes}
        assert per_stage == {stage: list(range(n)) for stage, n in sizes.items()}
    first = steps[0]
    assert len({stage for stage, _, _ in schedule.locate(first.rows)}) > 1  # batches mix the stages
    cycle_ends = [s.index + 1 for s in steps if s.cycle_end and s.epoch == 0]
    assert cycle_ends == [21, 33]  # validation as often as a block cycle (3 + 15 + 3 batches), and at the epoch end
    resumed = list(schedule.steps(17))  # resumable at any step
    assert [(s.index, s.cycle) for s in resumed] == [(s.index, s.cycle) for s in steps[17:]]
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(resumed, steps[17:]))
    locate = schedule.locate(first.rows)
    assert sorted(p for _, positions, _ in locate for p in positions.tolist()) == list(range(len(first.rows)))


def test_max_steps_caps_the_run_over_epochs_and_eval_every_sets_one_validation_cadence():
    sizes = {"recall": 10, "analyze": 50, "summarize": 10}  # 9 steps an epoch at batch 8
    capped = StageSchedule(sizes, n_options=5, interval=2, batch_size=8, epochs=1, seed=3, mixed=True, max_steps=20, eval_every=6)
    steps = list(capped.steps())
    assert capped.total_steps == len(steps) == 20 and capped.epochs == 3 and steps[-1].epoch == 2
    assert [s.index + 1 for s in steps if s.cycle_end] == [6, 12, 18, 20]  # every 6 steps, and the last one
    assert steps[-1].block_end and [s.cycle for s in steps[:7]] == [0] * 6 + [1]
    assert [s.index for s in capped.steps(13)] == list(range(13, 20))
    uncapped = StageSchedule(sizes, n_options=5, interval=2, batch_size=8, epochs=3, seed=3, mixed=True)
    assert [s.rows.tolist() for s in uncapped.steps()][:20] == [s.rows.tolist() for s in steps]  # the same batches, cut
    assert "max_steps" not in uncapped.state_dict() and capped.state_dict()["max_steps"] == 20
    with pytest.raises(ValueError, match="max_steps"):
        StageSchedule(sizes, n_options=5, interval=2, batch_size=8, epochs=1, seed=3, max_steps=0)
