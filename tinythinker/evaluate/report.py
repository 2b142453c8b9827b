"""Reports from lm-eval result folders and self-reflection runs: tables, plots, markdown, JSON.

Inputs are what the tools already write, read as they are:

* lm-eval output folders (``--output_path``, with ``--log_samples`` for per-question results):
  ``results_<date>.json`` and ``samples_<task>_<date>.jsonl``, found anywhere below the folders given;
* the student checkpoint each result names (``model_args.pretrained``): its card says how it was made
  (``tinythinker.method`` sft / dpo and the DPO ``iteration``);
* self-reflection run folders (``metrics.jsonl`` of ``tinythinker reflect``): the validation accuracy of
  the starting student (iteration 0) and of every iteration's best checkpoint. A reflection run is
  found from a result whose student lives in it (``OUT/best``, ``OUT/iter<k>/best``) or given directly;
* the training curves of those runs and of SFT runs (``metrics.jsonl`` of ``tinythinker train sft``),
  found from a result whose student is a run's ``OUT/best``, or given directly: train loss per stage,
  validation accuracy per cycle, DPO reward margin and preference accuracy, drawn as PNG.

Every view (rich tables, markdown, plots, JSON) is drawn from one :class:`Report`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tinythinker.artifacts import checkpoint_provenance, iter_jsonl, umask_mode
from tinythinker.errors import TinyThinkerError
from tinythinker.evaluate.metrics import OUTCOMES, attribution, attribution_summary
from tinythinker.protocol import config_parts
from tinythinker.runs import METRICS, read_settings, run_method

TASK_RE = re.compile(r"^tinythinker_(?P<dataset>[a-z]+?)(?:_(?P<kind>analyze_oracle|summarize_oracle|sc))?$")
MARKDOWN_FILE, JSON_FILE = "report.md", "report.json"  # what `tinythinker report --out DIR` writes besides the plots

# The rows of the stage table: (stage, label, task kind, metric)
STAGE_ROWS = (
    ("pipeline", "accuracy", "full", "acc"),
    ("pipeline", "self-consistency accuracy", "sc", "acc"),
    ("recall", "ROUGE-L vs teacher", "full", "recall_rougeL"),
    ("recall", "words", "full", "recall_words"),
    ("analyze", "accuracy with teacher's recall", "analyze_oracle", "acc"),
    ("analyze", "every option analysed", "full", "analyses_complete"),
    ("analyze", "ROUGE-L vs teacher", "full", "analysis_rougeL"),
    ("analyze", "words per option", "full", "analysis_words"),
    ("summarize", "accuracy with teacher's recall + analyses", "summarize_oracle", "acc"),
    ("summarize", "answer found", "full", "answer_found"),
    ("summarize", "consistent with analyses", "full", "summary_consistent"),
)
COUNT_METRICS = {"recall_words", "analysis_words", "summary_words"}  # shown as numbers, not percentages


@dataclass
class TaskResult:
    """One lm-eval task of one run: aggregate metrics and, with --log_samples, per-question accuracy."""

    run: str  # label of the results folder (one student)
    student: str
    method: str | None  # sft / dpo (the checkpoint's card)
    iteration: int | None  # 0 for SFT, k for DPO iteration k
    task: str
    dataset: str
    kind: str  # full / analyze_oracle / summarize_oracle / sc
    variant: str
    data: str | None
    questions: int
    metrics: dict[str, float]
    correct: dict[str, bool] | None = None  # question id -> right (from the samples file)
    source: str = ""


@dataclass
class Curve:
    """Validation accuracy per self-reflection iteration (0: the starting student)."""

    run: str
    dataset: str | None
    folder: str
    points: list[dict] = field(default_factory=list)  # {iteration, accuracy, questions, pairs}


@dataclass
class TrainingRun:
    """The metrics log of one training run: ``sft`` (`tinythinker train sft`) or ``dpo`` (`tinythinker reflect`)."""

    run: str  # label, the folder's name (with its parent's when two runs share one)
    kind: str
    folder: str
    records: list[dict] = field(default_factory=list)  # the metrics.jsonl lines, in order


@dataclass
class Report:
    results: list[TaskResult]
    attribution: list[dict]  # one per (run, dataset) with a full task
    curves: list[Curve]
    training: list[TrainingRun] = field(default_factory=list)  # runs with a non-empty metrics log

    def runs(self) -> list[str]:
        """Run labels, SFT before DPO iterations in order, then the rest as found."""
        order = {}
        for r in self.results:
            order.setdefault(r.run, (r.iteration is None, r.iteration or 0, len(order)))
        return sorted(order, key=order.get)

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.results))

    def get(self, run: str, dataset: str, kind: str) -> TaskResult | None:
        return next((r for r in self.results if r.run == run and r.dataset == dataset and r.kind == kind), None)


# --- reading ---------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TinyThinkerError(f"{path}: cannot read lm-eval results ({error.__class__.__name__}); delete or fix the file") from None


def _metrics(task_results: dict) -> dict[str, float]:
    """``{"acc": 0.5, ...}`` from lm-eval's ``{"acc,none": 0.5, "acc_stderr,none": ...}``."""
    out = {}
    for key, value in task_results.items():
        name, _, _filter = key.partition(",")
        if _filter and not name.endswith("_stderr") and isinstance(value, (int, float)):
            out[name] = float(value)
    return out


