"""`tinythinker teach`: ask a teacher LLM for the coarse-to-fine rationales (REFERENCE 3-5).

``teach`` is a group whose default subcommand is ``ask``, so both spellings work::

    tinythinker teach csqa --raw DIR --out teacher/csqa.jsonl --model gpt-4o-2024-05-13 [--dry-run]
    tinythinker teach ask csqa ...                          # the same
    tinythinker teach import-batch BATCH_OUTPUT --requests BATCH_INPUT --out teacher/csqa.jsonl
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import click

from tinythinker.artifacts import ignore_interrupts
from tinythinker.commands.options import FiniteFloatRange

from tinythinker.errors import TinyThinkerError
from tinythinker.data.sources import DATASETS
from tinythinker.commands import options


class DefaultGroup(click.Group):
    """A group that runs ``default_command`` when the first argument names no subcommand."""

    def __init__(self, *args, default_command: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, default_command="ask")
def teach():
    """Ask a teacher LLM (any OpenAI-compatible endpoint) for rationales.

    \b
    tinythinker teach DATASET --raw DIR --out FILE --model M [options]   (= teach ask ...)
    tinythinker teach import-batch BATCH_OUTPUT --requests BATCH_INPUT --out FILE

    Answers are cached and appended to FILE as they come: after Ctrl-C or a crash, run the same
    command again to continue. `tinythinker teach ask --help` lists the options.
    """


def _default_base_url() -> str:
    from tinythinker.data.teacher.client import DEFAULT_BASE_URL

    return os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


@teach.command("ask")
@click.argument("dataset", type=click.Choice(sorted(DATASETS)))
@click.option("--raw", default=None, help="Folder with the original release files, or a Hub id (default: the data set's Hub id).")
@click.option("--revision", default=None, help="Of a Hub --raw: branch, tag or commit id (default main).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output JSONL (OpenAI Batch output lines); appended to, never rewritten.")
@click.option("--model", required=True, help="Teacher model name as the server knows it (the paper: gpt-4o-2024-05-13).")
@click.option("--base-url", default=None, help="OpenAI-compatible base URL ending in /v1 [env OPENAI_BASE_URL, else https://api.openai.com/v1].")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Environment variable holding the API key (local servers may need none).")
@click.option("--splits", default="train", show_default=True, help="Comma-separated splits to ask about; add validation,test for oracle evaluation.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Ask about at most N questions of each split.")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True, help="Teacher rounds: after each, parse and re-ask only for what is missing.")
@click.option("--concurrency", type=click.IntRange(min=1), default=32, show_default=True, help="HTTP requests in flight at most.")
@click.option("--rpm", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Requests per minute budget [default: the server's x-ratelimit headers; none if it sends none].")
@click.option("--tpm", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Tokens per minute budget [default: the server's x-ratelimit headers; none if it sends none].")
@click.option("--timeout", type=FiniteFloatRange(min=0, min_open=True), default=60, show_default=True, help="Seconds to wait for one reply.")
@click.option("--max-retries", type=click.IntRange(min=0), default=6, show_default=True, help="Retries of one request on 429/5xx/timeouts/dropped connections.")
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True,
              help="Seed of the splits and of the few-shot exemplar choice.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Answer cache [env TINYTHINKER_CACHE_DIR, else ~/.cache/tinythinker/teacher].")
@click.option("--prices", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML/JSON price table merged over the built-in one: {model: {input: USD, output: USD}} per 1M tokens.")
@click.option("--dry-run", is_flag=True, help="Print requests, samples, estimated tokens and cost; send nothing.")
@click.option("--batch-api", is_flag=True, help="Write the round's unanswered requests as an OpenAI Batch API input file instead of sending them.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@options.progress
def ask(dataset, raw, revision, out, model, base_url, api_key_env, splits, limit, rounds, concurrency, rpm, tpm, timeout, max_retries,
        seed, cache_dir, prices, dry_run, batch_api, as_json, progress):
    """Ask the teacher about DATASET's questions; answers go to --out."""
    from rich.console import Console
    from rich.markup import escape

    from tinythinker.data.teacher.client import Limits
    from tinythinker.commands.teach_display import LiveProgress
    from tinythinker.data.teacher.teach import TeachOptions, batch_limits_warning, parse_splits, teach as run_teach

    base_url = base_url or _default_base_url()
    options = TeachOptions(
        dataset=dataset, out=out, model=model, raw=raw, revision=revision, splits=parse_splits(splits), limit=limit, rounds=rounds, seed=seed,
        base_url=base_url, api_key_env=api_key_env, cache_dir=cache_dir, prices=prices,
        limits=Limits(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=timeout, max_retries=max_retries),
    )
    api_key = os.environ.get(api_key_env) or None
    sending = not dry_run and not batch_api
    if sending and api_key is None and "api.openai.com" in base_url:
        raise TinyThinkerError(f"${api_key_env} is not set; export your OpenAI API key in it (or name another variable with --api-key-env)")
    console = Console(stderr=True)
    try:
        result = run_teach(options, api_key=api_key, dry_run=dry_run, batch_api=batch_api,
                           progress=(lambda: LiveProgress(console, enabled=progress)) if sending else None)
    except KeyboardInterrupt:
        ignore_interrupts()
        console.print(f"[yellow]Interrupted.[/] Answers so far are in {escape(str(out))}; run the same command again to continue.")
        sys.exit(130)

    out_console = Console()
    if dry_run:
        _print_dry_run(out_console, options, result, as_json)
        return
    if batch_api and result.batch_file is not None:
        if as_json:
            click.echo(json.dumps({"batch_input": str(result.batch_file), "round": result.rounds[-1].round, "rounds": [r.to_dict() for r in result.rounds]}))
        else:
            warning = batch_limits_warning(result.batch_file)
            report = result.rounds[-1]
            out_console.print(f"Wrote {report.to_send:,} requests of round {report.round} to {result.batch_file}"
                              f" ({report.already:,} already answered, {report.cached:,} taken from the cache).", markup=False)
            if warning:
                out_console.print(f"[yellow]Warning:[/] {escape(warning)}")
            out_console.print("Next: run it as an OpenAI Batch job (endpoint /v1/chat/completions), download its output, then\n"
                              f"  tinythinker teach import-batch BATCH_OUTPUT --requests {result.batch_file} --out {out}\n"
                              "and run this command again for the next round.", markup=False)
        return
    if as_json:
        click.echo(json.dumps({"complete": result.complete, "rounds": [r.to_dict() for r in result.rounds]}))
    else:
        _print_summary(out_console, options, result)
    failed = sum(r.failed for r in result.rounds)
    if failed:
        last = result.rounds[-1]
        reasons = ", ".join(f"{reason}: {count}" for reason, count in last.failure_reasons.most_common())
        example = next(iter(last.failure_examples.values()), "")
        raise TinyThinkerError(f"{failed} requests failed ({reasons}; e.g. {example}); the answered ones are in {out}: run the same command again to retry the rest")
    if not as_json and result.complete:
        out_console.print(f"Done: answers in {out}. Next: tinythinker build {dataset} --raw {raw or 'DIR'} --responses {out} --out out/{dataset}",
                          markup=False)


