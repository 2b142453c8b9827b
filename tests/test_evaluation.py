"""Per-stage diagnostics, oracle docs and stage attribution, on hand-made traces and rows."""

from __future__ import annotations

import json
import random
from importlib import resources

import pytest

from tinythinker.data import splits
from tinythinker.evaluate import harness as ev_harness
from tinythinker.evaluate import lm_eval_model as ev_model
from tinythinker.evaluate import metrics as ev_metrics
from tinythinker.evaluate import tasks as ev_tasks
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import analyze_prompt, recall_prompt, render_question, summarize_prompt, summarize_target

QUESTION = render_question("Where do you put grapes just before checking out?", ["mouth", "grocery cart", "super market", "fruit basket", "fruit market"])


def make_row(qid="q1", gold="B", *, teacher=True, option="", stage="recall"):
    return {
        "id": qid, "stage": stage, "option": option, "question": QUESTION,
        "choices": ["mouth", "grocery cart", "super market", "fruit basket", "fruit market"],
        "input": recall_prompt(QUESTION), "target": summarize_target(gold), "GT": gold,
        "teacher_recall": "Items are placed in a cart before checkout." if teacher else "",
        "teacher_analyses": [f"analysis of {x}." for x in "ABCDE"] if teacher else [],
    }


def make_trace(answer="B", *, recall="Items are placed in a cart before checkout.", analyses=None, summary=None):
    analyses = {x: f"analysis of {x}." for x in "ABCDE"} if analyses is None else analyses
    return {"id": "q1", "sample": 0, "recall": recall, "analyses": analyses,
            "summary": summary if summary is not None else (summarize_target(answer) if answer else "I do not know."),
            "answer": answer, "gold": "B", "correct": answer == "B", "seconds": 0.1}


# --- ROUGE-L ---------------------------------------------------------------------------------------

def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = "the cat on the mat" (5 of 6 words)
    assert ev_metrics.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # case and punctuation do not count; order does (LCS, not bag of words)
    assert ev_metrics.rouge_l("The CAT, sat.", "the cat sat") == 1.0
    assert ev_metrics.rouge_l("a b c d", "d c b a") == pytest.approx(0.25)
    # P = 2/2, R = 2/4 -> F = 2PR/(P+R) = 2/3
    assert ev_metrics.rouge_l("cat mat", "the cat the mat") == pytest.approx(2 / 3)
    assert ev_metrics.rouge_l("", "anything") == 0.0 and ev_metrics.rouge_l("!!!", "") == 0.0
    assert ev_metrics.rouge_l("dog", "cat") == 0.0


def test_rouge_l_fuzz_properties():
    rng = random.Random(0)
    vocab = ["a", "b", "c", "the", "cat", "Mat", "x1", ",", "."]
    for _ in range(300):
        x = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))
        y = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))
        score = ev_metrics.rouge_l(x, y)
        assert 0.0 <= score <= 1.0
        assert score == pytest.approx(ev_metrics.rouge_l(y, x))  # F1 is symmetric
        if ev_metrics.rouge_tokens(x):
            assert ev_metrics.rouge_l(x, x) == 1.0


# --- which option the analyses call correct --------------------------------------------------------

def test_analyses_pick_and_tie():
    analyses = {
        "A": "a mouth is not where one puts items before checkout.",
        "B": "the grocery cart is designed for holding items to be purchased.",
        "C": "the supermarket is the whole store, not a place to put grapes.",
    }
    assert ev_metrics.verdict_score(analyses["A"]) < 0 < ev_metrics.verdict_score(analyses["B"])
    assert ev_metrics.analyses_pick(analyses) == "B"
    assert ev_metrics.analyses_pick({"A": "a fruit.", "B": "a fruit."}) is None  # a tie decides nothing
    assert ev_metrics.analyses_pick({}) is None
    assert ev_metrics.verdict_score("it isn't correct") == 0  # "n't" rejects, "correct" endorses


def test_verdict_rule_on_teacher_exemplars():
    """How often the lexical rule names the teacher's own correct option (the verdicts the teacher
    wrote and the student never sees): the figure docs/evaluation.md quotes."""
    found = total = 0
    for name in ("csqa", "obqa", "strategyqa"):
        text = resources.files("tinythinker").joinpath("resources/prompts", f"{name}_cot.json").read_text(encoding="utf-8")
        for exemplar in json.loads(text):
            analyses, gold = {}, None
            for line in exemplar["Explanations"]:
                verdict, _, knowledge = line.partition("Because ")
                analyses[verdict[0]] = knowledge
                if "is correct" in verdict:
                    gold = verdict[0]
            total += 1
            found += ev_metrics.analyses_pick(analyses) == gold
    assert total == 23
    assert found / total >= 0.6


