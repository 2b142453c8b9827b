"""`tinythinker eval`: lm-eval run on our tasks through lm-eval's public API (``simple_evaluate``).

It parses lm-eval's own ``run`` options, builds a task manager over our task folder only (not lm-eval's
~14,000 built-in task files), runs the evaluation and writes lm-eval's own output files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

from tinythinker.errors import TinyThinkerError
from tinythinker.evaluate.tasks import MODEL_NAME, task_names, tasks_folder
from tinythinker.protocol import config_parts

log = logging.getLogger(__name__)


def _student_fingerprint(student: str, revision: str | None = None) -> str:
    """Identity of a checkpoint for the request cache: its path and its files' sizes and times (a Hub
    student: its id and commit)."""
    import hashlib

    path = Path(student)
    parts = [str(path.resolve()) if path.exists() else f"{student}@{revision or 'main'}"]
    if path.is_dir():
        parts += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.iterdir()) if p.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def lm_eval_argv(extra: Sequence[str] = (), *, student: str | None = None, data: str | None = None, config: str | None = None,
                 split: str | None = None, output_path: str | None = None, limit: float | None = None,
                 batch_size: int | None = None, device: str | None = None, self_consistency: bool = False,
                 data_revision: str | None = None, student_revision: str | None = None, progress: bool = True,
                 max_new_tokens: int | None = None) -> list[str]:
    """lm-eval ``run`` arguments for `tinythinker eval`: its own options translated, ``extra``
    (any lm_eval arguments) passed through unchanged after them.

    ``batch_size`` is the generation batch: ``--model_args gen_batch_size=N`` for the ``tinythinker``
    model (whose engine batch lm-eval's ``--batch_size`` does not set), and lm-eval's ``--batch_size``
    for any other model; ``progress=False`` hides the ``tinythinker`` model's bars. ``data_revision`` and
    ``student_revision`` are Hub commits (see :func:`tinythinker.hub.pin`): they go to the tasks'
    metadata and the model's arguments, so lm-eval's results file records them."""
    extra = list(extra)
    given = {arg.split("=", 1)[0] for arg in extra if arg.startswith("-")}
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise TinyThinkerError(f"--gen-batch-size {batch_size!r}: give the number of sequences per generation batch, at least 1")
    argv: list[str] = []
    if "--include_path" not in given:
        argv += ["--include_path", str(tasks_folder())]
    model_args = []
    variant = None
    if config is not None:
        variant = config_parts(config)[1]
        if "--tasks" not in given and "-t" not in given:
            argv += ["--tasks", ",".join(task_names(config, self_consistency=self_consistency))]
    elif "--tasks" not in given and "-t" not in given:
        raise TinyThinkerError("say what to evaluate: --config {dataset}-{variant} (e.g. csqa-full) or lm_eval's --tasks")
    if student is not None:
        if given & {"--model", "-M", "-m"}:
            raise TinyThinkerError("give either --student or lm_eval's --model/--model_args, not both")
        argv += ["--model", MODEL_NAME]
        model_args += [f"pretrained={student}"]
        if student_revision:
            model_args.append(f"revision={student_revision}")
        if variant:
            model_args.append(f"variant={variant}")
    ours = student is not None or _named_model(extra) == MODEL_NAME
    if batch_size is not None and ours:
        model_args.append(f"gen_batch_size={batch_size}")
    if not progress and ours:
        model_args.append("progress=False")
    if max_new_tokens is not None and ours:  # the recall and analyze cap (engine.stage_caps)
        model_args.append(f"max_new_tokens={max_new_tokens}")
    if model_args:
        argv += ["--model_args", *model_args]
    metadata = ([f"data={data}"] if data else []) + ([f"data_revision={data_revision}"] if data_revision else []) \
        + ([f"split={split}"] if split else [])
    if variant and student is None:
        metadata.append(f"variant={variant}")
    if metadata:
        argv += ["--metadata", *metadata]
    if output_path is not None:
        argv += ["--output_path", str(output_path)]
        if "--log_samples" not in given and "-s" not in given:
            argv.append("--log_samples")
        if student is not None and "--use_cache" not in given and "-c" not in given:
            # greedy responses are cached per finished engine call: rerunning resumes (lm-eval appends _rank0.db)
            argv += ["--use_cache", str(Path(output_path) / ".requests-cache" / _student_fingerprint(student, student_revision))]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if batch_size is not None or ("--batch_size" not in given and "-b" not in given):
        argv += ["--batch_size", str(batch_size or 64)]
    if device is not None:
        argv += ["--device", device]
    return argv + extra


def _named_model(argv: Sequence[str]) -> str | None:
    """The ``--model`` an lm-eval argument list names (its last), if any."""
    model = None
    for k, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--model", "-M", "-m"):
            model = value if eq else (argv[k + 1] if k + 1 < len(argv) else None)
    return model


# --- lm-eval's `run` options, parsed here: `tinythinker eval` calls lm-eval's public API --------------

def _key_values(text: str) -> dict:
    """``k=v,k2=v2`` (values typed as lm-eval's CLI types them) or a JSON object."""
    import ast

    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise TinyThinkerError(f"{text[:60]!r}: not a JSON object ({error})") from None
        if not isinstance(value, dict):
            raise TinyThinkerError(f"{text[:60]!r}: not a JSON object")
        return value
    out = {}
    depth, quote, part, parts = 0, None, [], []
    for char in text:  # split on commas outside brackets and quotes (lm-eval's rule)
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append("".join(part))
            part = []
            continue
        part.append(char)
    parts.append("".join(part))
    for item in filter(None, parts):
        key, eq, value = item.partition("=")
        if not eq:
            raise TinyThinkerError(f"expected key=value, got {item!r}")
        if value.lower() in ("true", "false"):
            typed = value.lower() == "true"
        elif value.isnumeric():
            typed = int(value)
        else:
            try:
                typed = float(value)
            except ValueError:
                try:
                    typed = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    typed = value
        out[key] = typed
    return out


def _lm_eval_parser():
    """lm-eval's ``run`` options that `tinythinker eval` takes (the same names and meanings)."""
    import argparse

    class Merge(argparse.Action):  # repeatable key=value options merge, later keys win
        def __call__(self, parser, namespace, values, option_string=None):
            merged = dict(getattr(namespace, self.dest, None) or {})
            for value in values:
                merged.update(_key_values(value))
            setattr(namespace, self.dest, merged)

    class Split(argparse.Action):  # --tasks a,b c
        def __call__(self, parser, namespace, values, option_string=None):
            items = list(getattr(namespace, self.dest, None) or [])
            items += [name for value in values for name in value.split(",") if name]
            setattr(namespace, self.dest, items)

    def seeds(text: str) -> list[int | None]:
        values = [None if v.strip().lower() == "none" else int(v) for v in text.split(",")]
        default = [0, 1234, 1234, 1234]
        return values * 4 if len(values) == 1 else (values + default[len(values):])[:4]

    parser = argparse.ArgumentParser(prog="tinythinker eval", add_help=False, allow_abbrev=False)
    add = parser.add_argument
    add("--tasks", "-t", nargs="+", action=Split, default=[])
    add("--model", "-M", "-m", default="hf")
    add("--model_args", "-a", nargs="+", action=Merge, default={})
    add("--metadata", nargs="+", action=Merge, default={})
    add("--gen_kwargs", nargs="+", action=Merge, default=None)
    add("--hf_hub_log_args", nargs="+", action=Merge, default={})
    add("--include_path", action="append", default=[])
    add("--limit", "-L", type=float)
    add("--samples", "-E")
    add("--use_cache", "-c")
    add("--cache_requests", choices=["true", "refresh", "delete"], nargs="?", const="true")
    add("--num_fewshot", "-f", type=int)
    add("--batch_size", "-b", default=None)
    add("--max_batch_size", type=int)
    add("--device")
    add("--output_path", "-o")
    add("--log_samples", "-s", action="store_true")
    add("--predict_only", "-x", action="store_true")
    add("--write_out", "-w", action="store_true")
    add("--show_config", action="store_true")
    add("--check_integrity", action="store_true")
    add("--system_instruction")
    add("--apply_chat_template", nargs="?", const=True, default=False)
    add("--fewshot_as_multiturn", nargs="?", const="true", default=None)
    add("--verbosity", "-v", type=str.upper)
    add("--seed", type=seeds, default=[0, 1234, 1234, 1234])
    add("--trust_remote_code", action="store_true")
    add("--confirm_run_unsafe_code", action="store_true")
    return parser


def parse_lm_eval_args(argv: Sequence[str]):
    """lm-eval ``run`` arguments (as :func:`lm_eval_argv` makes them) -> an argparse namespace;
    options `tinythinker eval` does not take are a :class:`TinyThinkerError`."""
    args, unknown = _lm_eval_parser().parse_known_args(list(argv))
    if unknown:
        raise TinyThinkerError(f"tinythinker eval does not take {' '.join(unknown)}; it takes lm_eval run's options for the "
                               "evaluation itself (--tasks, --model_args, --metadata, --limit, --output_path, --log_samples, ...). "
                               "For the others (--config, --wandb_args, ...) run lm_eval itself with the task YAML paths (docs/evaluation.md)")
    if not args.tasks:
        raise TinyThinkerError("say what to evaluate: --config {dataset}-{variant} (e.g. csqa-full) or lm_eval's --tasks")
    if args.samples and args.limit is not None:
        raise TinyThinkerError("lm_eval's --samples and --limit exclude each other")
    if (args.log_samples or args.predict_only) and not args.output_path:
        raise TinyThinkerError("--log_samples / --predict_only need an output folder (--out)")
    if isinstance(args.samples, str):
        text = args.samples
        args.samples = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    if args.fewshot_as_multiturn is not None:
        args.fewshot_as_multiturn = str(args.fewshot_as_multiturn).lower() in ("true", "1", "yes")
    return args


def resolve_tasks(tasks: Sequence[str], include_path: Sequence[str] = (), metadata: Mapping | None = None):
    """``(TaskManager, task specs)`` for lm-eval's ``simple_evaluate``: a task manager over the
    ``include_path`` folders only (ours: 16 YAMLs, milliseconds), not lm-eval's ~14,000 built-in task
    files (6-14 s to index); names only lm-eval's built-in index knows (``--model hf --tasks hellaswag``)
    make it index them too. Task YAML paths and folders of them are taken as they are."""
    import glob

    from lm_eval.tasks import TaskManager

    include = [str(p) for p in include_path] or None
    specs: list[str] = []
    for task in dict.fromkeys(tasks):
        if task.endswith((".yaml", ".yml")):
            found = sorted(glob.glob(task))
            if not found:
                raise TinyThinkerError(f"task file {task}: no such file")
            specs += [str(Path(f).absolute()) for f in found]
        elif Path(task).is_dir() and any(Path(task).glob("*.yaml")):
            specs += [str(Path(f).absolute()) for f in sorted(Path(task).glob("*.yaml"))]
        else:
            specs.append(task)
    names = [spec for spec in specs if not spec.endswith((".yaml", ".yml"))]
    for defaults in (False, True):
        manager = TaskManager(include_path=include, include_defaults=defaults, metadata=dict(metadata or {}))
        missing = [name for name in names if not manager.match_tasks([name])]
        if not missing:
            break
        if not defaults:
            log.info("%s: not among the included tasks; indexing lm-eval's built-in tasks too", ", ".join(missing))
    else:
        raise TinyThinkerError(f"tasks not found: {', '.join(missing)} (our tasks: tinythinker_{{csqa,obqa,strategyqa}}[_analyze_oracle|"
                               "_summarize_oracle|_sc], the group tinythinker; `lm_eval ls tasks` lists lm-eval's)")
    matched: list[str] = []
    for spec in specs:
        for name in ([spec] if spec.endswith((".yaml", ".yml")) else manager.match_tasks([spec])):
            if name not in matched:
                matched.append(name)
    return manager, matched


def run_lm_eval(argv: Sequence[str]) -> dict | None:
    """`tinythinker eval`: lm-eval ``run`` arguments (:func:`lm_eval_argv`) -> :func:`evaluate_tasks`,
    then lm-eval's results table on stdout. Returns lm-eval's results (None on the other processes
    of a data-parallel run)."""
    from lm_eval.utils import handle_non_serializable, make_table, setup_logging

    args = parse_lm_eval_args(argv)
    setup_logging(args.verbosity or "INFO")
    model_args = dict(args.model_args)
    if args.trust_remote_code:
        import datasets

        datasets.config.HF_DATASETS_TRUST_REMOTE_CODE = True
        model_args["trust_remote_code"] = True
    cache = {"true": (True, False, False), "refresh": (True, True, False), "delete": (False, False, True)}.get(args.cache_requests, (False, False, False))
    results = evaluate_tasks(
        args.model, model_args=model_args, tasks=args.tasks, include_path=args.include_path, metadata=args.metadata,
        output_path=args.output_path, log_samples=args.log_samples, hf_hub_log_args=args.hf_hub_log_args,
        num_fewshot=args.num_fewshot, batch_size=args.batch_size if args.batch_size is not None else 1,
        max_batch_size=args.max_batch_size, device=args.device, use_cache=args.use_cache,
        cache_requests=cache[0], rewrite_requests_cache=cache[1], delete_requests_cache=cache[2],
        limit=args.limit, samples=args.samples, check_integrity=args.check_integrity, write_out=args.write_out,
        system_instruction=args.system_instruction, apply_chat_template=args.apply_chat_template,
        fewshot_as_multiturn=bool(args.fewshot_as_multiturn), gen_kwargs=args.gen_kwargs, predict_only=args.predict_only,
        random_seed=args.seed[0], numpy_random_seed=args.seed[1], torch_random_seed=args.seed[2], fewshot_random_seed=args.seed[3],
        confirm_run_unsafe_code=args.confirm_run_unsafe_code,
    )
    if results is None:  # another process of a data-parallel run: rank 0 wrote the results
        return None
    if args.show_config:
        shown = {k: v for k, v in results.items() if k != "samples"}
        print(json.dumps(shown, indent=2, default=handle_non_serializable, ensure_ascii=False))
    shown_args = {k: v for k, v in model_args.items() if k != "trust_remote_code"}
    print(f"{args.model} ({shown_args}), gen_kwargs: ({args.gen_kwargs}), limit: {args.limit}, num_fewshot: {args.num_fewshot}, "
          f"batch_size: {args.batch_size or 1}")
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    return results


def evaluate_tasks(model, *, tasks: Sequence[str], model_args: Mapping | None = None, include_path: Sequence[str] = (),
                   metadata: Mapping | None = None, output_path: str | None = None, log_samples: bool = False,
                   hf_hub_log_args: Mapping | None = None, **evaluate_args) -> dict | None:
    """One lm-eval evaluation with lm-eval's public API, as the ``lm_eval`` command runs it but without
    its index of every built-in task: :func:`resolve_tasks` (our tasks, then ``include_path``),
    ``lm_eval.simple_evaluate(model, model_args, ..., **evaluate_args)``, and lm-eval's
    ``EvaluationTracker`` writing the results and, with ``log_samples``, the per-question samples under
    ``output_path`` in the ``lm_eval`` command's layout (``OUT/<model>/results_<date>.json``,
    ``samples_<task>_<date>.jsonl``). ``model``: a name (``tinythinker``, ``hf``, ...) or a loaded lm-eval LM.
    Returns the results, with ``samples`` when logged (None on the other processes of a data-parallel run)."""
    import os

    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    from tinythinker.evaluate.lm_eval_model import register

    register()
    model_args = dict(model_args or {})
    metadata = {**model_args, **(metadata or {})}  # as lm_eval's CLI: the tasks see the model arguments too
    ours = str(tasks_folder())  # first: a folder given after it can override our tasks
    include = [ours, *[str(p) for p in include_path if Path(p).absolute() != Path(ours).absolute()]]
    manager, specs = resolve_tasks(tasks, include, metadata)
    hub_args = dict(hf_hub_log_args or {})
    if output_path:
        hub_args["output_path"] = str(output_path)
    if os.environ.get("HF_TOKEN"):
        hub_args["token"] = os.environ["HF_TOKEN"]
    tracker = EvaluationTracker(**hub_args)
    with _environment_report_ahead():
        results = simple_evaluate(model=model, model_args=model_args if isinstance(model, str) else None, tasks=specs,
                                  task_manager=manager, metadata=metadata, log_samples=log_samples, evaluation_tracker=tracker,
                                  **evaluate_args)
    if results is None:
        return None
    samples = results.pop("samples", None) if log_samples or evaluate_args.get("predict_only") else None
    tracker.save_results_aggregated(results=results, samples=samples)
    if samples is not None:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        results["samples"] = samples
    if tracker.push_results_to_hub or tracker.push_samples_to_hub:
        tracker.recreate_metadata_card()
    return results


def _user_cache() -> Path:
    return Path(os.environ.get("TINYTHINKER_CACHE") or Path.home() / ".cache" / "tinythinker")


def _environment_key() -> str:
    """What torch's environment report depends on: this machine since its last boot (drivers, GPUs,
    OS), this Python, what is installed in it (the mtimes of the folders packages install into change
    when a package is installed or removed), the tools on PATH and the visible devices."""
    import hashlib
    import platform
    import site
    import sys

    boot = Path("/proc/sys/kernel/random/boot_id")
    folders = sorted({*site.getsitepackages(), site.getusersitepackages(),
                      *[p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]})
    parts = [platform.node(), boot.read_text().strip() if boot.exists() else "", sys.executable, sys.version,
             os.environ.get("PATH", ""), os.environ.get("CUDA_VISIBLE_DEVICES", "-"), os.environ.get("CONDA_PREFIX", "")]
    for folder in folders:
        try:
            parts.append(f"{folder}:{os.stat(folder).st_mtime_ns}")
        except OSError:
            parts.append(f"{folder}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def environment_report(compute) -> str:
    """``compute()`` (torch's ``get_pretty_env_info``), kept in the user cache per environment
    (:func:`_environment_key`): the same text, without a dozen subprocesses (``pip list`` is most of
    it) on every evaluation."""
    from tinythinker.artifacts import atomic_write_text

    path = _user_cache() / "env-report" / f"{_environment_key()}.txt"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    report = compute()
    try:
        atomic_write_text(path, report)
    except OSError as error:  # a read-only home only loses the cache
        log.debug("environment report not cached: %s", error)
    return report


@contextlib.contextmanager
def _environment_report_ahead():
    """lm-eval's results record torch's environment report (``torch.utils.collect_env``: ``pip list``,
    compiler and driver versions, a dozen subprocesses: about a second of CPU, 2-17 s of wall time on
    the busy 2-core machine, more than a tiny student's whole evaluation) and collect it after the
    evaluation. Here it comes from :func:`environment_report` (cached per environment), fetched in a
    thread from the start, while the model loads and generates; lm-eval receives it when it asks.
    Only the process that writes the results (rank 0) fetches it."""
    from concurrent.futures import ThreadPoolExecutor

    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    from torch.utils import collect_env

    original = collect_env.get_pretty_env_info
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="env-report")
    report = pool.submit(environment_report, original)
    collect_env.get_pretty_env_info = lambda: report.result()  # an error in the thread reaches lm-eval, which records it
    try:
        yield
    finally:
        collect_env.get_pretty_env_info = original
        pool.shutdown(wait=False, cancel_futures=True)
