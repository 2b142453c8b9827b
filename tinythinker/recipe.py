"""Recipes: the whole TinyThinker run as a list of CLI steps, executed in order, resumable.

A recipe (YAML) names a data set, where its questions and teacher rationales come from, a student
and the hyperparameters of each phase. :func:`plan` turns it into :class:`Step` s, each one
``tinythinker`` command line (the same commands a user types, so there is one implementation of
every phase); :func:`execute` runs them as subprocesses, records each finished step in
``RUN/run_state.json`` and skips it on a rerun. The long steps (teach, SFT, reflection) resume on
their own, so a run killed in the middle of one continues inside that step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from tinythinker.artifacts import atomic_write_text
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import VARIANTS, config_name
from tinythinker.train.settings import SCHEDULES, ReflectSettings, SFTSettings, defaults
from tinythinker.data.sources import get_spec
from tinythinker.train.tracking import REPORT_TO, check_report_to

# Recipe keys and their defaults (REFERENCE section 3; the SFT and reflection hyperparameters are those of tinythinker.train.settings).
DEFAULTS: dict = {
    "name": None,
    "dataset": None,
    "run_dir": None,
    "seed": 42,
    "raw": None,  # local folder, Hub id, or "world" (a generated learnable world); default: the data set's Hub id
    "raw_revision": None,  # of a Hub raw: branch, tag or commit id (None: main); the data set card names its commit
    "world": {"questions": None, "defects": None},  # with raw: world (defaults: tinythinker world's)
    "teacher": {
        "model": "gpt-4o-2024-05-13",
        "base_url": None,
        "api_key_env": "OPENAI_API_KEY",
        "rounds": None,  # default: the data set's reference rounds
        "concurrency": 32,
        "rpm": None,  # None: `teach`'s default, pacing by the server's x-ratelimit headers (no limit when it sends none)
        "tpm": None,
        "splits": "train",
        "responses": None,  # list of existing response files: skip teaching ("world": the world's teacher)
    },
    "student": "google-t5/t5-small",  # Hub id, local path, or "tiny-seq2seq" / "tiny-causal"
    "student_revision": None,  # of a Hub student: branch, tag or commit id (None: main); SFT pins it to its commit
    "report_to": "none",  # SFT and reflection also send their curves to tensorboard, wandb or trackio
    "processes": 1,  # > 1: SFT and reflection run under `accelerate launch --num_processes N`
    "sft": {"variants": ["full"], **defaults(SFTSettings, "epochs", "lr", "batch_size", "interval", "schedule", "bf16", "eval_limit",
                                                   "max_new_tokens")},
    # cycles None: not passed, so the command's default (ReflectSettings.cycles) applies
    "reflect": {**defaults(ReflectSettings, "iterations", "samples", "beta", "nll_weight", "lr", "batch_size", "bf16", "eval_limit",
                         "max_new_tokens"),
                "cycles": None, "train_limit": ReflectSettings.train_limit},
    "eval": {"split": "test", "limit": None, "batch_size": None, "max_new_tokens": None},
}


@dataclass
class Step:
    name: str
    argv: list[str]  # tinythinker arguments
    output: Path  # what the step makes (shown in the summary)
    processes: int = 1
    # arguments that change how a step reports, not what it makes (--report-to, --no-progress): left
    # out of the fingerprint, so that turning a tracker or the bars on or off does not rerun finished steps
    reporting: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        if self.processes > 1:
            return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(self.processes), "-m", "tinythinker",
                    *self.argv, *self.reporting]
        return [sys.executable, "-m", "tinythinker", *self.argv, *self.reporting]

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.argv).encode()).hexdigest()[:16]


@dataclass
class Plan:
    recipe: dict
    run_dir: Path
    steps: list[Step] = field(default_factory=list)


def _merge(defaults: dict, given: dict, where: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TinyThinkerError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(defaults)}")
    merged = {}
    for key, default in defaults.items():
        value = given.get(key, default)
        if isinstance(default, dict):
            if value is not None and not isinstance(value, dict):
                raise TinyThinkerError(f"{where}: '{key}' must be a mapping")
            value = _merge(default, value or {}, f"{where}.{key}")
        merged[key] = value
    return merged


def load_recipe(path: str | Path) -> dict:
    """Read and validate a recipe file (unknown keys and bad values are user errors)."""
    path = Path(path)
    try:
        given = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise TinyThinkerError(f"{path}: recipe not found") from None
    except yaml.YAMLError as error:
        raise TinyThinkerError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(given, dict):
        raise TinyThinkerError(f"{path}: a recipe is a YAML mapping")
    return validate_recipe(given, str(path))


# Every scalar key's kind and range, checked before the first step runs (so a bad value never costs a teacher
# call): (kind, lowest, whether the lowest is excluded, highest, whether None is allowed); the CLI's ranges (reflect.iterations 0: no reflection).
INT, NUMBER, BOOL, TEXT = "an integer", "a number", "true or false", "a text"
VALUE_RULES: dict[str, tuple] = {
    "name": (TEXT, None, False, None, True), "dataset": (TEXT, None, False, None, False), "run_dir": (TEXT, None, False, None, True),
    "seed": (INT, 0, False, None, False), "raw": (TEXT, None, False, None, True), "raw_revision": (TEXT, None, False, None, True),
    "world.questions": (INT, 1, False, None, True), "world.defects": (NUMBER, 0, False, 1, True),
    "teacher.model": (TEXT, None, False, None, False), "teacher.base_url": (TEXT, None, False, None, True),
    "teacher.api_key_env": (TEXT, None, False, None, False), "teacher.rounds": (INT, 1, False, None, True),
    "teacher.concurrency": (INT, 1, False, None, False), "teacher.rpm": (NUMBER, 0, True, None, True),
    "teacher.tpm": (NUMBER, 0, True, None, True), "teacher.splits": (TEXT, None, False, None, False),
    "student": (TEXT, None, False, None, False), "student_revision": (TEXT, None, False, None, True),
    "report_to": (TEXT, None, False, None, False), "processes": (INT, 1, False, None, False),
    "sft.epochs": (INT, 1, False, None, False), "sft.lr": (NUMBER, 0, True, None, False), "sft.batch_size": (INT, 1, False, None, False),
    "sft.interval": (INT, 1, False, None, False), "sft.schedule": (TEXT, None, False, None, False), "sft.bf16": (BOOL, None, False, None, False),
    "sft.eval_limit": (INT, 0, False, None, True), "sft.max_new_tokens": (INT, 1, False, None, True),
    "reflect.iterations": (INT, 0, False, None, False), "reflect.samples": (INT, 1, False, None, False),
    "reflect.beta": (NUMBER, 0, True, None, False), "reflect.nll_weight": (NUMBER, 0, False, None, False),
    "reflect.lr": (NUMBER, 0, True, None, False), "reflect.batch_size": (INT, 1, False, None, False),
    "reflect.bf16": (BOOL, None, False, None, False), "reflect.eval_limit": (INT, 0, False, None, True),
    "reflect.max_new_tokens": (INT, 1, False, None, True), "reflect.cycles": (INT, 1, False, None, True), "reflect.train_limit": (INT, 1, False, None, True),
    "eval.split": (TEXT, None, False, None, False), "eval.limit": (INT, 1, False, None, True), "eval.batch_size": (INT, 1, False, None, True),
    "eval.max_new_tokens": (INT, 1, False, None, True),
}


def _value_error(recipe: dict, key: str, rule: tuple) -> str | None:
    """What is wrong with the value at ``key`` (a dotted path), or None."""
    kind, low, low_open, high, optional = rule
    value = recipe
    for part in key.split("."):
        value = value[part]
    if value is None:
        return None if optional else f"must be {kind}, got nothing"
    fits = {INT: isinstance(value, int) and not isinstance(value, bool),
            NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            BOOL: isinstance(value, bool), TEXT: isinstance(value, str)}[kind]
    if not fits:
        return f"must be {kind}, got {value!r}"
    if low is not None and (value <= low if low_open else value < low):
        return f"must be {'>' if low_open else '>='} {low}, got {value!r}"
    if high is not None and value >= high:
        return f"must be < {high}, got {value!r}"
    return None


def validate_recipe(given: dict, where: str = "recipe") -> dict:
    recipe = _merge(DEFAULTS, given, where)
    if recipe["dataset"] is None:
        raise TinyThinkerError(f"{where}: 'dataset' is required (csqa, obqa or strategyqa)")
    for key, rule in VALUE_RULES.items():
        if (problem := _value_error(recipe, key, rule)) is not None:
            raise TinyThinkerError(f"{where}: {key}: {problem}")
    if recipe["sft"]["schedule"] not in SCHEDULES:
        raise TinyThinkerError(f"{where}: sft.schedule: must be one of {', '.join(SCHEDULES)}, got {recipe['sft']['schedule']!r}")
    if not recipe["dataset"]:
        raise TinyThinkerError(f"{where}: 'dataset' is required (csqa, obqa or strategyqa)")
    get_spec(recipe["dataset"])
    recipe["name"] = recipe["name"] or f"{recipe['dataset']}-run"
    if not isinstance(recipe["name"], str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", recipe["name"]):
        # the run folder is runs/NAME: a name with / or .. would put it (and what --overwrite replaces) elsewhere
        raise TinyThinkerError(f"{where}: name {recipe['name']!r} must be one folder name (letters, digits, '.', '_', '-'); "
                               "set run_dir to write elsewhere")
    variants = recipe["sft"]["variants"]
    if isinstance(variants, str):
        variants = recipe["sft"]["variants"] = [variants]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise TinyThinkerError(f"{where}: sft.variants {bad or variants} must be among {', '.join(VARIANTS)}")
    if recipe["report_to"] not in REPORT_TO:
        raise TinyThinkerError(f"{where}: report_to {recipe['report_to']!r} must be one of {', '.join(REPORT_TO)}")
    if recipe["raw_revision"] is not None and recipe["raw"] == "world":
        raise TinyThinkerError(f"{where}: raw_revision pins a Hub data set, but raw is world (made by the run); leave "
                               "raw_revision out or name a Hub id in raw")
    if recipe["student_revision"] is not None and str(recipe["student"]).startswith("tiny-"):
        raise TinyThinkerError(f"{where}: student_revision pins a Hub student, but student is {recipe['student']} (made "
                               "by the run); leave student_revision out or name a Hub id in student")
    if "demo" in (recipe["raw"], recipe["teacher"]["responses"]):
        raise TinyThinkerError(f"{where}: the embedded demo data is gone; write raw: world and teacher.responses: world "
                               "(a generated learnable world, see tinythinker world --help)")
    return recipe


def _opt(flag: str, value) -> list[str]:
    """`--flag value` for a set value, `--flag` for True, nothing for None/False."""
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    return [flag, str(value)]


def plan(recipe: dict, run_dir: str | Path | None = None, *, progress: bool = True) -> Plan:
    """The steps of a recipe, in order, with every artifact inside one run folder; ``progress=False``
    gives the steps that show progress bars --no-progress."""
    run = Path(run_dir or recipe["run_dir"] or Path("runs") / recipe["name"])
    ds, seed = recipe["dataset"], str(recipe["seed"])
    teacher, sft, reflect, evaluation = recipe["teacher"], recipe["sft"], recipe["reflect"], recipe["eval"]
    steps: list[Step] = []
    quiet = [] if progress else ["--no-progress"]

    raw, responses = recipe["raw"], teacher["responses"]
    if raw == "world" or responses == "world":
        world = run / "world"
        steps.append(Step("world", ["world", ds, "--out", str(world), "--seed", seed, "--overwrite",
                                    *_opt("--questions", recipe["world"]["questions"]), *_opt("--defects", recipe["world"]["defects"])], world))
        raw = str(world / "raw") if raw == "world" else raw
        responses = [str(world / "teacher.jsonl")] if responses == "world" else responses
    raw_args = [*_opt("--raw", raw), *_opt("--revision", recipe["raw_revision"])]

    if responses is None:
        answers = run / "teacher" / f"{ds}.jsonl"
        steps.append(Step("teach", ["teach", ds, *raw_args, "--out", str(answers), "--model", teacher["model"], "--seed", seed,
                                    *_opt("--base-url", teacher["base_url"]), *_opt("--api-key-env", teacher["api_key_env"]),
                                    *_opt("--rounds", teacher["rounds"]), *_opt("--concurrency", teacher["concurrency"]),
                                    *_opt("--rpm", teacher["rpm"]), *_opt("--tpm", teacher["tpm"]), *_opt("--splits", teacher["splits"])],
                          answers, reporting=quiet))
        responses = [str(answers)]
    elif isinstance(responses, str):
        responses = [responses]

    data = run / "data" / ds
    steps.append(Step("build", ["build", ds, *raw_args, *[a for r in responses for a in ("--responses", r)], "--out", str(data),
                                "--seed", seed, "--overwrite"], data, reporting=quiet))

    student = recipe["student"]
    if isinstance(student, str) and student.startswith("tiny-"):
        tiny = run / "students" / student
        steps.append(Step("student", ["student", "init", "--kind", student.removeprefix("tiny-"), "--data", str(data),
                                      "--config", config_name(ds, "full"), "--out", str(tiny), "--overwrite"], tiny))
        student = str(tiny)

    reporting = _opt("--report-to", None if recipe["report_to"] == "none" else recipe["report_to"]) + quiet
    best_full = None
    for variant in sft["variants"]:
        out = run / f"sft-{variant}"
        steps.append(Step(f"sft-{variant}", ["train", "sft", "--data", str(data), "--config", config_name(ds, variant), "--student", str(student),
                                             *_opt("--student-revision", recipe["student_revision"]), "--out", str(out), "--seed", seed,
                                             *_opt("--epochs", sft["epochs"]), *_opt("--lr", sft["lr"]), *_opt("--batch-size", sft["batch_size"]),
                                             *_opt("--interval", sft["interval"]), *_opt("--schedule", sft["schedule"]), *_opt("--bf16", sft["bf16"]), *_opt("--eval-limit", sft["eval_limit"]),
                                             *_opt("--max-new-tokens", sft["max_new_tokens"])],
                          out / "best", int(recipe["processes"]), reporting))
        steps.append(_eval_step(f"eval-sft-{variant}", out / "best", data, ds, variant, evaluation, run / "results" / f"sft-{variant}",
                                quiet))
        if variant == "full":
            best_full = out / "best"

    if best_full is not None and int(reflect["iterations"] or 0) > 0:
        out = run / "dpo"
        steps.append(Step("reflect", ["reflect", "--student", str(best_full), "--data", str(data), "--config", config_name(ds, "full"), "--out", str(out), "--seed", seed,
                                      *_opt("--iterations", reflect["iterations"]), *_opt("--samples", reflect["samples"]), *_opt("--beta", reflect["beta"]),
                                      *_opt("--nll-weight", reflect["nll_weight"]), *_opt("--lr", reflect["lr"]), *_opt("--batch-size", reflect["batch_size"]),
                                      *_opt("--bf16", reflect["bf16"]), *_opt("--eval-limit", reflect["eval_limit"]),
                                      *_opt("--max-new-tokens", reflect["max_new_tokens"]),
                                      *_opt("--cycles", reflect["cycles"]), *_opt("--train-limit", reflect["train_limit"])],
                          out / "best", int(recipe["processes"]), reporting))
        steps.append(_eval_step("eval-dpo", out / "best", data, ds, "full", evaluation, run / "results" / "dpo", quiet))

    steps.append(Step("report", ["report", str(run / "results"), "--out", str(run / "report")], run / "report"))
    return Plan(recipe, run, steps)


def _eval_step(name: str, student: Path, data: Path, ds: str, variant: str, evaluation: dict, out: Path, quiet: list[str]) -> Step:
    return Step(name, ["eval", "--student", str(student), "--data", str(data), "--config", config_name(ds, variant),
                       "--split", evaluation["split"], "--out", str(out), *_opt("--limit", evaluation["limit"]),
                       *_opt("--gen-batch-size", evaluation["batch_size"]),
                       *(["--model_args", f"max_new_tokens={evaluation['max_new_tokens']}"] if evaluation["max_new_tokens"] else [])],
                out, reporting=quiet)


def _die_with_parent() -> None:
    """Linux: a step's process is killed when the runner dies (SIGKILL included), so a rerun never
    races an orphaned step writing into the same folder."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"finished": {}}
    except json.JSONDecodeError:
        raise TinyThinkerError(f"{path}: run state is corrupt; delete it to rerun every step") from None