# --- trace metrics ---------------------------------------------------------------------------------

def test_trace_metrics_full_trace():
    doc = ev_tasks.task_docs([make_row()], "full")[0]
    analyses = {x: f"analysis of {x}." for x in "ABCDE"}
    analyses["B"] = "the cart is designed for holding items."  # the analyses favour B
    metrics = ev_metrics.trace_metrics(make_trace("B", analyses=analyses), doc)
    assert metrics["acc"] == 1.0 and metrics["answer_found"] == 1.0
    assert metrics["analyses_complete"] == 1.0
    assert metrics["summary_consistent"] == 1.0
    assert metrics["recall_rougeL"] == 1.0
    assert metrics["analysis_rougeL"] == pytest.approx((4 * 1.0 + ev_metrics.rouge_l(analyses["B"], "analysis of B.")) / 5)
    assert metrics["recall_words"] == 8 and metrics["summary_words"] == 6
    assert metrics["analysis_words"] == pytest.approx((4 * 3 + 7) / 5)

    wrong = ev_metrics.trace_metrics(make_trace("D", analyses=analyses), doc)
    assert wrong["acc"] == 0.0 and wrong["summary_consistent"] == 0.0


def test_trace_metrics_missing_parts():
    doc = ev_tasks.task_docs([make_row(teacher=False)], "full")[0]
    incomplete = {x: f"analysis of {x}." for x in "ABCD"}  # E missing
    metrics = ev_metrics.trace_metrics(make_trace(None, analyses=incomplete), doc)
    assert metrics["acc"] == 0.0 and metrics["answer_found"] == 0.0
    assert metrics["analyses_complete"] == 0.0
    # no teacher text: no similarity; no answer or undetermined pick: no consistency
    assert "recall_rougeL" not in metrics and "analysis_rougeL" not in metrics
    assert "summary_consistent" not in metrics
    # an analysis that is only a period counts as not produced
    blank = {x: ("." if x == "C" else "text") for x in "ABCDE"}
    assert ev_metrics.trace_metrics(make_trace("B", analyses=blank), doc)["analyses_complete"] == 0.0
    # no recall stage (no_recall variant): no recall metrics
    assert "recall_words" not in ev_metrics.trace_metrics(make_trace("B", recall=None), doc)


def test_vote_metrics():
    doc = ev_tasks.task_docs([make_row()], "sc")[0]
    traces = [make_trace(a) for a in ("C", "B", "B", None, "C")]  # B and C tie: C was seen first
    metrics = ev_metrics.vote_metrics(traces, doc)
    assert metrics == {"acc": 0.0, "answer_found": 1.0, "sample_acc": 0.4, "vote_share": 0.4}
    metrics = ev_metrics.vote_metrics([make_trace(a) for a in ("B", None, "B")], doc)
    assert metrics["acc"] == 1.0 and metrics["vote_share"] == pytest.approx(2 / 3)
    assert ev_metrics.vote_metrics([make_trace(None)], doc) == {"acc": 0.0, "answer_found": 0.0, "sample_acc": 0.0}


# --- attribution -----------------------------------------------------------------------------------

def test_attribute_truth_table():
    assert ev_metrics.attribute(True, False, False) == "correct"
    assert ev_metrics.attribute(False, True, False) == "recall"      # teacher's recall repairs it
    assert ev_metrics.attribute(False, True, True) == "recall"
    assert ev_metrics.attribute(False, False, True) == "analyze"     # teacher's analyses repair it
    assert ev_metrics.attribute(False, False, False) == "summarize"  # wrong even with the teacher's reasoning
    assert ev_metrics.attribute(False, None, True) == "unattributed"
    assert ev_metrics.attribute(False, False, None) == "unattributed"
    assert ev_metrics.attribute(None, True, True) == "unattributed"


def test_attribution_on_hand_made_runs():
    full = {"q1": True, "q2": False, "q3": False, "q4": False, "q5": False, "q6": False}
    analyze = {"q1": False, "q2": True, "q3": False, "q4": False, "q5": False}
    summarize = {"q1": True, "q2": False, "q3": True, "q4": False}
    outcomes = ev_metrics.attribution(full, analyze, summarize)
    assert outcomes == {"q1": "correct", "q2": "recall", "q3": "analyze", "q4": "summarize",
                        "q5": "unattributed", "q6": "unattributed"}
    summary = ev_metrics.attribution_summary(outcomes)
    assert summary["questions"] == 6 and summary["errors"] == 5
    assert summary["recall"] == summary["analyze"] == summary["summarize"] == 1 and summary["unattributed"] == 2
    assert summary["correct_rate"] == pytest.approx(1 / 6)
    assert summary["recall_error_share"] == pytest.approx(1 / 5)
    assert ev_metrics.attribution_summary({}) ["errors"] == 0


