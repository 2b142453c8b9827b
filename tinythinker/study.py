"""The claims replayed on one world: rows, seeds, sizes, intervals (`tinythinker study`).

One generated world (:mod:`tinythinker.data.world`) is built once. For every seed and every
training-set size (fractions of the training questions, fixed before any row runs; the questions of a
size are a seeded draw of question ids, nested across sizes and the same for every row), each row
trains a fresh student from the same random initialisation with the same cap on optimizer steps and
the same validation cadence, keeping the checkpoint with the best validation accuracy decoded with
the row's own inference (:func:`tinythinker.train.sft.train_sft`). Self-reflection
(:func:`tinythinker.train.reflect.reflect`) runs from each ``full`` student; every student is scored
by lm-eval on the world's test split (:mod:`tinythinker.evaluate.harness`).

``OUT/study.json`` holds the settings (a rerun with others is refused); every row of every size and
seed has a folder ``OUT/runs/seed<S>/q<N>/<row>/`` whose ``row.json`` marks it finished, so a rerun skips
it (an SFT or reflection run stopped midway resumes itself). ``OUT/claims.json``, ``claims.md`` and
``claims.png`` are written from the finished rows at the end of every run.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tinythinker.artifacts import atomic_write_text, interrupts_deferred, staged_folder
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import config_name
from tinythinker.train.settings import first_change

SFT_ROWS = ("full", "no_recall", "no_analyze", "summarize_only", "cot", "dsbs")  # row name = variant
SCALED_ROWS = ("full", "cot")  # trained again with the larger student (rows full@4x, cot@4x)
SCALED = "4x"
# about 4x the tiny student's parameters (d_model 64, 2 layers, d_ff 128: 0.22 M with the world's 832-token
# vocabulary; this shape: 0.89 M): width doubled, feed-forward 3x the width
SCALED_SHAPE = dict(d_model=128, layers=2, heads=4, d_ff=384)
REFLECT_ROW = "reflect-{k}"  # the student after k self-reflection iterations from the full student
SETTINGS_FILE, ROW_FILE = "study.json", "row.json"
CLAIMS_JSON, CLAIMS_MD, CLAIMS_PNG = "claims.json", "claims.md", "claims.png"
BOOTSTRAP_SAMPLES = 10_000


@dataclass(frozen=True)
class StudySettings:
    """What a study is (the defaults: docs/claims.md explains the time arithmetic behind them)."""

    dataset: str = "csqa"
    seed: int = 42  # the world's seed and the first training seed
    seeds: int = 3  # training seeds seed, seed+1, ...
    questions: int = 240  # the world's (entity, relation) pairs: csqa 360 training, 30 validation, 90 test questions
    sizes: tuple[str, ...] = ("1/8", "1/4", "1")  # shares of the training questions
    max_steps: int = 2000  # the same cap on optimizer steps for every row, far above where any row stopped rising
    eval_every: int = 50  # validation cadence in steps, the same for every row
    patience: int = 6  # a row ends after this many validations without a new best: its accuracy stopped rising
    warmup_ratio: float = 0.03  # of the cap: 60 steps of linear warm-up, then cosine over the cap
    batch_size: int = 32
    lr: float = 3e-3
    eval_limit: int | None = None  # validation questions (None: all)
    reflect_iterations: int = 3
    reflect_samples: int = 4
    reflect_cycles: int = 2
    reflect_lr: float = 5e-5
    reflect_batch_size: int = 16
    reflect_train_limit: int | None = 60
    scaled: bool = False  # also the full@4x and cot@4x rows (a larger student)
    max_new_tokens: int | None = None  # recall/analyze cap of validation, sampling and scoring (None: the engine's)

    def check(self) -> "StudySettings":
        from tinythinker.data.sources import get_spec

        get_spec(self.dataset)
        if self.seeds < 1:
            raise TinyThinkerError(f"--seeds {self.seeds}: run at least 1 seed")
        for name in ("max_steps", "eval_every", "batch_size", "patience", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TinyThinkerError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.reflect_iterations < 0:
            raise TinyThinkerError(f"--reflect-iterations must be 0 or more, got {self.reflect_iterations}")
        fractions = [parse_size(text) for text in self.sizes]
        if not fractions or len(set(fractions)) != len(fractions):
            raise TinyThinkerError(f"--sizes {','.join(self.sizes)}: give distinct shares of the training questions")
        return replace(self, sizes=tuple(str(f) for f in sorted(fractions)))

    def rows(self) -> list["Row"]:
        rows = [Row(variant) for variant in SFT_ROWS]
        return rows + ([Row(variant, SCALED) for variant in SCALED_ROWS] if self.scaled else [])

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


def parse_size(text: str) -> Fraction:
    """A share of the training questions: ``1/8``, ``0.25`` or ``1`` (in (0, 1])."""
    try:
        value = Fraction(str(text).strip()).limit_denominator(1000)
    except (ValueError, ZeroDivisionError):
        raise TinyThinkerError(f"--sizes: {text!r} is not a share of the training questions (e.g. 1/8, 0.25, 1)") from None
    if not 0 < value <= 1:
        raise TinyThinkerError(f"--sizes: {text} is outside (0, 1]; give shares of the training questions such as 1/8,1/4,1")
    return value


@dataclass(frozen=True)
class Row:
    """One trained student kind: a variant, with the tiny student or the scaled one."""

    variant: str
    shape: str = "tiny"

    @property
    def name(self) -> str:
        return self.variant if self.shape == "tiny" else f"{self.variant}@{self.shape}"


@dataclass
class Unit:
    """One thing to do for a seed and size: an SFT row, or the reflection from its full student."""

    kind: str  # "sft" or "reflect"
    seed: int
    size: str  # the share, e.g. "1/8"
    questions: int  # training questions at that share
    row: Row | None = None

    def describe(self) -> str:
        what = self.row.name if self.row else "self-reflection"
        return f"seed {self.seed} · {self.questions} questions · {what}"


@dataclass
class Study:
    """Where a study's artifacts live (one folder; see the module docstring)."""

    out: Path
    settings: StudySettings
    train_ids: list[str] = field(default_factory=list)  # the training question ids of the whole world, sorted

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def data(self) -> Path:
        return self.out / "data" / "all"

    def count(self, size: str) -> int:
        """Training questions at a share (at least one)."""
        return max(1, round(parse_size(size) * len(self.train_ids)))

    def subset(self, seed: int, size: str) -> Path:
        return self.data if parse_size(size) == 1 else self.out / "data" / f"seed{seed}-q{self.count(size)}"

    def student(self, seed: int, shape: str) -> Path:
        return self.out / "students" / f"seed{seed}-{shape}"

    def folder(self, unit: Unit) -> Path:
        name = unit.row.name if unit.row else "reflect"
        return self.out / "runs" / f"seed{unit.seed}" / f"q{unit.questions}" / name

    def units(self) -> list[Unit]:
        """Seed by seed (a stopped study has whole seeds done first), size by size, every row, then reflection."""
        s = self.settings
        units = []
        for seed in s.seed_list():
            for size in s.sizes:
                units += [Unit("sft", seed, size, self.count(size), row) for row in s.rows()]
                if s.reflect_iterations:
                    units.append(Unit("reflect", seed, size, self.count(size)))
        return units


