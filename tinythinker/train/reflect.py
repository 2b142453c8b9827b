"""Phase 2 of TinyThinker (REFERENCE 9): iterative self-reflection, resumable step by step.

Iteration k starts from a checkpoint -- iteration 1 from the SFT best, then from the previous
iteration's best -- which is also the frozen DPO reference of that iteration. Its steps:

1. **sample**: the student samples ``samples`` recalls of every training question (temperature 0.7,
   top-k off) and completes each with greedy analyze and summarize; then, for every chosen recall of
   the recall pairs, it samples ``samples`` analysis runs (every option) and summarizes greedily.
   Traces go to ``iter{k}/samples/`` in chunks, so a rerun keeps the finished ones.
2. **pairs**: :mod:`tinythinker.data.preferences` turns the traces into recall and analyze pairs, written
   as config ``{dataset}-dpo-iter{k}`` of the preference set ``OUT/preferences`` (Hub layout).
3. **reference**: the start checkpoint's log-probabilities of every pair, cached in
   ``iter{k}/reference/`` by model and data fingerprint.
4. **dpo**: :class:`tinythinker.train.dpo.DPORun` trains on the pairs and keeps the checkpoint with the
   best validation accuracy in ``iter{k}/best`` (resumable inside the step from ``iter{k}/last``).
5. **next**: ``OUT/best`` becomes that checkpoint, and iteration k+1 starts from it.

``OUT/state.json`` (atomic writes) records every finished step, so the same command continues an
interrupted run from the last finished step; ``OUT/metrics.jsonl`` holds the validation curve,
training log and one summary line per iteration. Every random draw is seeded by the run's seed,
the iteration and the step, so an interrupted run ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import polars as pl

from tinythinker.artifacts import atomic_write_text, staged_folder
from tinythinker.train.dpo import DPORun, model_fingerprint, reference_logprobs
from tinythinker.errors import TinyThinkerError
from tinythinker.data.preferences import (
    PAIR_STAGES,
    PairSet,
    analyze_pairs,
    chosen_recalls,
    config_name,
    pair_rng,
    recall_pairs,
    teacher_analyses,
    teacher_recalls,
    write_preference_config,
)
from tinythinker.protocol import ANALYZE, RECALL, config_parts
from tinythinker.train.settings import DPOSettings, ReflectSettings, first_change
from tinythinker.train.tracking import scalars, tracking
from tinythinker.runs import BEST, LAST, METRICS as METRICS_FILE, RUN_SETTINGS as SETTINGS_FILE, write_settings
from tinythinker.train.loop import make_accelerator, validate

STATE_FILE, PREFERENCES = "state.json", "preferences"
STEPS = ("sample", "pairs", "reference", "dpo", "next")


def dpo_settings(settings: ReflectSettings, iteration: int, variant: str) -> DPOSettings:
    """How iteration ``iteration`` trains: the run's DPO settings, with a seed of its own."""
    return DPOSettings(beta=settings.beta, nll_weight=settings.nll_weight, lr=settings.lr, batch_size=settings.batch_size,
                       cycles=settings.cycles, max_length=settings.max_length, seed=derived_seed(settings.seed, iteration, "dpo"),
                       bf16=settings.bf16, variant=variant, max_new_tokens=settings.max_new_tokens)


def derived_seed(seed: int, iteration: int, step: str, *more: int) -> int:
    """The seed of one step of one iteration (one generator per step)."""
    return int(np.random.SeedSequence([seed, iteration, STEPS.index(step) if step in STEPS else PAIR_STAGES.index(step) + 10, *more]).generate_state(1)[0])


@dataclass
class ReflectResult:
    out: Path
    best: Path
    iterations: list[dict] = field(default_factory=list)  # one summary per finished iteration
    baseline: dict | None = None  # validation accuracy of the starting student
    stopped: str | None = None  # why the loop ended early
    chosen: dict | None = None  # which iteration OUT/best is (0: the starting student) and its validation accuracy


# --- the training questions and the teacher's records ----------------------------------------------

