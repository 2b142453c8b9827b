"""The functions TinyThinker's task YAMLs name (`!function utils.x`); the logic is in tinythinker.evaluate.

Loading this file (lm-eval does when it builds one of these tasks) also registers the lm-eval model
``tinythinker``. The plain ``lm_eval`` CLI creates the model before it builds tasks, so there the
registration comes too late unless the task is given as a YAML path; ``tinythinker eval`` (same
arguments as ``lm_eval``) registers first. See docs/evaluation.md.
"""

from tinythinker.evaluate.lm_eval_model import decode_trace, parse_summary_response, register
from tinythinker.evaluate.metrics import trace_metrics, vote_metrics
from tinythinker.evaluate.tasks import load_task_docs

register()


def load_docs(task_dataset: str, task_kind: str, **metadata):
    """custom_dataset: lm-eval passes the task's metadata (--metadata and --model_args) and dataset_kwargs."""
    return load_task_docs(task_dataset, task_kind, **metadata)


def score_full(doc, results):
    return trace_metrics(decode_trace(results[0], "full-pipeline task"), doc, "full")


def score_analyze_oracle(doc, results):
    return trace_metrics(decode_trace(results[0], "analyze-oracle task"), doc, "analyze_oracle")


def score_summarize_oracle(doc, results):
    return trace_metrics(parse_summary_response(results[0]), doc, "summarize_oracle")


def score_self_consistency(doc, results):
    # results[0]: every sampled response of this question (the `all_samples` filter keeps them)
    return vote_metrics([decode_trace(r, "self-consistency task") for r in results[0]], doc)


def all_samples(resps, docs):
    """Filter that keeps every repeat's response (lm-eval's default keeps only the first)."""
    return resps