# --- the world, its data set, the subsets and the students -----------------------------------------

EVAL_SPLITS = ("validation", "test")


def open_study(out: Path, settings: StudySettings) -> Study:
    """``out`` as this study's folder: a new one, or one started with the same settings (else a one-line error)."""
    settings = settings.check()
    record = {**asdict(settings), "sizes": list(settings.sizes)}
    path = out / SETTINGS_FILE
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if (changed := first_change(saved, settings)) is not None:
            raise TinyThinkerError(f"{out} is a study with {changed}={saved.get(changed)!r}, not {record[changed]!r}; "
                                   "rerun with the same settings to continue it, or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise TinyThinkerError(f"{out}: folder exists and is not a study (no {SETTINGS_FILE}); choose another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return Study(out, settings)


def prepare(study: Study) -> None:
    """The world and its data set (each written once, all or nothing), and the training question ids."""
    from tinythinker.data.build import build_dataset
    from tinythinker.data.world import write_world

    s = study.settings
    if not study.world.exists():
        write_world(s.dataset, study.world, seed=s.seed, questions=s.questions)
    if not study.data.exists():
        build_dataset(s.dataset, study.world / "raw", [study.world / "teacher.jsonl"], study.data, seed=s.seed)
    study.train_ids = training_ids(study.data)


def training_ids(data: Path) -> list[str]:
    """The ids of the questions in any training split of any config, sorted."""
    import pyarrow.parquet as pq

    from tinythinker.artifacts import card_data_files

    ids: set[str] = set()
    for splits in card_data_files(data).values():
        for split, path in splits.items():
            if split not in EVAL_SPLITS:
                ids.update(pq.read_table(data / path, columns=["id"]).column("id").to_pylist())
    return sorted(ids)


def drawn_ids(ids: Sequence[str], seed: int, count: int) -> list[str]:
    """The first ``count`` of one seeded permutation of ``ids``: the same questions for every row, and
    nested (a smaller size's questions are among a larger one's)."""
    order = np.random.default_rng([seed, 20]).permutation(len(ids))
    return sorted(ids[i] for i in order[:count])


def write_subset(data: Path, out: Path, keep: Sequence[str], *, seed: int) -> Path:
    """A copy of the data set folder ``data`` whose training splits (every config's) hold only the
    questions ``keep``; validation and test as they are. Written once, all or nothing."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tinythinker.artifacts import card_data_files, configs_metadata, place_split, read_card_metadata, write_card

    if out.exists():
        return out
    files, metadata = card_data_files(data), read_card_metadata(data)
    default = next((c["config_name"] for c in metadata.get("configs", []) if c.get("default")), None)
    wanted = pa.array(sorted(keep))
    with staged_folder(out) as folder:
        for config, splits in files.items():
            for split, path in splits.items():
                table = pq.read_table(data / path)
                if split not in EVAL_SPLITS:
                    table = table.filter(pc.is_in(table["id"], value_set=wanted))
                tmp = folder / f".{config}-{split}.parquet"
                with interrupts_deferred():
                    pq.write_table(table, tmp, compression="zstd", write_statistics=False)
                place_split(tmp, folder, config, split)
        info = {**metadata.get("tinythinker", {}), "training_subset": {"questions": len(keep), "of": str(data), "seed": seed}}
        front = {**metadata, **configs_metadata(folder, {c: list(s) for c, s in files.items()}, default), "tinythinker": info}
        write_card(folder, front, f"# Training subset\n\n{len(keep)} training questions of `{data}` (a seeded draw of question "
                                  f"ids, seed {seed}; every config keeps all records of them). Validation and test are unchanged.\n")
    return out


def make_student(study: Study, seed: int, shape: str) -> Path:
    """The randomly initialised student of a seed (tokenizer from the whole data set's texts), written once."""
    from tinythinker.data.splits import tokenizer_texts
    from tinythinker.students import make_tiny_student

    folder = study.student(seed, shape)
    if not folder.exists():
        with staged_folder(folder) as tmp:
            make_tiny_student("seq2seq", tokenizer_texts(str(study.data)), tmp, seed=seed, **(SCALED_SHAPE if shape == SCALED else {}))
    return folder


def parameters(checkpoint: Path) -> int:
    """Parameters of a checkpoint, read from its safetensors header (nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


# --- running a unit ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _logged(path: Path):
    """A rich console writing to ``path`` and stdout/stderr redirected there too (lm-eval's tables and
    bars, library warnings): the study's own bar stays the only thing on the terminal."""
    from rich.console import Console

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        yield Console(file=handle, soft_wrap=True, width=130)


@contextlib.contextmanager
def _timed(folder: Path):
    """Wall seconds a unit took, over every session that worked on it (an interrupted one adds its time)."""
    file = folder / "seconds.json"
    before = json.loads(file.read_text(encoding="utf-8"))["seconds"] if file.exists() else 0.0
    clock, began = {"seconds": before}, time.perf_counter()
    try:
        yield clock
    finally:
        clock["seconds"] = round(before + time.perf_counter() - began, 2)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(file, json.dumps(clock) + "\n")


def evaluate(student: Path, data: Path, config: str, out: Path, log: Path, max_new_tokens: int | None = None) -> dict:
    """lm-eval's pipeline task of ``config`` on the test split (its results and samples files in ``out``;
    lm-eval's request cache makes a rerun resume); -> accuracy and the files it came from."""
    from tinythinker.evaluate.harness import lm_eval_argv, run_lm_eval
    from tinythinker.evaluate.report import load_results
    from tinythinker.protocol import config_parts

    task = f"tinythinker_{config_parts(config)[0]}"
    found = [r for r in load_results(out) if r.task == task] if out.exists() else []
    if not found:
        argv = lm_eval_argv(["--tasks", task, "--verbosity", "ERROR"], student=str(student), data=str(data), config=config,
                            split="test", output_path=str(out), progress=False, max_new_tokens=max_new_tokens)
        with _logged(log):
            run_lm_eval(argv)
        found = [r for r in load_results(out) if r.task == task]
    result = found[-1]
    results_file = Path(result.source)
    samples = results_file.parent / f"samples_{task}_{results_file.stem.removeprefix('results_')}.jsonl"
    return {"accuracy": result.metrics["acc"], "test_questions": result.questions, "results_file": str(results_file),
            "samples_file": str(samples)}


def _relative(study: Study, path) -> str:
    """Paths in claims.json are relative to the study folder (it can be moved or shared)."""
    path = Path(path)
    return path.relative_to(study.out).as_posix() if path.is_relative_to(study.out) else str(path)


def _base_record(study: Study, unit: Unit, row: str) -> dict:
    return {"row": row, "seed": unit.seed, "size": unit.size, "questions": unit.questions, "max_steps": study.settings.max_steps}


def run_sft_row(study: Study, unit: Unit) -> list[dict]:
    """Train one row to the step cap (best checkpoint by its own validation accuracy) and score it on test."""
    from tinythinker.train.settings import SFTSettings
    from tinythinker.train.sft import train_sft

    s, row, folder = study.settings, unit.row, study.folder(unit)
    data, config = study.subset(unit.seed, unit.size), config_name(s.dataset, unit.row.variant)
    with _logged(folder / "train.log"):
        student = make_student(study, unit.seed, row.shape)
    settings = SFTSettings(data=str(data), config=config, student=str(student), schedule="mixed", lr=s.lr, batch_size=s.batch_size,
                           max_steps=s.max_steps, eval_every=s.eval_every, patience=s.patience, warmup_ratio=s.warmup_ratio,
                           eval_limit=s.eval_limit, seed=unit.seed, max_new_tokens=s.max_new_tokens)
    with _timed(folder) as clock:
        with _logged(folder / "train.log") as console:
            result = train_sft(settings, folder / "sft", progress=False, console=console)
        scored = evaluate(result.best, data, config, folder / "eval", folder / "eval.log", s.max_new_tokens)
    train_rows = [r for r in result.records if r.get("kind") == "train"]
    curve = [[point["step"], point["accuracy"]] for point in result.curve]
    return [{**_base_record(study, unit, row.name), "variant": row.variant, "student": row.shape, "parameters": parameters(student),
             **scored, "results_file": _relative(study, scored["results_file"]), "samples_file": _relative(study, scored["samples_file"]),
             "steps": result.steps, "stopped_early": result.stopped_early, "target_tokens": sum(r.get("target_tokens", 0) for r in train_rows), "best_step": result.best_step,
             "best_validation_accuracy": result.best_accuracy, "validation_curve": curve, "wall_seconds": clock["seconds"]}]


def run_reflection(study: Study, unit: Unit) -> list[dict]:
    """Self-reflection iterations from the unit's full student; each iteration's best student scored on test."""
    from tinythinker.train.reflect import reflect
    from tinythinker.train.settings import ReflectSettings

    s, folder = study.settings, study.folder(unit)
    data, config = study.subset(unit.seed, unit.size), config_name(s.dataset, "full")
    start = study.folder(Unit("sft", unit.seed, unit.size, unit.questions, Row("full"))) / "sft" / "best"
    settings = ReflectSettings(student=str(start), data=str(data), config=config, iterations=s.reflect_iterations,
                               samples=s.reflect_samples, cycles=s.reflect_cycles, lr=s.reflect_lr, batch_size=s.reflect_batch_size,
                               eval_limit=s.eval_limit, train_limit=s.reflect_train_limit, seed=unit.seed,
                               max_new_tokens=s.max_new_tokens)
    records = []
    with _timed(folder) as clock:
        with _logged(folder / "reflect.log") as console:
            result = reflect(settings, folder / "run", progress=False, console=console)
        for summary in result.iterations:
            k = summary["iteration"]
            if summary.get("best_step") is None and summary.get("stopped"):
                continue  # no preference pairs: no student for this iteration
            began = time.perf_counter()
            scored = evaluate(folder / "run" / f"iter{k}" / "best", data, config, folder / f"eval-iter{k}", folder / "eval.log",
                              s.max_new_tokens)
            records.append({**_base_record(study, unit, REFLECT_ROW.format(k=k)), "variant": "full", "student": "tiny",
                            "parameters": parameters(start), **scored, "results_file": _relative(study, scored["results_file"]),
                            "samples_file": _relative(study, scored["samples_file"]), "steps": summary["steps"],
                            "target_tokens": None, "pairs": summary["pairs"], "best_step": summary["best_step"],
                            "best_validation_accuracy": summary["best_accuracy"],
                            "wall_seconds": round(summary["seconds"]["total"] + time.perf_counter() - began, 2)})
    if result.stopped:
        records.append({**_base_record(study, unit, "reflect"), "stopped": result.stopped, "wall_seconds": clock["seconds"]})
    return records


def run_unit(study: Study, unit: Unit) -> list[dict]:
    """A unit's records: read from its finished marker, or made now (then the marker is written)."""
    marker = study.folder(unit) / ROW_FILE
    if marker.exists():
        return json.loads(marker.read_text(encoding="utf-8"))["records"]
    if unit.questions < len(study.train_ids):
        keep = drawn_ids(study.train_ids, unit.seed, unit.questions)
        write_subset(study.data, study.subset(unit.seed, unit.size), keep, seed=unit.seed)
    records = run_sft_row(study, unit) if unit.kind == "sft" else run_reflection(study, unit)
    atomic_write_text(marker, json.dumps({"records": records}, indent=2) + "\n")
    return records


# --- intervals -------------------------------------------------------------------------------------------

def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean of ``values`` (at least two)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        raise ValueError("a t interval needs at least two values")
    half = stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def bootstrap_interval(values: Sequence[float], *, seed: int, samples: int = BOOTSTRAP_SAMPLES,
                       confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean of ``values`` (e.g. per-question outcomes), seeded."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("a bootstrap needs at least one value")
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_bootstrap(first: dict[str, bool], second: dict[str, bool], *, seed: int, samples: int = BOOTSTRAP_SAMPLES,
                     confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of ``first`` − ``second`` accuracy, resampling questions paired by id (the ids both answered)."""
    ids = sorted(set(first) & set(second))
    if not ids:
        raise ValueError("no question id is in both outcome sets")
    return bootstrap_interval([float(first[i]) - float(second[i]) for i in ids], seed=seed, samples=samples, confidence=confidence)


# --- claims: cells, differences, views --------------------------------------------------------------------

def _outcomes(study: Study, record: dict) -> dict[str, bool]:
    from tinythinker.evaluate.report import per_question

    return per_question(study.out / record["samples_file"])


def cell(study: Study, records: list[dict]) -> dict:
    """Mean test accuracy of one row and size over seeds, with its 95% interval."""
    accuracies = [r["accuracy"] for r in records]
    if len(records) >= 2:
        mean, low, high = t_interval(accuracies)
        method = f"t interval over {len(records)} seeds"
    else:
        outcomes = _outcomes(study, records[0])
        mean, low, high = bootstrap_interval([float(v) for v in outcomes.values()], seed=study.settings.seed)
        method = f"bootstrap over {len(outcomes)} test questions"
    return {"mean": mean, "low": low, "high": high, "seeds": len(records), "method": method}


def difference(study: Study, full: list[dict], other: list[dict]) -> dict | None:
    """``full`` − X at one size: paired by seed (t interval) with two or more seeds in both, else a
    bootstrap over test questions paired by question id (the first seed both have)."""
    by_seed = {r["seed"]: r for r in other}
    pairs = [(r, by_seed[r["seed"]]) for r in full if r["seed"] in by_seed]
    if not pairs:
        return None
    if len(pairs) >= 2:
        mean, low, high = t_interval([a["accuracy"] - b["accuracy"] for a, b in pairs])
        method = f"t interval over {len(pairs)} seeds, paired by seed"
    else:
        a, b = pairs[0]
        mean, low, high = paired_bootstrap(_outcomes(study, a), _outcomes(study, b), seed=study.settings.seed)
        method = "bootstrap over test questions, paired by question id"
    return {"mean": mean, "low": low, "high": high, "seeds": len(pairs), "method": method}


def row_order(settings: StudySettings) -> list[str]:
    return [r.name for r in settings.rows()] + [REFLECT_ROW.format(k=k) for k in range(1, settings.reflect_iterations + 1)]


def claims(study: Study, records: list[dict]) -> dict:
    """Everything claims.json holds: the settings, every record, and the cells and differences made from them."""
    scored = [r for r in records if r.get("accuracy") is not None]
    grouped: dict[tuple[str, str], list[dict]] = {}
    for record in scored:
        grouped.setdefault((record["row"], record["size"]), []).append(record)
    cells, differences = [], []
    for size in study.settings.sizes:
        for row in row_order(study.settings):
            group = grouped.get((row, size))
            if not group:
                continue
            cells.append({"row": row, "size": size, "questions": group[0]["questions"], **cell(study, group)})
            if row != "full" and grouped.get(("full", size)):
                if (diff := difference(study, grouped[("full", size)], group)) is not None:
                    differences.append({"row": row, "size": size, "questions": group[0]["questions"], **diff})
    return {"settings": {**asdict(study.settings), "sizes": list(study.settings.sizes)}, "confidence": 0.95,
            "training_questions": len(study.train_ids), "cells": cells, "differences": differences, "records": records,
            "stopped": [r for r in records if r.get("stopped")]}


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _interval(entry: dict | None, sign: bool = False) -> str:
    if entry is None:
        return "–"
    mean = f"{100 * entry['mean']:+.1f}" if sign else _pct(entry["mean"])
    return f"{mean} [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def stopped_rising(record: dict) -> bool | None:
    """Whether validation accuracy had stopped rising before the cap: the run ended by the patience rule
    (records without it, older ones: the best point is not the last one)."""
    if record.get("best_step") is None or record.get("steps") is None:
        return None
    if "stopped_early" in record:
        return record["stopped_early"]
    return record["best_step"] < record["steps"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(row) + " |" for row in rows]]


def render_markdown(result: dict, command: str = "") -> str:
    """claims.md: the accuracy table, the paired differences, and every run's steps, tokens and best step."""
    s, sizes = result["settings"], result["settings"]["sizes"]
    questions = {c["size"]: c["questions"] for c in result["cells"]}
    heads = [f"{questions.get(size, '?')} questions ({size})" for size in sizes]
    rows = list(dict.fromkeys(c["row"] for c in result["cells"]))
    cells = {(c["row"], c["size"]): c for c in result["cells"]}
    diffs = {(d["row"], d["size"]): d for d in result["differences"]}
    methods = {name: ", ".join(sorted({e["method"] for e in result[name]})) or "none" for name in ("cells", "differences")}
    lines = [f"# Claims replayed on one world ({s['dataset']}, {result['training_questions']} training questions)", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Seeds {s['seed']}..{s['seed'] + s['seeds'] - 1} ({s['seeds']}); world of {s['questions']} (entity, relation) pairs; "
              f"every row capped at {s['max_steps']} optimizer steps (batch {s['batch_size']}, lr {s['lr']}), validated every "
              f"{s['eval_every']} steps and ended once {s.get('patience') or '–'} validations in a row brought no new best; the "
              "checkpoint with the best validation accuracy kept; test accuracy by lm-eval.", "",
              f"Intervals are 95%. Accuracies: {methods['cells']}. Differences: {methods['differences']}. (A bootstrap is "
              f"{BOOTSTRAP_SAMPLES:,} percentile resamples of the test questions, seeded with the study's seed.)", "",
              "## Test accuracy, percent (mean [95% interval])", ""]
    cut = [f"{r['row']} ({r['questions']} questions, seed {r['seed']})" for r in result["records"]
           if "validation_curve" in r and stopped_rising(r) is False]
    if cut:  # the convergence rule (docs/claims.md): these rows were still rising at the cap
        lines[-2:-2] = [f"**Not converged at the cap** (validation still rising when the cap came): {', '.join(cut)}. Compare these rows "
                        "only after a rerun with a higher --max-steps (in a new folder).", ""]
    lines += _table(["row", *heads], [[row, *[_interval(cells.get((row, size))) for size in sizes]] for row in rows])
    lines += ["", "## full − X, percentage points (mean [95% interval]; positive: full is better)", ""]
    lines += _table(["X", *heads], [[row, *[_interval(diffs.get((row, size)), sign=True) for size in sizes]]
                                    for row in rows if row != "full"])
    lines += ["", "## Every run: steps, target tokens seen, best step", "",
              "`stopped rising`: the row ended by the patience rule, before the cap, so the cap did not cut it short.", ""]
    runs = [[r["row"], str(r["questions"]), str(r["seed"]), str(r["steps"]), "–" if r.get("target_tokens") is None else f"{r['target_tokens']:,}",
             str(r["best_step"]), _pct(r.get("best_validation_accuracy")), _pct(r["accuracy"]),
             {True: "yes", False: "**no**", None: "–"}[stopped_rising(r) if "validation_curve" in r else None],
             f"{r['wall_seconds']:.0f}"] for r in result["records"] if r.get("accuracy") is not None]
    lines += _table(["row", "questions", "seed", "steps", "target tokens", "best step", "best validation", "test", "stopped rising",
                     "wall s"], runs)
    for stop in result["stopped"]:
        lines.append(f"\nself-reflection, seed {stop['seed']}, {stop['questions']} questions: {stop['stopped']}")
    return "\n".join(lines) + "\n"


def render_png(result: dict, path: Path) -> Path:
    """Learning curves (test accuracy over training-set size, intervals as bands) and full − X per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinythinker.evaluate.report import save_figure

    fig, (curves, gaps) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = list(dict.fromkeys(c["row"] for c in result["cells"]))
    colours = {row: plt.get_cmap("tab10")(i % 10) for i, row in enumerate(rows)}  # one colour per row in both panels
    sizes = sorted({c["questions"] for c in result["cells"]})
    for axis, entries, title in ((curves, result["cells"], "test accuracy"), (gaps, result["differences"], "full − X")):
        for row in dict.fromkeys(e["row"] for e in entries):
            points = sorted((e["questions"], e["mean"], e["low"], e["high"]) for e in entries if e["row"] == row)
            x, mean, low, high = (np.array(v, dtype=float) for v in zip(*points))
            axis.plot(x, mean, marker="o", label=row, color=colours[row])
            axis.fill_between(x, low, high, alpha=0.12, color=colours[row])
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(n) for n in sizes])
        axis.minorticks_off()
        axis.set_xlabel("training questions")
        axis.set_title(f"{title} (95% intervals)")
        axis.grid(alpha=0.3)
    gaps.axhline(0, color="grey", linewidth=1)
    curves.set_ylabel("accuracy")
    curves.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, plt)


def write_claims(study: Study, records: list[dict], command: str = "") -> dict:
    result = claims(study, records)
    atomic_write_text(study.out / CLAIMS_JSON, json.dumps(result, indent=2) + "\n")
    atomic_write_text(study.out / CLAIMS_MD, render_markdown(result, command))
    if result["cells"]:
        render_png(result, study.out / CLAIMS_PNG)
    return result


# --- the whole study --------------------------------------------------------------------------------------

def run_study(out: str | Path, settings: StudySettings, *, progress: bool = True, console=None, command: str = "",
              on_unit: Callable[[Unit, list[dict]], None] | None = None) -> dict:
    """Run (or continue) the study in ``out``; -> what claims.json holds. ``on_unit`` hears of every finished unit."""
    from rich.console import Console

    from tinythinker.progress import progress_bar

    console = console or Console(stderr=True)
    study = open_study(Path(out), settings)
    with _logged(study.out / "prepare.log"):
        prepare(study)
    units = study.units()
    records: list[dict] = []
    with progress_bar(console=console, enabled=progress) as bar:
        task = bar.add_task("study", total=len(units))
        for unit in units:
            bar.update(task, description=unit.describe())
            done = unit_done(study, unit)
            found = run_unit(study, unit)
            records += found
            if on_unit:
                on_unit(unit, found)
            if not done:
                bar.console.print(_unit_line(unit, found), soft_wrap=True)
            bar.advance(task)
    return write_claims(study, records, command)


def unit_done(study: Study, unit: Unit) -> bool:
    return (study.folder(unit) / ROW_FILE).exists()


def _unit_line(unit: Unit, records: list[dict]) -> str:
    parts = [f"{r['row']} {_pct(r['accuracy'])}% (best step {r['best_step']}/{r['steps']})" for r in records if r.get("accuracy") is not None]
    return f"{unit.describe()}: " + ("; ".join(parts) or "no student") + f" in {sum(r.get('wall_seconds', 0) for r in records):.0f}s"