class ReflectData:
    """The stage data set config the student was trained on: training questions (``recall_single``),
    the teacher's recalls and analyses (``recall`` / ``analyze``) and the validation questions."""

    def __init__(self, settings: ReflectSettings, revision: str | None = None):
        from tinythinker.data.splits import Item, items_from_dataset, load_stage_split, stage_configs  # noqa: F401 - Item types self.items

        need = ["recall_single", "recall"] + (["analyze"] if ANALYZE in settings.stages else [])
        if settings.eval_limit != 0:
            need.append("validation")
        # the engine's reader (one split's parquet file at a time for local folders); one-line errors for missing splits
        configs = stage_configs(settings.data) if Path(settings.data).exists() else {}
        missing = [split for split in need if settings.config in configs and split not in configs[settings.config]]
        if missing:
            raise TinyThinkerError(f"{settings.data} config {settings.config!r} has no {', '.join(missing)} split "
                                   f"(it has {', '.join(configs[settings.config])}); self-reflection needs a -full config")
        splits = {split: load_stage_split(settings.data, settings.config, split, revision) for split in dict.fromkeys(need)}
        # the pipeline the student was trained for and is validated with: the config's variant (full when unnamed)
        self.dataset, variant = config_parts(settings.config)
        self.variant = variant or "full"
        self.items: list[Item] = items_from_dataset(settings.data, settings.config, "recall_single", revision)[: settings.train_limit]
        self.questions = {item.id: item for item in self.items}
        if not self.items:
            raise TinyThinkerError(f"{settings.data} config {settings.config!r}: no training questions in recall_single")
        ids = pl.DataFrame({"id": list(self.questions)})

        def rows(split: str, columns: list[str]) -> list[dict]:
            return splits[split].select_columns(columns).to_polars().join(ids, on="id", how="semi", maintain_order="left").to_dicts()

        recall_rows = rows("recall", ["id", "target"])
        self.teacher_recalls = teacher_recalls(recall_rows)
        self.teacher_analyses = {}
        if ANALYZE in settings.stages:
            self.teacher_analyses = teacher_analyses(recall_rows, rows("analyze", ["id", "input", "target"]), self.questions)
        self.validation = []
        if settings.eval_limit != 0:
            self.validation = items_from_dataset(settings.data, settings.config, "validation", revision)[: settings.eval_limit]


# --- sampling, in resumable chunks -----------------------------------------------------------------

CHUNK = 64  # questions (or recalls) per chunk file


def sample_recall_traces(student, items, n: int, sampling, seed: int, *, batch_size: int = 64, max_new_tokens: int | None = None) -> list:
    """``n`` sampled recalls per question, each completed with greedy analyze and summarize
    (distinct recalls of a question are completed once). One trace per (question, sample)."""
    from tinythinker.evaluate.engine import GREEDY, MAX_NEW_TOKENS, Trace, generate_analyses, generate_recalls, generate_summaries

    recalls = generate_recalls(student, items, n, sampling, seed, batch_size=batch_size,
                               max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[RECALL])
    by_id = {item.id: item for item in items}
    units = list(dict.fromkeys((item.id, recall) for item in items for recall in recalls[item.id]))
    analyses = generate_analyses(student, [(by_id[qid], recall) for qid, recall in units], 1, GREEDY, seed, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[ANALYZE])
    summaries = generate_summaries(student, [(by_id[qid], recall, runs[0]) for (qid, recall), runs in zip(units, analyses)],
                                   batch_size=batch_size)
    done = {unit: (runs[0], summary) for unit, runs, summary in zip(units, analyses, summaries)}
    traces = []
    for item in items:
        for sample, recall in enumerate(recalls[item.id]):
            run, (summary, answer) = done[(item.id, recall)]
            traces.append(Trace(id=item.id, sample=sample, recall=recall, analyses=run, summary=summary, answer=answer,
                                gold=item.gold, correct=answer is not None and answer == item.gold, seconds=0.0))
    return traces


