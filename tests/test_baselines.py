"""The baseline configs ``{dataset}-cot`` (standard CoT distillation, Magister et al. 2023) and
``{dataset}-dsbs`` (Distilling step-by-step, Hsieh et al. 2023): their records are the stage texts
of the same rationales, on the same questions as the stage configs, and they train, answer and score
wherever the stage configs do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tinythinker import protocol
from tinythinker.data.records import build_split, train_splits, variant_splits
from tinythinker.data.splits import load_stage_split

from helpers_records import Q1, QS, QT, QV, SELECTION, rows

pytestmark = pytest.mark.usefixtures("one_thread")


def test_baseline_splits():
    assert train_splits("cot") == ("cot",) and train_splits("dsbs") == ("label", "rationale")
    assert variant_splits("dsbs") == ("label", "rationale", "validation", "test")
    assert protocol.config_parts("csqa-cot") == ("csqa", "cot") and protocol.config_parts("obqa-dsbs") == ("obqa", "dsbs")


def test_cot_target_is_the_stage_texts_of_one_rationale_in_order():
    got = rows("cot", "cot")
    analyses = " ".join(f"For option {x}, {x} because Fish swim." for x in "ABC")
    assert (got[0]["input"], got[0]["target"]) == (
        f"{Q1.text}\nAnswer:", f"Recall: Fish swim.\nAnalyze: {analyses}\nSummarize: So the answer is option A.")
    # what follows `{Q}\n` in the full config's summarize input and its target, rationale by rationale
    full = rows("full", "summarize")
    assert [r["target"] for r in got] == [f"{s['input'][len(s['question']) + 1:]} {s['target']}" for s in full]
    assert [(r["id"], r["stage"], r["option"]) for r in got] == [(s["id"], "cot", "") for s in full]


def test_cot_target_follows_the_summarize_order_switch():
    full = rows("full", "summarize", reference_order=True)
    cot = rows("cot", "cot", reference_order=True)
    assert [r["target"] for r in cot] == [f"{s['input'][len(s['question']) + 1:]} {s['target']}" for s in full]
    assert "For option A, A because Fish breathe water. For option C," in cot[1]["target"]


def test_dsbs_tasks_have_their_prefixes_and_split_the_cot_target():
    label, rationale, cot = rows("dsbs", "label"), rows("dsbs", "rationale"), rows("cot", "cot")
    assert len(label) == len(rationale) == len(cot) == 3  # one of each per distinct rationale: both tasks weigh the same
    for lab, rat, c in zip(label, rationale, cot):
        assert lab["input"] == "[label] " + c["input"] and rat["input"] == "[rationale] " + c["input"]
        assert (lab["stage"], rat["stage"]) == ("label", "rationale")
        assert f"{rat['target']}\nSummarize: {lab['target']}" == c["target"]
        assert lab["target"] == protocol.summarize_target(lab["GT"])


def test_baseline_validation_and_test_rows():
    for variant, stage, prefix in (("cot", "cot", ""), ("dsbs", "label", "[label] ")):
        for split, q in (("validation", QV), ("test", QT)):
            (row,) = rows(variant, split)
            assert (row["stage"], row["option"], row["input"]) == (stage, "", f"{prefix}{q.text}\nAnswer:")
            full = rows("full", split)[0]
            assert {k: v for k, v in row.items() if k not in ("stage", "input")} == \
                {k: v for k, v in full.items() if k not in ("stage", "input")}


# --- on a built world: same questions in every split, the card -----------------------------------

@pytest.mark.parametrize("dataset", ["csqa", "strategyqa"])
def test_baselines_hold_the_same_questions_as_the_stage_configs(world_build, dataset):
    out = world_build(dataset).out
    def ids(config, split):
        return sorted(set(load_stage_split(out, config, split)["id"]))
    train_ids = ids(f"{dataset}-full", "summarize")
    for config, split in ((f"{dataset}-cot", "cot"), (f"{dataset}-dsbs", "label"), (f"{dataset}-dsbs", "rationale")):
        assert ids(config, split) == train_ids, (config, split)
    for split in ("validation", "test"):
        assert ids(f"{dataset}-cot", split) == ids(f"{dataset}-dsbs", split) == ids(f"{dataset}-full", split)
    full = load_stage_split(out, f"{dataset}-full", "summarize")
    cot = load_stage_split(out, f"{dataset}-cot", "cot")
    assert cot["target"] == [f"{i[len(q) + 1:]} {t}" for i, q, t in zip(full["input"], full["question"], full["target"])]


def test_the_card_describes_and_cites_the_baselines(world_build):
    card = (world_build("csqa").out / "README.md").read_text()
    assert "## Baselines" in card and "`csqa-cot`: standard CoT distillation" in card and "`csqa-dsbs`: Distilling step-by-step" in card
    assert "@inproceedings{magister-etal-2023-teaching" in card and "@inproceedings{hsieh-etal-2023-distilling" in card


# --- inference: one pass, its cap, the answer rule -------------------------------------------------

class _EchoStudent:
    """Answers every prompt with a fixed text; records the cap it was given."""

    def __init__(self, text):
        self.text, self.caps, self.prompts = text, [], []

    def tokenize_prompts(self, prompts):
        self.prompts += list(prompts)
        return [[0] for _ in prompts]

    def generate_ids(self, ids, *, max_new_tokens, num_return_sequences=1, on_batch=None, **_):
        self.caps.append(max_new_tokens)
        if on_batch:
            on_batch(list(range(len(ids))), 0.0)
        return [[self.text] * num_return_sequences for _ in ids]


def test_one_pass_inference_reads_the_answer_by_the_summary_rule():
    from tinythinker.data.splits import Item
    from tinythinker.evaluate.engine import run_pipeline

    items = [Item("q", Q1.text, "ABCDE", "B")]
    text = protocol.cot_target("It is so.", {x: "Because." for x in "ABCDE"}, "B")
    student = _EchoStudent(text)
    (trace,) = run_pipeline(student, items, variant="cot", progress=False)
    assert (trace.answer, trace.correct, trace.summary, trace.recall) == ("B", True, text, None)
    assert student.prompts == [f"{Q1.text}\nAnswer:"] and student.caps == [96 + 5 * 96 + 16]  # every stage's cap, summed
    student = _EchoStudent("So the answer is option A.")
    (trace,) = run_pipeline(student, items, variant="dsbs", progress=False, max_new_tokens={"summarize": 8})
    assert (trace.answer, trace.correct, list(trace.stage_seconds)) == ("A", False, ["label"])
    assert student.prompts == [f"[label] {Q1.text}\nAnswer:"] and student.caps == [8]  # the summarize cap
    run_pipeline(student, items, variant="cot", progress=False, max_new_tokens={"cot": 40})
    assert student.caps[-1] == 40


def test_lm_eval_docs_of_a_baseline_prompt_its_one_pass(world_build):
    from tinythinker.evaluate.tasks import load_task_docs, task_names

    out = world_build("csqa").out
    docs = load_task_docs("csqa", "full", data=str(out), variant="dsbs")["test"]
    assert docs[0]["prompt"].startswith("[label] ") and docs[0]["prompt"].endswith("\nAnswer:") and docs[0]["variant"] == "dsbs"
    assert task_names("csqa-cot") == ["tinythinker_csqa"]


# --- end to end: train sft --config csqa-cot, then infer ---------------------------------------------

def _tinythinker(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "tinythinker", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def world_student(world_build, tmp_path_factory):
    from tinythinker.students import make_tiny_student

    out = world_build("csqa").out
    texts = [t for config in ("csqa-cot", "csqa-dsbs") for split in variant_splits(protocol.config_parts(config)[1])
             for column in ("input", "target") for t in load_stage_split(out, config, split)[column]]
    return make_tiny_student("causal", list(dict.fromkeys(texts)), tmp_path_factory.mktemp("baseline-student") / "causal", seed=0)


@pytest.mark.parametrize("variant", ["cot", "dsbs"])
def test_a_baseline_trains_validates_with_its_own_inference_and_answers(world_build, world_student, tmp_path, variant):
    from tinythinker.train.sft import SFTSettings, train_sft

    out = world_build("csqa").out
    run = tmp_path / variant
    result = train_sft(SFTSettings(data=str(out), config=f"csqa-{variant}", student=str(world_student), interval=1, epochs=1,
                                   batch_size=64, eval_limit=2, max_length=400), run, progress=False)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {m["stage"] for m in metrics if m["kind"] == "train"} == set(protocol.TRAINED_STAGES[variant])
    assert result.curve and result.curve[0]["questions"] == 2 and (run / "best" / "model.safetensors").exists()
    if variant == "dsbs":
        return
    traces = tmp_path / "traces.jsonl"
    done = _tinythinker("infer", "--student", run / "best", "--data", out, "--config", "csqa-cot", "--split", "test",
                        "--limit", "2", "--out", traces)
    assert done.returncode == 0, done.stderr
    assert "(cot, greedy)" in done.stdout
    lines = [json.loads(line) for line in traces.read_text().splitlines()]
    assert len(lines) == 2 and all(set(t["stage_seconds"]) == {"cot"} and t["recall"] is None for t in lines)


def test_build_split_of_an_unknown_split_names_the_baseline_splits():
    with pytest.raises(ValueError, match="variant cot has no split 'summarize'; it has cot, validation, test"):
        build_split(QS, SELECTION, "cot", "summarize")