# --- task docs -------------------------------------------------------------------------------------

def test_task_docs_prompts_come_from_the_protocol():
    rows = [make_row("q1"), make_row("q2", teacher=False)]
    full = ev_tasks.task_docs(rows, "full")
    assert [d["prompt"] for d in full] == [recall_prompt(QUESTION)] * 2
    assert full[0]["target"] == summarize_target("B")
    analyze = ev_tasks.task_docs(rows, "analyze_oracle")
    assert [d["id"] for d in analyze] == ["q1"]  # only questions with the teacher's text
    assert analyze[0]["prompt"] == analyze_prompt(QUESTION, "A", recall="Items are placed in a cart before checkout.")
    summarize = ev_tasks.task_docs(rows, "summarize_oracle")
    assert summarize[0]["prompt"] == summarize_prompt(
        QUESTION, "Items are placed in a cart before checkout.", {x: f"analysis of {x}." for x in "ABCDE"})
    # no_recall test rows come one per option: one doc per question, first prompt of the variant
    per_option = [make_row("q1", option=x, stage="analyze") for x in "ABCDE"]
    docs = ev_tasks.task_docs(per_option, "full", variant="no_recall")
    assert len(docs) == 1 and docs[0]["prompt"] == analyze_prompt(QUESTION, "A")
    with pytest.raises(ValueError):
        ev_tasks.task_docs(rows, "bogus")


def test_data_source_precedence(monkeypatch, caplog):
    monkeypatch.delenv("TINYTHINKER_DATA", raising=False)
    monkeypatch.delenv("TINYTHINKER_DATA_CSQA", raising=False)
    assert ev_tasks.data_source("csqa", {}) == "world"
    assert "using the generated world data" in caplog.text
    monkeypatch.setenv("TINYTHINKER_DATA", "/env/all")
    assert ev_tasks.data_source("csqa", {}) == "/env/all"
    monkeypatch.setenv("TINYTHINKER_DATA_CSQA", "/env/csqa")
    assert ev_tasks.data_source("csqa", {}) == "/env/csqa"
    assert ev_tasks.data_source("csqa", {"data": "/meta/all"}) == "/meta/all"
    assert ev_tasks.data_source("csqa", {"data": "/meta/all", "data_csqa": "/meta/csqa"}) == "/meta/csqa"
    assert ev_tasks.data_source("obqa", {"data_csqa": "/meta/csqa"}) == "/env/all"


def test_data_source_from_the_students_card(tmp_path, monkeypatch):
    from tinythinker.artifacts import write_card

    monkeypatch.delenv("TINYTHINKER_DATA", raising=False)
    monkeypatch.delenv("TINYTHINKER_DATA_OBQA", raising=False)
    write_card(tmp_path, {"tinythinker": {"method": "sft", "data": "runs/x/data/obqa", "config": "obqa-full"}}, "# student")
    assert ev_tasks.data_source("obqa", {"pretrained": str(tmp_path)}) == "runs/x/data/obqa"
    assert ev_tasks.data_source("csqa", {"pretrained": str(tmp_path)}) == "world"  # trained on another data set
    assert ev_tasks.data_source("obqa", {"pretrained": str(tmp_path), "data": "mine"}) == "mine"
    assert ev_tasks.data_source("obqa", {"pretrained": "google-t5/t5-small"}) == "world"