def per_question(samples_file: Path) -> dict[str, bool]:
    """{question id: answered right} from an lm-eval samples file (--log_samples)."""
    correct = {}
    for _, sample in iter_jsonl(samples_file, what="lm-eval samples file"):
        doc = sample.get("doc") or {}
        if "id" in doc and "acc" in sample:
            correct[str(doc["id"])] = bool(sample["acc"])
    return correct


def _results_files(root: Path) -> list[Path]:
    return sorted(root.rglob("results_*.json")) if root.is_dir() else ([root] if root.name.startswith("results_") else [])


def _label(root: Path, results_file: Path, model_dir_name: str | None, prefix: bool) -> str:
    folder = results_file.parent
    if model_dir_name and folder.name == model_dir_name:  # lm-eval's <output_path>/<model name>/ level
        folder = folder.parent
    base = root if root.is_dir() else root.parent
    relative = folder.relative_to(base) if folder != base and base in folder.parents else Path(".")
    parts = ([base.name] if prefix or str(relative) == "." else []) + ([str(relative)] if str(relative) != "." else [])
    return "/".join(parts) or base.name


def load_results(root: Path, *, prefix: bool = False) -> list[TaskResult]:
    """Every TinyThinker task result below ``root``; a later results file of the same folder and
    task replaces an earlier one (a rerun)."""
    found: dict[tuple[str, str], TaskResult] = {}
    for path in _results_files(root):
        data = _read_json(path)
        if "results" not in data or "configs" not in data:
            continue
        config = data.get("config") or {}
        model_args = config.get("model_args") or {}
        if isinstance(model_args, str):
            model_args = dict(part.split("=", 1) for part in model_args.split(",") if "=" in part)
        student = str(model_args.get("pretrained", config.get("model", "?")))
        card = checkpoint_provenance(student)
        method = card.get("method")
        iteration = 0 if method == "sft" else card.get("iteration")
        label = _label(root, path, data.get("model_name_sanitized"), prefix)
        date = path.stem.removeprefix("results_")
        for task, task_results in data["results"].items():
            match = TASK_RE.match(task)
            if not match:
                continue
            metadata = (data["configs"].get(task) or {}).get("metadata") or {}
            samples_file = path.parent / f"samples_{task}_{date}.jsonl"
            n = (data.get("n-samples") or {}).get(task, {}).get("effective", task_results.get("sample_len", 0))
            found[(label, task)] = TaskResult(
                run=label, student=student, method=method, iteration=iteration, task=task,
                dataset=match["dataset"], kind=match["kind"] or "full",
                variant=str(metadata.get("variant") or model_args.get("variant") or "full"),
                data=metadata.get(f"data_{match['dataset']}") or metadata.get("data")
                or (card.get("data") if config_parts(str(card.get("config", "")))[0] == match["dataset"] else None),
                questions=int(n),
                metrics=_metrics(task_results), correct=per_question(samples_file) if samples_file.exists() else None,
                source=str(path),
            )
    return list(found.values())