def execute(run: Plan, *, console=None, env: dict | None = None) -> dict:
    """Run the plan's steps in order, skipping the ones already finished with the same arguments.

    A step whose arguments changed since it finished runs again, and so does every step after it."""
    from rich.console import Console

    console = console or Console(stderr=True)
    check_report_to(run.recipe["report_to"])  # a missing tracker package: one line before any step runs
    run.run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run.run_dir / "run_state.json"
    state = _read_state(state_path)
    atomic_write_text(run.run_dir / "recipe.yaml", yaml.safe_dump(run.recipe, sort_keys=False))
    invalidated = False
    timings: dict[str, float] = {}
    for index, step in enumerate(run.steps, 1):
        done = state["finished"].get(step.name)
        if done and done["fingerprint"] == step.fingerprint() and not invalidated:
            console.print(f"[green]✓[/] [{index}/{len(run.steps)}] {step.name}: finished earlier, skipped")
            timings[step.name] = done.get("seconds", 0.0)
            continue
        invalidated = invalidated or bool(done)
        console.rule(f"[{index}/{len(run.steps)}] {step.name}")
        console.print("[dim]$ tinythinker " + shlex.join([*step.argv, *step.reporting]) + "[/]")
        started = time.perf_counter()
        result = subprocess.run(step.command(), env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent)
        if result.returncode != 0:
            raise TinyThinkerError(f"step '{step.name}' failed (exit {result.returncode}); fix the cause and rerun the same command to continue from it")
        seconds = round(time.perf_counter() - started, 2)
        timings[step.name] = seconds
        state["finished"][step.name] = {"fingerprint": step.fingerprint(), "seconds": seconds, "output": str(step.output)}
        atomic_write_text(state_path, json.dumps(state, indent=2))
    summary = {
        "name": run.recipe["name"],
        "dataset": run.recipe["dataset"],
        "run_dir": str(run.run_dir),
        "steps": [{"name": s.name, "output": str(s.output), "seconds": timings.get(s.name)} for s in run.steps],
    }
    from tinythinker.evaluate.report import JSON_FILE

    report_json = run.run_dir / "report" / JSON_FILE
    if report_json.exists():
        summary["report"] = json.loads(report_json.read_text(encoding="utf-8"))
        summary["headline"] = headline(summary["report"], run.run_dir)
    atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