def sample_analysis_traces(student, units, n: int, sampling, seed: int, *, batch_size: int = 64,
                           max_new_tokens: int | None = None) -> list:
    """For every (question, chosen recall): ``n`` sampled analysis runs (every option), each
    summarized greedily. One trace per (unit, run)."""
    from tinythinker.evaluate.engine import MAX_NEW_TOKENS, Trace, generate_analyses, generate_summaries

    runs = generate_analyses(student, list(units), n, sampling, seed, batch_size=batch_size,
                             max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[ANALYZE])
    flat = [(item, recall, run) for (item, recall), unit_runs in zip(units, runs) for run in unit_runs]
    summaries = generate_summaries(student, flat, batch_size=batch_size)
    return [Trace(id=item.id, sample=k % n, recall=recall, analyses=run, summary=summary, answer=answer, gold=item.gold,
                  correct=answer is not None and answer == item.gold, seconds=0.0)
            for k, ((item, recall, run), (summary, answer)) in enumerate(zip(flat, summaries))]


def _chunk_key(units) -> str:
    text = json.dumps([[u.id, None] if not isinstance(u, tuple) else [u[0].id, u[1]] for u in units], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sample_in_chunks(kind: str, units: Sequence, folder: Path, make: Callable[[Sequence, int], list], seed_of: Callable[[int], int],
                     *, accelerator, progress=None) -> list:
    """Run ``make(chunk, seed)`` on every chunk of ``units`` that has no file in ``folder`` yet (a
    chunk's file is named by its contents, so a changed unit list never reuses a stale file); chunks
    are shared out between processes. Returns every chunk's traces, in unit order."""
    from tinythinker.evaluate.engine import Trace

    chunks = [units[i : i + CHUNK] for i in range(0, len(units), CHUNK)]
    paths = [folder / f"{kind}-{c:05d}-{_chunk_key(chunk)}.jsonl" for c, chunk in enumerate(chunks)]
    task = progress.add_task(f"sampling {kind}", total=len(units)) if progress is not None else None
    for c, (chunk, path) in enumerate(zip(chunks, paths)):
        if c % accelerator.num_processes == accelerator.process_index and not path.exists():
            traces = make(chunk, seed_of(c))
            atomic_write_text(path, "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in traces))
        if task is not None:
            progress.advance(task, len(chunk))
    accelerator.wait_for_everyone()
    return [Trace.from_dict(json.loads(line)) for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line]


# --- the run -------------------------------------------------------------------------------------

class Reflection:
    """One self-reflection run in ``out`` (see the module docstring)."""

    def __init__(self, settings: ReflectSettings, out, *, overwrite: bool = False, progress: bool = True, console=None,
                 micro_batch_size: int | None = None, report_to: str | None = None):
        settings.check()
        self.settings, self.out = settings.resolved(), Path(out)
        self.progress_enabled, self.console = progress, console
        self.eval_batch_size, self.micro_batch_size = self.settings.eval_batch_size, micro_batch_size
        self.accelerator = make_accelerator(self.settings.bf16, report_to, self.out)
        self.is_main = self.accelerator.is_main_process
        # inputs first: a mistake in them must not leave a started run behind
        self.data_commit = self._data_commit(overwrite)
        self.data = ReflectData(self.settings, self.data_commit)
        self.start_student = self._load(self.settings.student)
        fresh = self._check_folder(overwrite)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            if fresh:
                if self.out.exists():
                    shutil.rmtree(self.out)
                self.out.mkdir(parents=True)
            # written on every start: the iteration count may grow; everything else must match it
            record = {**asdict(self.settings), "data_commit": self.data_commit}
            write_settings(self.out, record, method="dpo")
        self.accelerator.wait_for_everyone()
        self.state = self._read_state()

    def _data_commit(self, overwrite: bool) -> str | None:
        """The commit of a Hub data set this run reads: the one a run being continued pinned, else
        the one ``settings.revision`` (default main) points at now."""
        from tinythinker.hub import pin

        settings_file = self.out / SETTINGS_FILE
        if not overwrite and settings_file.exists():
            try:
                saved = json.loads(settings_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                saved = {}
            if saved.get("data") == self.settings.data and saved.get("revision") == self.settings.revision and saved.get("data_commit"):
                return str(saved["data_commit"])
        return pin(self.settings.data, self.settings.revision)

    def _check_folder(self, overwrite: bool) -> bool:
        """True to start fresh; refuses a folder that is another run's or not a run at all."""
        if overwrite or not self.out.exists() or not any(self.out.iterdir()):
            return True
        settings_file = self.out / SETTINGS_FILE
        if not settings_file.exists():
            raise TinyThinkerError(f"{self.out}: folder exists and is not a self-reflection run; choose another --out or pass --overwrite")
        saved = json.loads(settings_file.read_text(encoding="utf-8"))
        wanted = json.loads(json.dumps(asdict(self.settings)))
        if (key := first_change(saved, self.settings, ignore=("iterations",))) is not None:  # iterations may grow
            raise TinyThinkerError(f"{self.out} was run with {key}={saved.get(key)!r}, not {wanted[key]!r}; "
                                   "rerun with the same options to continue it, or pass --overwrite or another --out")
        return False

    def _read_state(self) -> dict:
        path = self.out / STATE_FILE
        if not path.exists():
            return {"iterations": {}, "baseline": None, "stopped": None}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise TinyThinkerError(f"{path}: state file is corrupt; pass --overwrite to start the run again") from None

    def _save_state(self, live_records: Sequence[dict] | None = None, live_iteration: int | None = None) -> None:
        """state.json, then metrics.jsonl rebuilt from it (plus the running iteration's log)."""
        if not self.is_main:
            return
        atomic_write_text(self.out / STATE_FILE, json.dumps(self.state, indent=1) + "\n")
        lines = []
        if self.state["baseline"]:
            lines.append({"kind": "eval", "iteration": 0, **self.state["baseline"]})
        for key in sorted(self.state["iterations"], key=int):
            entry = self.state["iterations"][key]
            lines += [{"iteration": entry["iteration"], **record} for record in entry.get("records", [])]
            if entry.get("summary"):
                lines.append({"kind": "iteration", **entry["summary"]})
        if live_records is not None:
            lines += [{"iteration": live_iteration, **record} for record in live_records]
        atomic_write_text(self.out / METRICS_FILE, "".join(json.dumps(line) + "\n" for line in lines))

    def _progress(self):
        from tinythinker.progress import progress_bar

        return progress_bar(console=self.console, enabled=self.progress_enabled and self.is_main)

    def _say(self, text: str) -> None:
        if self.is_main and self.console is not None:
            self.console.print(text)

    def _load(self, path):
        from tinythinker.students import Student

        return Student.load(path, device=self.accelerator.device, bf16=self.settings.bf16)

    # .. one iteration ..

    def _pairs(self, k: int, student_path: str, timings: dict) -> dict[str, PairSet]:
        """Steps 1-2: sampled traces (resumed chunk by chunk) -> pair sets of the trained stages."""
        from tinythinker.evaluate.engine import Sampling

        s, data = self.settings, self.data
        folder = self.out / f"iter{k}" / "samples"
        if self.is_main:
            folder.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        student = None

        def get_student():
            nonlocal student
            student = student or self._load(student_path)
            return student

        began = time.perf_counter()
        sampling = Sampling(do_sample=True, temperature=s.temperature, top_k=s.top_k)
        with self._progress() as bar:
            recall_traces = sample_in_chunks(
                "recall", data.items, folder,
                lambda chunk, seed: sample_recall_traces(get_student(), chunk, s.samples, sampling, seed, batch_size=self.eval_batch_size,
                                                         max_new_tokens=s.max_new_tokens),
                lambda c: derived_seed(s.seed, k, "sample", 0, c), accelerator=self.accelerator, progress=bar)
            recall_set = recall_pairs(recall_traces, data.questions, data.teacher_recalls, pair_rng(s.seed, k, RECALL))
            sets = {RECALL: recall_set}
            if ANALYZE in s.stages:
                units = [(data.questions[qid], recall) for qid, recall in chosen_recalls(recall_set)]
                analysis_traces = sample_in_chunks(
                    "analyze", units, folder,
                    lambda chunk, seed: sample_analysis_traces(get_student(), chunk, s.samples, sampling, seed,
                                                               batch_size=self.eval_batch_size, max_new_tokens=s.max_new_tokens),
                    lambda c: derived_seed(s.seed, k, "sample", 1, c), accelerator=self.accelerator, progress=bar)
                sets[ANALYZE] = analyze_pairs(analysis_traces, data.questions, data.teacher_analyses, pair_rng(s.seed, k, ANALYZE))
        timings.setdefault("sample", time.perf_counter() - began)
        return {stage: sets[stage] for stage in s.stages}

    def _reference(self, k: int, start: str, sets: dict[str, PairSet]):
        import torch

        cache = self.out / f"iter{k}" / "reference"
        student = self._load(start)
        fingerprint = model_fingerprint(student)
        out = {}
        with self._progress() as bar:
            for stage, pair_set in sets.items():
                if not pair_set.rows:
                    continue
                if self.is_main:  # one process scores; the others read its cache file
                    reference_logprobs(student, pair_set.rows, cache_dir=cache, batch_size=self.eval_batch_size,
                                       max_length=self.settings.max_length, model_fp=fingerprint, progress=bar,
                                       description=f"reference log-probs ({stage})")
                self.accelerator.wait_for_everyone()
                out[stage] = reference_logprobs(student, pair_set.rows, cache_dir=cache, max_length=self.settings.max_length,
                                                model_fp=fingerprint)
        del student
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return out

    def _card(self, k: int, start: str, sets: dict[str, PairSet]) -> Callable[[Path, DPORun], None]:
        from tinythinker import __version__
        from tinythinker.artifacts import write_card
        from tinythinker.cards import render_card

        s = self.settings

        def write(folder: Path, run: DPORun) -> None:
            c = run.counters
            hyperparameters = {
                "beta": s.beta, "NLL weight (on chosen)": s.nll_weight, "learning rate": s.lr,
                "batch size (all processes)": s.batch_size, "cycles": s.cycles, "max length": s.max_length,
                "warm-up ratio": run.settings.warmup_ratio, "lr schedule": "cosine", "optimizer": "AdamW",
                "max grad norm": run.settings.max_grad_norm, "precision": "bf16 autocast sampling (DPO and validation fp32)" if s.bf16 else "fp32",
                "samples per question / recall": s.samples, "sampling": f"temperature {s.temperature}, top-k {s.top_k or 'off'}",
                "processes": self.accelerator.num_processes, "seed": s.seed,
            }
            front = {"library_name": "transformers", "pipeline_tag": run.student.pipeline_tag,
                     "tags": ["tinythinker", "reasoning-distillation", "dpo", "self-reflection"],
                     "tinythinker": {"method": "dpo", "iteration": k, "start": start, "data": s.data, "config": s.config,
                                     "seed": s.seed, "steps": c.step, "validation_accuracy": c.best and c.best["accuracy"],
                                     "best_step": c.best and c.best["step"], "version": __version__}}
            if self.data_commit:  # a Hub data set: the commit read
                front["tinythinker"]["data_revision"] = self.data_commit
            body = render_card("reflection_model.md.j2", iteration=k, start=start, settings=asdict(s), data_commit=self.data_commit,
                               pairs={stage: len(p.rows) for stage, p in sets.items()},
                               preference_config=config_name(self.data.dataset, k), steps_done=c.step,
                               total_steps=run.schedule.total_steps, cycle=" + ".join(f"{stage} {n:,}" for stage, n in run.schedule.lengths.items()) + " steps per cycle",
                               best=c.best, curve=c.curve, eval_questions=len(run.items), hyperparameters=hyperparameters,
                               version=__version__)
            write_card(folder, front, body)

        return write

    def _iteration(self, k: int, start: str) -> str | None:
        """Run iteration k from ``start``; returns its best checkpoint (None: no pairs, loop ends)."""
        s, acc = self.settings, self.accelerator
        key = str(k)
        entry = self.state["iterations"].setdefault(key, {"iteration": k, "start": start, "steps": {}, "seconds": {}})
        steps, timings = entry["steps"], entry["seconds"]
        sets = self._pairs(k, start, timings)
        counts = {stage: p.counts for stage, p in sets.items()}
        sizes = {stage: len(p.rows) for stage, p in sets.items()}
        if "sample" not in steps:
            steps["sample"] = {"counts": counts}
            self._save_state()
        if "pairs" not in steps:
            began = time.perf_counter()
            info = {"student": start, "samples": s.samples, "seed": s.seed, "data": s.data, "config": s.config,
                    "sampling": {"do_sample": True, "temperature": s.temperature, "top_k": s.top_k}}
            if self.data_commit:
                info["data_revision"] = self.data_commit
            written = None
            if self.is_main:
                written = write_preference_config(self.out / PREFERENCES, dataset=self.data.dataset, iteration=k,
                                                  pair_sets=list(sets.values()), info=info)
            acc.wait_for_everyone()
            steps["pairs"] = {"config": written, "pairs": sizes}
            timings["pairs"] = time.perf_counter() - began
            self._save_state()
        self._say(f"iteration {k}: " + ", ".join(f"{stage} {n:,} pairs" for stage, n in sizes.items()))
        if not any(sizes.values()):
            entry["summary"] = {"iteration": k, "start": start, "pairs": sizes, "counts": counts, "stopped": "no preference pairs"}
            self.state["stopped"] = f"iteration {k} made no preference pairs (the student never got a sampled question wrong, or never right)"
            self._save_state()
            return None

        began = time.perf_counter()
        ref = self._reference(k, start, sets)
        if "reference" not in steps:
            steps["reference"] = {"pairs": sizes}
            timings["reference"] = time.perf_counter() - began
            self._save_state()

        if "dpo" not in steps:
            began = time.perf_counter()
            run = DPORun(start, {stage: p.rows for stage, p in sets.items()}, ref, dpo_settings(s, k, self.data.variant),
                         self.out / f"iter{k}", items=self.data.validation, micro_batch_size=self.micro_batch_size,
                         eval_batch_size=self.eval_batch_size, label=f"iteration {k} DPO", progress=self.progress_enabled,
                         console=self.console, write_card=self._card(k, start, sets),
                         on_checkpoint=lambda records: self._save_state(records, k), tracker=acc,
                         tracker_offset=self._tracker_offset(k))
            run.setup()
            result = run.train()
            steps["dpo"] = {"steps": result.steps, "best_step": result.best_step, "best_accuracy": result.best_accuracy}
            entry["records"] = result.records
            entry["curve"] = result.curve
            timings["dpo"] = timings.get("dpo", 0.0) + time.perf_counter() - began
            self._save_state()

        best = self.out / f"iter{k}" / BEST
        # OUT/best is the best student of every iteration so far, the starting one (iteration 0)
        # included: an iteration that lowers validation accuracy does not become the final student
        chosen, accuracy = self.state.get("chosen"), steps["dpo"]["best_accuracy"]
        better = chosen is None or accuracy is None or chosen["accuracy"] is None or accuracy > chosen["accuracy"]
        if self.is_main:
            if better:
                with staged_folder(self.out / BEST, overwrite=True) as tmp:
                    shutil.copytree(best, tmp, dirs_exist_ok=True)
            # the finished iteration needs no resume point, and its DPO log is in state.json and OUT/metrics.jsonl
            # (an iter<k> with a metrics.jsonl would pass for a run folder of its own)
            shutil.rmtree(self.out / f"iter{k}" / LAST, ignore_errors=True)
            (self.out / f"iter{k}" / METRICS_FILE).unlink(missing_ok=True)
        if better:
            self.state["chosen"] = {"iteration": k, "accuracy": accuracy, "student": str(best)}
        acc.wait_for_everyone()
        steps["next"] = {"best": str(best)}
        entry["summary"] = {"iteration": k, "start": start, "pairs": sizes, "counts": counts,
                            "best_accuracy": steps["dpo"]["best_accuracy"], "best_step": steps["dpo"]["best_step"],
                            "steps": steps["dpo"]["steps"], "seconds": {**timings, "total": sum(timings.values())}}
        entry["done"] = True
        self._save_state()
        return str(best)

    # .. the loop ..

    def run(self) -> ReflectResult:
        s = self.settings
        self._say(f"self-reflection {s.config}: {s.iterations} iteration(s), {len(self.data.items):,} training questions x "
                  f"{s.samples} samples, stages {', '.join(s.stages)}, {len(self.data.validation):,} validation questions; "
                  f"{self.accelerator.num_processes} process(es) on {self.accelerator.device}")
        if self.data.validation and self.state["baseline"] is None:
            accuracy = validate(self.accelerator, self.start_student, self.data.validation, variant=self.data.variant,
                                batch_size=self.eval_batch_size, seed=s.seed, max_new_tokens=s.max_new_tokens)
            self.state["baseline"] = {"student": s.student, **accuracy}
            self.state["chosen"] = {"iteration": 0, "accuracy": self.state["baseline"]["accuracy"], "student": s.student}
            self._save_state()
            self.accelerator.log(scalars({"kind": "eval", **self.state["baseline"]}), step=0)
            self._say(f"starting student: validation accuracy {self.state['baseline']['accuracy']:.4f}")
        self.start_student = None  # each step loads the checkpoint it needs
        start = s.student
        for k in range(1, s.iterations + 1):
            if self.state["stopped"]:
                break
            entry = self.state["iterations"].get(str(k))
            if entry and entry.get("done"):
                start = entry["steps"]["next"]["best"]
                continue
            best = self._iteration(k, start)
            if best is None:
                break
            summary = self.state["iterations"][str(k)]["summary"]
            accuracy = summary["best_accuracy"]
            self._say(f"iteration {k}: best validation accuracy "
                      f"{'n/a' if accuracy is None else f'{accuracy:.4f}'} at step {summary['best_step']}")
            start = best
        if self.is_main and not (self.out / BEST).exists():  # no iteration trained or none improved: the starting student
            with staged_folder(self.out / BEST, overwrite=True) as tmp:
                self._load(s.student).save(tmp)
        self.accelerator.wait_for_everyone()
        return self.result()

    def _tracker_offset(self, k: int) -> int:
        """The tracker step before iteration k's first: the DPO steps of the iterations before it."""
        return sum(entry["steps"]["dpo"]["steps"] for key, entry in self.state["iterations"].items()
                   if int(key) < k and "dpo" in entry["steps"])

    def result(self) -> ReflectResult:
        done = [self.state["iterations"][k]["summary"] for k in sorted(self.state["iterations"], key=int)
                if self.state["iterations"][k].get("summary")]
        return ReflectResult(out=self.out, best=self.out / BEST, iterations=done, baseline=self.state["baseline"],
                             stopped=self.state["stopped"], chosen=self.state.get("chosen"))


def reflect(settings: ReflectSettings, out, *, overwrite: bool = False, progress: bool = True, console=None,
            micro_batch_size: int | None = None, report_to: str | None = None) -> ReflectResult:
    """Run (or continue, or return the finished result of) the self-reflection run in ``out``.

    ``micro_batch_size`` cuts each process's share of a DPO batch for memory (same result);
    ``report_to`` a tracker that gets the metrics lines too (see :mod:`tinythinker.train.tracking`): the
    DPO iterations one after another on one step axis, the starting student's accuracy at step 0."""
    run = Reflection(settings, out, overwrite=overwrite, progress=progress, console=console, micro_batch_size=micro_batch_size,
                     report_to=report_to)
    with tracking(run.accelerator, run.out, {**asdict(run.settings), "micro_batch_size": micro_batch_size}):
        return run.run()