def reflection_folder(student: str) -> Path | None:
    """The self-reflection run a checkpoint belongs to (``OUT/best`` or ``OUT/iter<k>/best``)."""
    path = Path(student)
    for folder in (path.parent, path.parent.parent):
        if (folder / METRICS).is_file():
            return folder
    return None


def training_folder(student: str) -> Path | None:
    """The training run a checkpoint comes from (``OUT/best``, ``OUT/iter<k>/best``), by the run's own
    files, not the checkpoint's card (a reflection whose iterations all lost keeps a copy of its start)."""
    path = Path(student)
    return next((folder for folder in (path.parent, path.parent.parent) if run_method(folder)), None)


def load_training(folder: Path, run: str) -> TrainingRun | None:
    """A training run's metrics log; None when it has none or no lines yet. A run still being written
    may end in a torn line: the lines before it are kept."""
    kind = run_method(folder)
    if kind is None:
        return None
    records = []
    try:
        for _, record in iter_jsonl(Path(folder) / METRICS, what="training metrics log"):
            records.append(record)
    except TinyThinkerError:
        pass
    return TrainingRun(run=run, kind=kind, folder=str(folder), records=records) if records else None


def load_curve(folder: Path, run: str, dataset: str | None = None) -> Curve:
    """Validation accuracy per iteration from a reflection run's ``metrics.jsonl``."""
    curve = Curve(run=run, dataset=dataset, folder=str(folder))
    path = folder / METRICS
    for _, record in iter_jsonl(path, what="reflection metrics log"):
        if record.get("kind") == "eval" and record.get("iteration") == 0 and "step" not in record:
            curve.points.append({"iteration": 0, "accuracy": record.get("accuracy"), "questions": record.get("questions"),
                                 "student": record.get("student")})
        elif record.get("kind") == "iteration" and record.get("best_accuracy") is not None:
            curve.points.append({"iteration": record["iteration"], "accuracy": record["best_accuracy"],
                                 "pairs": record.get("pairs") or {}})
    if curve.dataset is None:
        config = (read_settings(folder) or {}).get("config", "")
        curve.dataset = config_parts(str(config))[0] or None
    curve.points.sort(key=lambda p: p["iteration"])
    return curve


def build_report(paths: Sequence[Path], compare: Sequence[Path] = ()) -> Report:
    """Read result folders (``paths`` and the ``compare`` students) and reflection runs into one report."""
    roots = [Path(p) for p in [*paths, *compare]]
    prefix = len(roots) > 1
    results: list[TaskResult] = []
    curves: dict[str, Curve] = {}
    training: dict[str, Path] = {}  # resolved folder -> folder, in the order found
    for root in roots:
        if (root / METRICS).is_file():  # a training run given directly
            training.setdefault(str(root.resolve()), root)
            if run_method(root) != "sft":  # a reflection run (also when its settings file is missing)
                curves[str(root.resolve())] = load_curve(root, root.name)
            continue
        found = load_results(root, prefix=prefix)
        if not found:
            raise TinyThinkerError(f"{root}: no lm-eval results of TinyThinker tasks below it (results_*.json); "
                                   "run `tinythinker eval ... --out` (or lm_eval --output_path) first")
        results += found
        for result in found:
            folder = training_folder(result.student)
            if folder is not None:
                training.setdefault(str(folder.resolve()), folder)
            # by the run's files, not the card: a reflection whose iterations all lost keeps an SFT card on OUT/best
            reflection = folder if folder is not None and run_method(folder) == "dpo" else \
                reflection_folder(result.student) if result.method == "dpo" else None
            if reflection is not None and str(reflection.resolve()) not in curves:
                curves[str(reflection.resolve())] = load_curve(reflection, result.run, result.dataset)
    report = Report(results=results, attribution=_attributions(results), curves=list(curves.values()),
                    training=_training_runs(training.values()))
    position = {run: i for i, run in enumerate(report.runs())}
    report.attribution.sort(key=lambda a: (position[a["run"]], a["dataset"]))
    return report