# the headline columns: (name, task kind, lm-eval metric)
HEADLINE = (("accuracy", "full", "acc"), ("with teacher recall", "analyze_oracle", "acc"),
            ("with teacher recall+analyses", "summarize_oracle", "acc"), ("recall ROUGE-L", "full", "recall_rougeL"),
            ("answer found", "full", "answer_found"))


def headline(report: dict, run_dir: Path) -> list[dict]:
    """One row per evaluated student of a run (``sft-<variant>``, ``dpo``): test accuracy and the
    per-stage figures; the DPO row also gives its change against ``sft-full``, its preference
    pairs and which iteration became the final student."""
    by_run: dict[str, dict] = {}
    for result in report.get("results", []):
        by_run.setdefault(result["run"].split("/")[-1], {})[result["kind"]] = result
    rows = []
    for name, results in sorted(by_run.items(), key=lambda item: (item[0] == "dpo", item[0])):
        row = {"student": name, "questions": (results.get("full") or {}).get("questions")}
        for column, kind, metric in HEADLINE:
            row[column] = ((results.get(kind) or {}).get("metrics") or {}).get(metric)
        rows.append(row)
    sft = next((r for r in rows if r["student"] == "sft-full"), None)
    dpo = next((r for r in rows if r["student"] == "dpo"), None)
    state_file = run_dir / "dpo" / "state.json"
    if dpo is not None and state_file.exists():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if sft and sft["accuracy"] is not None and dpo["accuracy"] is not None:
            dpo["change"] = dpo["accuracy"] - sft["accuracy"]
        dpo["pairs"] = {k: v for entry in state.get("iterations", {}).values() for k, v in (entry.get("summary") or {}).get("pairs", {}).items()}
        dpo["chosen_iteration"] = (state.get("chosen") or {}).get("iteration")
        dpo["validation"] = {"start": (state.get("baseline") or {}).get("accuracy"),
                             **{f"iteration {k}": (entry.get("summary") or {}).get("best_accuracy")
                                for k, entry in state.get("iterations", {}).items()}}
    return rows


def builtin_recipe(name: str) -> dict:
    """A recipe shipped with the package (`tinythinker/resources/recipes/<name>.yaml`)."""
    path = resources.files("tinythinker").joinpath("resources/recipes", f"{name}.yaml")
    if not path.is_file():
        raise TinyThinkerError(f"no built-in recipe {name!r}")
    return validate_recipe(yaml.safe_load(path.read_text(encoding="utf-8")), f"built-in recipe {name}")