def test_world_folder_is_built_once_into_the_cache(tmp_path, monkeypatch):
    from tinythinker.data.splits import load_stage_split

    monkeypatch.setenv("TINYTHINKER_CACHE", str(tmp_path / "cache"))
    folder = splits.world_folder("obqa", questions=80)  # the default size takes longer; the same code path
    assert folder.parent == tmp_path / "cache" / "world" and folder.name == f"obqa-{splits._world_digest('obqa', 42, 80)}"
    assert sorted(p.name for p in folder.iterdir()) == [".tinythinker", "README.md", "data"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no generated or partial files left beside it
    assert len(load_stage_split(folder, "obqa-full", "test")) > 0
    stamp = (folder / "README.md").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr("tinythinker.data.build.build_dataset", no_rebuild)
    assert splits.world_folder("obqa", questions=80) == folder and (folder / "README.md").stat().st_mtime_ns == stamp
    # keyed by the generated files: another world (here another seed) is another folder
    assert splits._world_digest("obqa", 7, 80) != splits._world_digest("obqa", 42, 80)


def test_demo_source_is_a_deprecated_alias_of_world(world_build, monkeypatch, caplog):
    built = world_build("csqa").out
    asked = []
    monkeypatch.setattr(splits, "world_folder", lambda dataset: asked.append(dataset) or built)
    monkeypatch.setattr(splits, "_warned_demo", [])
    rows = splits.load_split("world", "csqa", "full", "test")
    assert asked == ["csqa"] and "deprecated" not in caplog.text
    assert splits.load_split("demo", "csqa", "full", "test")[:] == rows[:] and asked == ["csqa", "csqa"]
    splits.load_split("demo", "csqa", "full", "test")
    assert caplog.text.count("data=demo is deprecated") == 1  # one warning line, not one per task


def test_decode_trace_refuses_plain_text():
    assert ev_model.decode_trace(ev_model.encode_trace(make_trace("B")), "t")["answer"] == "B"
    with pytest.raises(TinyThinkerError, match="--model tinythinker"):
        ev_model.decode_trace("Items are placed in a cart.", "full-pipeline task")
    with pytest.raises(TinyThinkerError):
        ev_model.decode_trace('{"answer": "B"}', "t")


def test_parse_summary_response():
    assert ev_model.parse_summary_response(" So the answer is option C. ") == {"summary": "So the answer is option C.", "answer": "C"}
    assert ev_model.parse_summary_response("no idea")["answer"] is None
    assert ev_model.parse_summary_response(ev_model.encode_trace(make_trace("D")))["answer"] == "D"


def test_load_task_docs_errors(tmp_path):
    with pytest.raises(TinyThinkerError, match="no such data set folder|not a data set folder"):
        ev_tasks.load_task_docs("csqa", "full", data=str(tmp_path / "missing"))
    with pytest.raises(TinyThinkerError, match="variant"):
        ev_tasks.load_task_docs("csqa", "full", data=str(tmp_path), variant="bogus")


# --- `tinythinker eval` arguments --------------------------------------------------------------------

def test_lm_eval_argv_translates_and_passes_through(tmp_path):
    argv = ev_harness.lm_eval_argv(["--seed", "1"], student="runs/s", data="runs/d", config="csqa-full", split="validation",
                           output_path=str(tmp_path), limit=5)
    assert argv[argv.index("--include_path") + 1] == str(ev_tasks.tasks_folder())
    assert (ev_tasks.tasks_folder() / "tinythinker_csqa.yaml").is_file()
    assert argv[argv.index("--tasks") + 1] == "tinythinker_csqa,tinythinker_csqa_analyze_oracle,tinythinker_csqa_summarize_oracle"
    assert argv[argv.index("--model") + 1] == "tinythinker"
    assert argv[argv.index("--model_args") + 1: argv.index("--model_args") + 3] == ["pretrained=runs/s", "variant=full"]
    assert argv[argv.index("--metadata") + 1: argv.index("--metadata") + 3] == ["data=runs/d", "split=validation"]
    assert "--log_samples" in argv and argv[argv.index("--batch_size") + 1] == "64" and argv[-2:] == ["--seed", "1"]
    assert argv[argv.index("--use_cache") + 1].startswith(str(tmp_path / ".requests-cache"))

    # lm_eval's own arguments win where given; ablation variants run only their pipeline task
    argv = ev_harness.lm_eval_argv(["--tasks", "tinythinker", "--include_path", "mine", "--batch_size", "8"],
                           student="s", config="obqa-no_recall", self_consistency=True)
    assert argv.count("--tasks") == argv.count("--include_path") == argv.count("--batch_size") == 1
    assert "variant=no_recall" in argv
    assert ev_tasks.task_names("obqa-no_recall", self_consistency=True) == ["tinythinker_obqa", "tinythinker_obqa_sc"]
    with pytest.raises(TinyThinkerError, match="say what to evaluate"):
        ev_harness.lm_eval_argv([], student="s")
    with pytest.raises(TinyThinkerError, match="not both"):
        ev_harness.lm_eval_argv(["--model", "hf"], student="s", config="csqa-full")
    with pytest.raises(TinyThinkerError, match="unknown data set"):
        ev_tasks.task_names("mmlu-full")


def test_lm_eval_argv_batch_size_is_the_engines_and_validated():
    argv = ev_harness.lm_eval_argv([], student="s", config="csqa-full", batch_size=8)
    assert "gen_batch_size=8" in argv and argv[argv.index("--batch_size") + 1] == "8"
    # another model: only lm-eval's --batch_size; --model tinythinker given the lm_eval way: its gen_batch_size too
    assert "gen_batch_size=8" not in ev_harness.lm_eval_argv(["--model", "hf"], config="csqa-full", batch_size=8)
    assert "gen_batch_size=8" in ev_harness.lm_eval_argv(["--model", "tinythinker", "--model_args", "pretrained=s"], config="csqa-full", batch_size=8)
    for bad in (0, -3, True, 2.5):
        with pytest.raises(TinyThinkerError, match="at least 1"):
            ev_harness.lm_eval_argv([], student="s", config="csqa-full", batch_size=bad)


def test_parse_lm_eval_args_as_lm_eval_run_does():
    args = ev_harness.parse_lm_eval_args(["--tasks", "a,b", "c", "--model", "tinythinker", "--model_args", "pretrained=x,seed=7",
                                  "--model_args", "variant=no_recall", "--metadata", '{"data": "d"}', "--seed", "3",
                                  "--log_samples", "--output_path", "out", "-L", "2"])
    assert args.tasks == ["a", "b", "c"] and args.model == "tinythinker" and args.limit == 2.0
    assert args.model_args == {"pretrained": "x", "seed": 7, "variant": "no_recall"} and args.metadata == {"data": "d"}
    assert args.seed == [3, 3, 3, 3] and args.log_samples and args.batch_size is None
    with pytest.raises(TinyThinkerError, match="does not take --wandb_args"):
        ev_harness.parse_lm_eval_args(["--tasks", "a", "--wandb_args", "project=x"])
    with pytest.raises(TinyThinkerError, match="output folder"):
        ev_harness.parse_lm_eval_args(["--tasks", "a", "--log_samples"])


def test_resolve_tasks_indexes_only_the_included_folders(tmp_path):
    """`tinythinker eval` builds a task index of our 16 YAMLs, not of lm-eval's ~14,000."""
    own = tmp_path / "mine.yaml"
    own.write_text(f"include: {ev_tasks.tasks_folder() / 'tinythinker_csqa.yaml'}\ntask: mine\n")
    manager, tasks = ev_harness.resolve_tasks(["tinythinker_csqa", "tinythinker_obqa_*", str(own)], [str(ev_tasks.tasks_folder())])
    assert len(manager.all_tasks) < 50
    assert tasks == ["tinythinker_csqa", "tinythinker_obqa_analyze_oracle", "tinythinker_obqa_sc",
                     "tinythinker_obqa_stages", "tinythinker_obqa_summarize_oracle", str(own)]
    with pytest.raises(TinyThinkerError, match="no such file"):
        ev_harness.resolve_tasks([str(tmp_path / "missing.yaml")], [str(ev_tasks.tasks_folder())])


def test_environment_report_is_computed_once_per_environment(tmp_path, monkeypatch):
    """lm-eval records torch's environment report (`pip list` & co.) in every results file; it is
    kept per environment, so an evaluation does not pay a dozen subprocesses each time."""
    monkeypatch.setenv("TINYTHINKER_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return f"report {len(calls)}"

    assert ev_harness.environment_report(compute) == ev_harness.environment_report(compute) == "report 1" and len(calls) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # another environment: a report of its own
    assert ev_harness.environment_report(compute) == "report 2" and len(calls) == 2


def test_environment_report_ahead_hands_lm_eval_the_report(tmp_path, monkeypatch):
    from lm_eval.loggers.utils import add_env_info
    from torch.utils import collect_env

    monkeypatch.setenv("TINYTHINKER_CACHE", str(tmp_path))
    computed = []
    monkeypatch.setattr(collect_env, "get_pretty_env_info", lambda: computed.append(1) or "the report")
    stored = {}
    with ev_harness._environment_report_ahead():
        add_env_info(stored)  # what simple_evaluate calls after the evaluation
    with ev_harness._environment_report_ahead():
        add_env_info(stored)
    assert stored["pretty_env_info"] == "the report" and computed == [1]  # the second time from the cache


def test_one_generation_cap_sets_recall_and_analyze_and_leaves_summarize_its_own():
    from tinythinker.evaluate.engine import MAX_NEW_TOKENS, stage_caps

    assert stage_caps(None) is None
    assert stage_caps(24) == {"recall": 24, "analyze": 24} and {**MAX_NEW_TOKENS, **stage_caps(24)}["summarize"] == MAX_NEW_TOKENS["summarize"]