def _training_runs(folders: Iterable[Path]) -> list[TrainingRun]:
    """The runs with a metrics log, labelled by folder name (and its parent's where names repeat)."""
    folders = list(folders)
    names = [f.name for f in folders]
    runs = [load_training(f, f.name if names.count(f.name) == 1 else f"{f.parent.name}-{f.name}") for f in folders]
    return [run for run in runs if run is not None]


def _attributions(results: Iterable[TaskResult]) -> list[dict]:
    by_key: dict[tuple[str, str], dict[str, TaskResult]] = {}
    for result in results:
        by_key.setdefault((result.run, result.dataset), {})[result.kind] = result
    rows = []
    for (run, dataset), kinds in by_key.items():
        full = kinds.get("full")
        if full is None or full.correct is None:
            continue
        analyze, summarize = kinds.get("analyze_oracle"), kinds.get("summarize_oracle")
        outcomes = attribution(full.correct, analyze.correct if analyze else None, summarize.correct if summarize else None)
        rows.append({"run": run, "dataset": dataset, "iteration": full.iteration, **attribution_summary(outcomes)})
    return rows


# --- views: one set of table data, drawn as rich tables and markdown -------------------------------

def _fmt(value, metric: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric in COUNT_METRICS:
        return f"{value:.1f}"
    return f"{100 * value:.1f}"


def _column_name(report: Report, run: str) -> str:
    iterations = {r.iteration for r in report.results if r.run == run}
    methods = {r.method for r in report.results if r.run == run} - {None}
    iteration = next(iter(iterations)) if len(iterations) == 1 else None
    variants = {r.variant for r in report.results if r.run == run}
    if methods == {"sft"}:  # an ablation or baseline says which (a cot and a full student side by side)
        return f"{run} (SFT" + (f" {next(iter(variants))})" if len(variants) == 1 and variants != {"full"} else ")")
    if iteration is not None:
        return f"{run} (DPO it. {iteration})"
    return run


def tables(report: Report) -> list[dict]:
    """The report's tables as ``{title, columns, rows, note}`` (cells already formatted)."""
    out = []
    runs = report.runs()
    for dataset in report.datasets():
        rows = []
        for stage, label, kind, metric in STAGE_ROWS:
            cells = []
            for run in runs:
                result = report.get(run, dataset, kind)
                cells.append(_fmt(result.metrics.get(metric) if result else None, metric))
            if any(c != "–" for c in cells):
                rows.append([stage, label, *cells])
        questions = [str(report.get(run, dataset, "full").questions) if report.get(run, dataset, "full") else "–" for run in runs]
        rows.append(["", "questions", *questions])
        out.append({"title": f"{dataset}: stages", "columns": ["stage", "measure", *[_column_name(report, r) for r in runs]],
                    "rows": rows, "note": "percent, except words; – not measured"})
    if report.attribution:
        rows = [[a["run"], a["dataset"], str(a["questions"]), _fmt(a["correct_rate"]),
                 *[_fmt(a[f"{stage}_rate"]) for stage in ("recall", "analyze", "summarize", "unattributed")]]
                for a in report.attribution]
        out.append({"title": "Errors by the stage that caused them", "columns": ["run", "data set", "questions", "correct",
                    "recall", "analyze", "summarize", "unattributed"], "rows": rows,
                    "note": "percent of questions; an error is blamed on the first stage whose teacher text repairs it"})
    for curve in report.curves:
        rows = [[str(p["iteration"]), _fmt(p["accuracy"]),
                 ", ".join(f"{k} {v:,}" for k, v in (p.get("pairs") or {}).items()) or ("starting student" if p["iteration"] == 0 else "")]
                for p in curve.points]
        for row, point in zip(rows, curve.points):
            test = _curve_test(report, curve, point)
            row.append(_fmt(test.metrics.get("acc")) if test else "–")
        out.append({"title": f"Self-reflection: {curve.run}" + (f" ({curve.dataset})" if curve.dataset else ""),
                    "columns": ["iteration", "validation accuracy", "preference pairs", "test accuracy (lm-eval)"], "rows": rows,
                    "note": f"from {curve.folder}"})
    return out


def _same_path(a, b) -> bool:
    return bool(a and b) and Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def _curve_test(report: Report, curve: Curve, point: dict) -> TaskResult | None:
    """The lm-eval full-task result of the checkpoint behind one point of a reflection curve: the
    starting student for iteration 0, a checkpoint of this reflection run for iteration k."""
    for r in report.results:
        if r.kind != "full" or (curve.dataset and r.dataset != curve.dataset):
            continue
        if point["iteration"] == 0 and _same_path(r.student, point.get("student")):
            return r
        if point["iteration"] and r.method == "dpo" and r.iteration == point["iteration"] \
                and _same_path(reflection_folder(r.student), curve.folder):
            return r
    return None


def render_tables(report: Report, console) -> None:
    from rich.table import Table

    for spec in tables(report):
        table = Table(title=spec["title"], caption=spec["note"])
        for i, column in enumerate(spec["columns"]):
            table.add_column(column, justify="left" if i < 2 else "right")
        previous = None
        for row in spec["rows"]:
            stage = row[0] if row[0] != previous else ""
            previous = row[0]
            table.add_row(stage, *row[1:])
        console.print(table)


def render_markdown(report: Report, plots: Path | None = None, markdown: Path | None = None) -> str:
    """The tables as markdown; with the ``plots`` folder :func:`render_plots` drew into, also the
    training curves, linked relative to where the ``markdown`` file goes."""
    import os

    from tinythinker.cards import render_card

    curves = []
    for run in report.training if plots is not None else ():
        path = Path(plots) / curve_file(run)
        if path.is_file():
            link = os.path.relpath(path.resolve(), Path(markdown or ".").resolve().parent)
            curves.append({"run": run.run, "kind": "SFT" if run.kind == "sft" else "DPO self-reflection",
                           "folder": run.folder, "path": Path(link).as_posix(), "note": _curve_note(run)})
    return render_card("eval.md.j2", tables=tables(report), curves=curves, runs=[
        {"run": run, "student": next(r.student for r in report.results if r.run == run),
         "data": sorted({str(r.data) for r in report.results if r.run == run and r.data})}
        for run in report.runs()])


def _curve_note(run: TrainingRun) -> str:
    """One line under a run's curves: steps logged and where validation peaked."""
    steps = max((r.get("step") or 0 for r in run.records if r.get("kind") == "train"), default=0)
    if run.kind == "sft":
        best = _best_point([r for r in run.records if r.get("kind") == "eval"])
        peak = f"; best validation accuracy {_fmt(best['accuracy'])}% at cycle {best.get('cycle')} (step {best.get('step')})" if best else ""
        return f"train loss per stage and validation accuracy per cycle, {steps:,} steps{peak}"
    iterations = [r for r in run.records if r.get("kind") == "iteration" and r.get("best_accuracy") is not None]
    peaks = ", ".join(f"iteration {r['iteration']} {_fmt(r['best_accuracy'])}%" for r in iterations)
    return "DPO loss, reward margin, preference accuracy and validation accuracy" + (f"; best validation accuracy: {peaks}" if peaks else "")


def to_json(report: Report) -> str:
    data = {"results": [{k: v for k, v in asdict(r).items() if k != "correct"} for r in report.results],
            "attribution": report.attribution, "reflection": [asdict(c) for c in report.curves],
            "training": [{"run": t.run, "kind": t.kind, "folder": t.folder} for t in report.training]}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


# --- plots -------------------------------------------------------------------------------------------

STAGE_COLOURS = {"correct": "#4c9f70", "recall": "#e07b39", "analyze": "#d64550", "summarize": "#7b5ea7", "unattributed": "#b8b8b8"}


def render_plots(report: Report, folder: Path) -> list[Path]:
    """PNG plots (matplotlib, Agg): accuracy per DPO iteration and the stage attribution of errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if path := _plot_iterations(report, folder, plt):
        written.append(path)
    if path := _plot_attribution(report, folder, plt):
        written.append(path)
    if path := _plot_stage_checks(report, folder, plt):
        written.append(path)
    for run in report.training:
        written.append(_plot_training(run, folder / curve_file(run), plt))
    return written


def curve_file(run: TrainingRun) -> str:
    """The PNG name of a run's training curves (in the plots folder)."""
    return "training_" + re.sub(r"[^A-Za-z0-9._-]+", "_", run.run) + ".png"


def save_figure(fig, path: Path, plt) -> Path:
    """Write the PNG under a temporary name, then rename (no half-written plot)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        os.chmod(tmp, umask_mode(0o666))  # mkstemp makes 0600; a plot is as readable as any other file written here
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _plot_iterations(report: Report, folder: Path, plt) -> Path | None:
    series = []  # (label, [(iteration, accuracy)], style)
    for curve in report.curves:
        points = [(p["iteration"], p["accuracy"]) for p in curve.points if p.get("accuracy") is not None]
        if points:
            series.append((f"{curve.run}" + (f" {curve.dataset}" if curve.dataset else "") + " (validation)", points, "-o"))
    tests: dict[tuple[str, str], list] = {}
    for r in report.results:
        if r.kind == "full" and r.iteration is not None and "acc" in r.metrics:
            tests.setdefault((r.dataset, r.variant), []).append((r.iteration, r.metrics["acc"]))
    for (dataset, variant), points in tests.items():
        series.append((f"{dataset}" + (f" {variant}" if variant != "full" else "") + " (test, lm-eval)", sorted(set(points)), "--s"))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    iterations = set()
    for label, points, style in series:
        xs, ys = zip(*points)
        iterations |= set(xs)
        ax.plot(xs, [100 * y for y in ys], style, label=label, linewidth=1.8, markersize=6)
        for x, y in points:
            ax.annotate(f"{100 * y:.1f}", (x, 100 * y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    top = max(100 * y for _, points, _ in series for _, y in points)
    ax.margins(x=0.08)
    ax.set_ylim(0, min(105, top * 1.2 + 5))  # accuracy starts at 0; room above for the labels
    ax.set_xticks(sorted(iterations))
    ax.set_xticklabels(["SFT" if i == 0 else str(i) for i in sorted(iterations)])
    ax.set_xlabel("self-reflection (DPO) iteration")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per DPO iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, folder / "accuracy_per_iteration.png", plt)


def _plot_attribution(report: Report, folder: Path, plt) -> Path | None:
    rows = report.attribution
    if not rows:
        return None
    labels = [f"{a['run']}\n{a['dataset']}" for a in rows]
    fig, ax = plt.subplots(figsize=(7.0, 0.7 * len(rows) + 1.6))
    left = [0.0] * len(rows)
    for outcome in OUTCOMES:
        widths = [100 * a[f"{outcome}_rate"] for a in rows]
        if outcome == "unattributed" and not any(widths):
            continue
        name = "correct" if outcome == "correct" else f"{outcome} error"
        ax.barh(labels, widths, left=left, color=STAGE_COLOURS[outcome], label=name, edgecolor="white")
        for i, (x, w) in enumerate(zip(left, widths)):
            if w >= 6:
                ax.text(x + w / 2, i, f"{w:.0f}%", ha="center", va="center", fontsize=8, color="white")
        left = [x + w for x, w in zip(left, widths)]
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("% of questions")
    ax.set_title("Which stage caused each error (oracle attribution)")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18 if len(rows) < 3 else -0.1), frameon=False)
    return save_figure(fig, folder / "stage_attribution.png", plt)


def _plot_stage_checks(report: Report, folder: Path, plt) -> Path | None:
    checks = [(f"{stage}: {label}", metric) for stage, label, kind, metric in STAGE_ROWS
              if kind == "full" and metric not in COUNT_METRICS]
    position = {run: i for i, run in enumerate(report.runs())}
    full = sorted((r for r in report.results if r.kind == "full"), key=lambda r: (position[r.run], r.dataset))
    if not full:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    width = 0.8 / len(full)
    for i, result in enumerate(full):
        xs = [j + (i - (len(full) - 1) / 2) * width for j in range(len(checks))]
        values = [100 * result.metrics[m] if m in result.metrics else 0.0 for _, m in checks]
        bars = ax.bar(xs, values, width=width, label=f"{result.run} {result.dataset}")
        for x, (_, metric) in zip(xs, checks):
            if metric not in result.metrics:  # not measured (e.g. no teacher text): say so, not 0
                ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color=bars.patches[0].get_facecolor())
    ax.set_xticks(range(len(checks)))
    ax.set_xticklabels([label for label, _ in checks], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of questions (ROUGE-L: mean F1 x 100)")
    ax.set_title("Stage checks of the full pipeline")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, folder / "stage_checks.png", plt)


# --- training curves (metrics.jsonl) ------------------------------------------------------------------

MIXED_COLOUR = "#3a7ca5"  # the loss of mixed batches (every stage at once)


def _best_point(evals: Sequence[dict]) -> dict | None:
    """The kept checkpoint's validation: the last line that improved on every one before it."""
    return next((e for e in reversed(evals) if e.get("best")), None)


def _accuracy_axis(ax, evals: Sequence[dict], x: str, best_points: Sequence[dict], xlabel: str) -> None:
    ax.plot([e[x] for e in evals], [100 * e["accuracy"] for e in evals], "-o", color="#4c9f70", markersize=4, linewidth=1.5,
            label="validation accuracy")
    for point in best_points:
        ax.plot([point[x]], [100 * point["accuracy"]], "*", color="#d64550", markersize=14, zorder=3)
        ax.annotate(f"best {100 * point['accuracy']:.1f}%", (point[x], 100 * point["accuracy"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    top = max(100 * e["accuracy"] for e in evals)
    ax.set_ylim(0, max(10, min(105, top * 1.2 + 5)))  # from 0; room above for the labels
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)


def _plot_training(run: TrainingRun, path: Path, plt) -> Path:
    return (_plot_sft if run.kind == "sft" else _plot_dpo)(run, path, plt)


def _plot_sft(run: TrainingRun, path: Path, plt) -> Path:
    """Train loss per stage over steps; validation accuracy per cycle, the kept checkpoint starred."""
    train = [r for r in run.records if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))]
    evals = [r for r in run.records if r.get("kind") == "eval" and isinstance(r.get("accuracy"), (int, float))]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11.0, 4.0))
    for stage in dict.fromkeys(r.get("stage", "?") for r in train):
        points = [(r["step"], r["loss"]) for r in train if r.get("stage", "?") == stage]
        loss_ax.plot(*zip(*points), ".-", markersize=3, linewidth=1, label=stage,
                     color=STAGE_COLOURS.get(stage, MIXED_COLOUR))
    if train:
        if all(r["loss"] > 0 for r in train):  # a loss falls by orders of magnitude: log scale, plain numbers
            from matplotlib.ticker import FormatStrFormatter

            loss_ax.set_yscale("log")
            loss_ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            loss_ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        loss_ax.legend(fontsize=8, title="stage", title_fontsize=8)
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("train loss (mean token NLL)")
    loss_ax.set_title("Train loss per stage")
    loss_ax.grid(alpha=0.3, which="both")
    if evals:
        best = _best_point(evals)
        _accuracy_axis(acc_ax, evals, "cycle", [best] if best else [], "cycle")
        acc_ax.set_title(f"Validation accuracy per cycle ({evals[0].get('questions', '?')} questions)")
    else:
        acc_ax.text(0.5, 0.5, "no validation", ha="center", va="center", transform=acc_ax.transAxes)
        acc_ax.set_axis_off()
    fig.suptitle(f"SFT: {run.run}", fontsize=11)
    return save_figure(fig, path, plt)