def _print_dry_run(console, options, result, as_json: bool) -> None:
    from tinythinker.data.teacher.client import describe_limits

    estimate = result.estimate
    limits = describe_limits(options.limits)
    if as_json:
        click.echo(json.dumps({"round": result.estimate_round, "estimate": None if estimate is None else estimate.to_dict(),
                               "rounds": [r.to_dict() for r in result.rounds],
                               "limits": {"rpm": options.limits.rpm, "tpm": options.limits.tpm, "concurrency": options.limits.concurrency,
                                          "source": limits}}))
        return
    if estimate is None:
        console.print(f"Dry run: nothing to send for rounds 1-{options.rounds}: every request is answered in {options.out} or cached.", markup=False)
        return
    from rich.table import Table

    report = result.rounds[-1]
    table = Table(title=f"Dry run: {options.dataset}, round {result.estimate_round}, model {options.model}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    table.add_row("requests", f"{report.requests:,}", f"{report.already:,} already answered, {report.cached:,} in cache, {estimate.requests:,} to send")
    table.add_row("samples", f"{estimate.samples:,}", "n per request (REFERENCE 3)")
    table.add_row("prompt tokens", f"{estimate.prompt_tokens:,}", estimate.method)
    table.add_row("completion tokens", f"~{estimate.completion_tokens:,}", f"forecast from the exemplar answers; at most {estimate.completion_tokens_max:,} (n x max_tokens)")
    if estimate.price is None:
        table.add_row("cost", "unknown", f"no price for {options.model}: pass --prices FILE with {{{options.model}: {{input: USD, output: USD}}}} per 1M tokens")
    else:
        basis = f"${estimate.price.input:g} in / ${estimate.price.output:g} out per 1M tokens ({estimate.price.model})"
        table.add_row("cost", f"~${estimate.cost:,.2f}", f"at most ${estimate.cost_max:,.2f}; {basis}" + ("; Batch API: half" if estimate.batch else ""))
    if not estimate.batch:
        table.add_row("rate limits", "", limits)
    console.print(table)
    if options.rounds > result.estimate_round:
        console.print(f"Later rounds (up to --rounds {options.rounds}) ask again only for what is missing; their cost depends on the answers.")


def _print_summary(console, options, result) -> None:
    from rich.table import Table

    if not result.rounds:
        console.print("Nothing to ask.")
        return
    from rich import box

    table = Table(title=f"teach {options.dataset} -> {options.out}", box=box.SIMPLE_HEAD)
    table.add_column("")
    for r in result.rounds:
        table.add_column(f"round {r.round}", justify="right")
    rows = (
        ("requests", lambda r: f"{r.requests:,}"),
        ("already in output", lambda r: f"{r.already:,}"),
        ("from cache", lambda r: f"{r.cached:,}"),
        ("sent", lambda r: f"{r.to_send:,}"),
        ("failed", lambda r: f"{r.failed:,}"),
        ("retries", lambda r: f"{r.retried:,}"),
        ("prompt tokens", lambda r: f"{r.prompt_tokens:,}"),
        ("completion tokens", lambda r: f"{r.completion_tokens:,}"),
        ("cost", lambda r: "-" if r.cost is None else f"${r.cost:,.2f}"),
        ("time", lambda r: f"{r.seconds:.1f} s"),
    )
    for name, cell in rows:
        table.add_row(name, *(cell(r) for r in result.rounds))
    console.print(table)
    reasons = {}
    for r in result.rounds:
        for reason, count in r.retry_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    if reasons:
        console.print("retries by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    limits = [r.limits for r in result.rounds if r.limits]
    if limits:
        console.print(limits[-1], markup=False)
    n_completions = sum(r.n_completions for r in result.rounds)
    if n_completions:
        console.print(f"the server returned fewer samples than asked: {n_completions:,} sent again as n=1 requests")


@teach.command("import-batch")
@click.argument("batch_output", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--requests", "requests_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The Batch input file these outputs answer (what `teach --batch-api` wrote).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The teach output JSONL to append to.")
@click.option("--round", "round_index", type=click.IntRange(min=1), default=None,
              help="Teacher round of these answers [default: from the input's name, *.roundN.batch-input.jsonl, else 1].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Answer cache [env TINYTHINKER_CACHE_DIR, else ~/.cache/tinythinker/teacher].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def import_batch_command(batch_output, requests_path, out, round_index, cache_dir, as_json):
    """Check OpenAI Batch output file(s) and append their answers to --out (and the cache)."""
    from tinythinker.data.teacher.teach import import_batch

    if round_index is None:
        found = re.search(r"\.round(\d+)\.batch-input", requests_path.name)
        round_index = int(found.group(1)) if found else 1
    report = import_batch(batch_output, requests_path, out, round_index=round_index, cache_dir=cache_dir)
    if as_json:
        click.echo(json.dumps({"lines": report.lines, "imported": report.imported, "already": report.already, "failed": report.failed,
                               "failure_reasons": dict(report.failure_reasons), "missing": len(report.missing), "round": round_index}))
        return
    click.echo(f"Imported {report.imported:,} answers of round {round_index} into {out} ({report.already:,} were already there).")
    if report.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in report.failure_reasons.most_common())
        click.echo(f"{report.failed:,} Batch lines failed ({reasons}).")
    if report.missing:
        click.echo(f"{len(report.missing):,} requests have no answer yet; `teach ... --batch-api` writes them into a new Batch input.")