def _plot_dpo(run: TrainingRun, path: Path, plt) -> Path:
    """DPO loss, reward margin and preference accuracy over steps (iterations one after another),
    and validation accuracy (the starting student at step 0; each iteration's kept checkpoint starred)."""
    iterations = sorted({r["iteration"] for r in run.records if isinstance(r.get("iteration"), int) and r["iteration"] > 0})
    offsets, offset = {}, 0
    for k in iterations:  # each iteration counts its steps from 1: lay them end to end
        offsets[k] = offset
        summary = next((r for r in run.records if r.get("kind") == "iteration" and r.get("iteration") == k), {})
        offset += summary.get("steps") or max((r.get("step") or 0 for r in run.records if r.get("iteration") == k), default=0)
    rows = [{**r, "x": offsets[r["iteration"]] + r["step"]} for r in run.records
            if r.get("iteration") in offsets and isinstance(r.get("step"), int)]
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [{**r, "x": 0} for r in run.records if r.get("kind") == "eval" and r.get("iteration") == 0 and "accuracy" in r]
    evals += [r for r in rows if r.get("kind") == "eval" and isinstance(r.get("accuracy"), (int, float))]
    fig, axes = plt.subplots(2, 2, figsize=(11.0, 7.0))
    panels = ((axes[0][0], (("loss", "loss (DPO + NLL)"), ("dpo_loss", "DPO loss")), "loss", "Training loss"),
              (axes[0][1], (("reward_margin", None),), "reward margin (chosen - rejected)", "Reward margin"),
              (axes[1][0], (("reward_accuracy", None),), "preference accuracy (%)", "Preference accuracy (chosen reward > rejected)"))
    for ax, series, ylabel, title in panels:
        for key, label in series:
            for stage in dict.fromkeys(r.get("stage", "?") for r in train):
                points = [(r["x"], r[key] * (100 if key == "reward_accuracy" else 1)) for r in train
                          if r.get("stage", "?") == stage and isinstance(r.get(key), (int, float))]
                if points:
                    ax.plot(*zip(*points), ".-" if label is None or key == "loss" else ".:", markersize=3, linewidth=1,
                            color=STAGE_COLOURS.get(stage, MIXED_COLOUR), label=f"{label + ', ' if label else ''}{stage} pairs")
        if ax.lines:
            ax.legend(fontsize=7)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1][0].set_ylim(-5, 105)
    axes[0][1].axhline(0, color="grey", linewidth=0.8)
    acc_ax = axes[1][1]
    if evals:
        kept = [p for k in iterations if (p := _best_point([e for e in evals if e.get("iteration") == k]))]
        _accuracy_axis(acc_ax, evals, "x", kept, "optimizer step (0: the starting student)")
        acc_ax.set_title("Validation accuracy (starred: each iteration's kept checkpoint)", fontsize=10)
    else:
        acc_ax.text(0.5, 0.5, "no validation", ha="center", va="center", transform=acc_ax.transAxes)
        acc_ax.set_axis_off()
    from matplotlib.ticker import MaxNLocator

    for ax in (axes[0][0], axes[0][1], axes[1][0], acc_ax):
        ax.set_xlim(left=-0.5, right=max(offset, 1) + 0.5)  # one step axis for all four, from the starting student
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for k in iterations:  # where each iteration starts, and its number
            if k != iterations[0]:
                ax.axvline(offsets[k] + 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.text(offsets[k] + 0.7, 0.98, f"it. {k}", transform=ax.get_xaxis_transform(), fontsize=7, color="grey", va="top")
    fig.suptitle(f"Self-reflection (DPO): {run.run}, {len(iterations)} iteration(s)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, plt)
