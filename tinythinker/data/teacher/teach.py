"""A teacher run: questions -> requests -> cache / client -> output file -> rounds.

Round 1 asks every chosen question (training questions by default; ``splits`` adds validation and
test ones for oracle evaluation) with ``requests.build_request``. Round r > 1 asks again only for
what ``select.select_rationales`` finds missing in the answers of rounds 1..r-1, with
``select.next_round_requests`` (``max_tokens`` doubled where samples were cut off). Each round
first takes what the output file already holds, then what the cache holds, and sends only the rest;
so a rerun of the same command after Ctrl-C, a crash or a SIGKILL continues where it stopped, and
a finished run sends nothing. Round r's requests depend only on the answers of earlier rounds, so
they are the same whether or not the run was interrupted.

The same loop serves the dry run (estimate the next round that has something to send) and the
Batch API (write that round's unanswered requests as a Batch input file; ``import_batch`` brings
the Batch output back into the output file).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence


from tinythinker.artifacts import atomic_write_text, iter_jsonl
from tinythinker.errors import TinyThinkerError, where
from tinythinker.data.sources import SPLITS, QuestionSet, load_questions
from tinythinker.data.teacher.cache import (
    ResponseCache,
    ResponsesFile,
    default_cache_dir,
    encode_response,
    iter_output_lines,
    output_line,
    output_line_text,
    request_hash,
    round_of,
    write_jsonl,
)
from tinythinker.data.teacher.client import DEFAULT_BASE_URL, Endpoint, Limits, Reply, RequestFailed, Stats, TeacherClient, check_completion
from tinythinker.data.teacher.cost import Estimate, TokenCounter, completion_forecast, estimate_requests, load_prices, price_for
from tinythinker.data.teacher.requests import build_request, exemplars

# OpenAI Batch API input limits (per file).
BATCH_MAX_REQUESTS = 50_000
BATCH_MAX_BYTES = 200 * 1024 * 1024


@dataclass
class TeachOptions:
    dataset: str
    out: Path
    model: str
    raw: str | None = None
    revision: str | None = None  # of a Hub --raw: branch, tag or commit id (None: main)
    splits: tuple[str, ...] = ("train",)
    limit: int | None = None  # at most this many questions of each split
    rounds: int = 1
    seed: int = 42
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"
    limits: Limits = field(default_factory=Limits)
    cache_dir: Path | None = None  # default: cache.default_cache_dir()
    prices: Path | None = None  # extra price table (YAML/JSON)


@dataclass
class RoundReport:
    round: int
    requests: int = 0
    already: int = 0  # already in the output file
    cached: int = 0  # taken from the cache
    to_send: int = 0
    answered: int = 0  # answered by the server in this run
    failed: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    failure_examples: dict[str, str] = field(default_factory=dict)  # reason -> one message
    retried: int = 0
    retry_reasons: Counter = field(default_factory=Counter)
    n_completions: int = 0
    http_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    seconds: float = 0.0
    limits: str | None = None  # the rate limits in force at the end of the round, and where they came from
    warnings: list[str] = field(default_factory=list)  # e.g. a nonsense rate-limit header (each said once)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["failure_reasons"] = dict(self.failure_reasons)
        out["retry_reasons"] = dict(self.retry_reasons)
        return out


@dataclass
class TeachResult:
    rounds: list[RoundReport] = field(default_factory=list)
    estimate: Estimate | None = None  # dry run: the next round with something to send
    estimate_round: int | None = None
    batch_file: Path | None = None
    complete: bool = False  # every round up to --rounds answered (or nothing left to ask)


# --- questions and requests ----------------------------------------------------------------------

def parse_splits(text: str | Sequence[str]) -> tuple[str, ...]:
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in names if s not in SPLITS]
    if unknown or not names:
        raise TinyThinkerError(f"--splits {','.join(names) or text!r}: choose among {', '.join(SPLITS)} (comma-separated)")
    return tuple(s for s in SPLITS if s in names)


def asked_questions(options: TeachOptions) -> QuestionSet:
    """The questions this run asks about: the chosen splits, at most ``limit`` of each, in file order."""
    questions = load_questions(options.dataset, options.raw, seed=options.seed, revision=options.revision)
    chosen = {split: list(questions.splits.get(split, []))[: options.limit] for split in options.splits}
    return dataclasses.replace(questions, splits=chosen)


def first_round_requests(questions: QuestionSet, options: TeachOptions) -> list[dict]:
    return [
        build_request(q, dataset=options.dataset, model=options.model, seed=options.seed)
        for q in questions.all()
    ]


def later_round_requests(questions: QuestionSet, options: TeachOptions, done_rounds: Mapping, round_index: int) -> list[dict]:
    """Requests of round ``round_index`` > 1 from the answers of the earlier rounds in the output file."""
    from tinythinker.data.teacher.responses import read_responses
    from tinythinker.data.teacher.select import next_round_requests, select_rationales

    asked = {q.id for q in questions.all()}
    with _lines_before(options.out, round_index, asked, done_rounds) as path:
        if path is None:
            return []
        responses = read_responses([path], questions)  # reads each line's round and max_tokens
    selection = select_rationales(questions, responses, seed=options.seed)
    return next_round_requests(selection, questions, model=options.model, seed=options.seed)


@contextlib.contextmanager
def _lines_before(out: Path, round_index: int, asked: set[str], done_rounds: Mapping) -> Iterator[Path | None]:
    """A path holding only the output lines of the asked questions from rounds before
    ``round_index`` (the output itself when it holds nothing else, else a temporary copy); None
    when there is no such line."""
    filtered = any(r >= round_index or custom_id not in asked for (custom_id, _), r in done_rounds.items())
    tmp = None
    try:
        handle = None
        if filtered:
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.before-round{round_index}.", dir=out.parent)
            handle = os.fdopen(fd, "w", encoding="utf-8")
        kept = 0
        for line in iter_output_lines(out):
            if round_of(line) >= round_index or line["custom_id"] not in asked:
                continue
            kept += 1
            if handle is not None:
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        if handle is not None:
            handle.close()
        yield (Path(tmp) if filtered else out) if kept else None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _rounds(questions: QuestionSet, options: TeachOptions, output: ResponsesFile) -> Iterator[tuple[int, list[dict]]]:
    """(round, requests) for rounds 1..options.rounds, computed lazily (round r after r-1 is answered)."""
    for round_index in range(1, options.rounds + 1):
        if round_index == 1:
            requests = first_round_requests(questions, options)
        else:
            requests = later_round_requests(questions, options, output.done, round_index)
        if not requests:
            return
        yield round_index, requests


# --- dry run -------------------------------------------------------------------------------------

def exemplar_answers(dataset: str) -> list[str]:
    """The answers the teacher is shown as examples, as it writes them (only their length is used:
    the forecast of one sample's completion tokens)."""
    return ["Key Information: " + e["Key Information"] + "\nExplanations: " + "\n".join(e["Explanations"]) for e in exemplars(dataset)]


def estimate(requests: Sequence[Mapping], options: TeachOptions, *, batch: bool = False, counter: TokenCounter | None = None) -> Estimate:
    counter = counter or TokenCounter(options.model)
    price = price_for(options.model, load_prices(options.prices))
    per_sample = completion_forecast(exemplar_answers(options.dataset), counter)
    return estimate_requests(requests, counter, tokens_per_sample=per_sample, price=price, batch=batch)


# --- the run -------------------------------------------------------------------------------------

def _cache(options: TeachOptions) -> ResponseCache:
    return ResponseCache(options.cache_dir or default_cache_dir())


def _take_known(hashed: Sequence[tuple[dict, str]], round_index: int, output: ResponsesFile, cache: ResponseCache, report: RoundReport,
                split_seed: int) -> list[tuple[dict, str]]:
    """Write cached answers into the output; return the (request, hash) pairs still to be asked."""
    pending = []
    for request, digest in hashed:
        if output.has(request["custom_id"], digest):
            report.already += 1
            continue
        cached = cache.get(digest)
        if cached is not None:
            output.append(output_line(request, cached, round_index=round_index, digest=digest, split_seed=split_seed))
            report.cached += 1
        else:
            pending.append((request, digest))
    report.to_send = len(pending)
    return pending


def _check_same_settings(hashed: Sequence[tuple[dict, str]], round_index: int, output: ResponsesFile) -> None:
    """Refuse to mix answers to differently made requests for one question and round in one file
    (another --model, --seed or prompt file): ``build`` would pool their samples."""
    asked = {(custom_id, done_round): digest for (custom_id, digest), done_round in output.done.items()}
    for request, digest in hashed:
        earlier = asked.get((request["custom_id"], round_index))
        if earlier is not None and earlier != digest:
            raise TinyThinkerError(
                f"{output.path} already holds a round-{round_index} answer for question {request['custom_id']} to a different request "
                "(another --model, --seed or prompt version); use the same settings to continue it, or another --out"
            )


def teach(
    options: TeachOptions,
    *,
    api_key: str | None = None,
    dry_run: bool = False,
    batch_api: bool = False,
    progress: Callable[[], RoundDisplay] | None = None,
) -> TeachResult:
    """Run (or estimate, or write the Batch input of) the teacher rounds of ``options``.

    ``progress``: a factory for the live display (``None``: no display). Requests that failed after
    their retries are counted in the round's report and stop the rounds there (``complete`` stays
    False; the answered ones are kept, and a rerun asks the rest). A :class:`TinyThinkerError` is
    raised for what ends a run at once (bad key, unreachable server, unusable files)."""
    questions = asked_questions(options)
    if not questions.all():
        raise TinyThinkerError(f"no {', '.join(options.splits)} questions to ask about in {options.dataset}; check --splits and --limit")
    cache = _cache(options)
    result = TeachResult()
    price = price_for(options.model, load_prices(options.prices))
    endpoint = Endpoint(options.base_url, api_key, options.api_key_env)
    with cache, ResponsesFile(options.out, readonly=dry_run) as output:
        for round_index, requests in _rounds(questions, options, output):
            report = RoundReport(round_index, requests=len(requests))
            result.rounds.append(report)
            hashed = [(r, request_hash(r)) for r in requests]
            _check_same_settings(hashed, round_index, output)
            if dry_run:
                pending = [(r, digest) for r, digest in hashed if not output.has(r["custom_id"], digest)]
                report.already = len(requests) - len(pending)
                report.cached = sum(1 for _, digest in pending if digest in cache)
                report.to_send = len(pending) - report.cached
                if report.to_send:
                    to_send = [r for r, digest in pending if digest not in cache]
                    result.estimate, result.estimate_round = estimate(to_send, options, batch=batch_api), round_index
                    return result
                continue  # a dry run writes nothing: later rounds cannot be known yet
            pending = _take_known(hashed, round_index, output, cache, report, options.seed)
            if not pending:
                continue
            if batch_api:
                result.batch_file = write_batch_input(options.out, round_index, [r for r, _ in pending], split_seed=options.seed)
                return result
            _send(pending, round_index, options, endpoint, output, cache, report, price, progress)
            if report.failed:
                return result
        result.complete = True
    return result


class _AnswerWriter:
    """Writes answers on a background thread, in batches every ``interval`` seconds: the cache
    first (one transaction per batch), then the output (one write per batch). Disk work stays off
    the event loop and costs a few syscalls per batch, not per answer. A kill loses only the answers
    still waiting (``interval``'s worth); Ctrl-C and normal ends write everything (``close``)."""

    def __init__(self, cache: ResponseCache, output: ResponsesFile, round_index: int, split_seed: int, interval: float = 0.02):
        self._cache, self._output, self._round, self._interval = cache, output, round_index, interval
        self._split_seed = split_seed
        self._pending: list[tuple[str, list[dict], dict]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="teach-writer", daemon=True)
        self._thread.start()

    def put(self, digest: str, members: list[dict], response: dict) -> None:
        if self._error is not None:
            raise self._error
        with self._lock:
            self._pending.append((digest, members, response))

    def _work(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch or self._error is not None:
            return
        try:
            encoded = [(digest, members, encode_response(response)) for digest, members, response in batch]
            self._cache.put_encoded((digest, text) for digest, _, text in encoded)  # first: never paid for twice
            self._output.append_texts(
                (member["custom_id"], digest, self._round, output_line_text(member, text, round_index=self._round, digest=digest,
                                                                    split_seed=self._split_seed))
                for digest, members, text in encoded for member in members
            )
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = error

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            error = self._error
            if isinstance(error, OSError):
                raise TinyThinkerError(f"cannot write answers ({error.strerror or error}); check free space and permissions of {self._output.path} and {self._cache.root}") from None
            raise error


def _send(pending, round_index, options, endpoint, output, cache, report, price, progress) -> None:
    """Ask the server for ``pending`` (deduplicated by body hash), writing each answer as it comes."""
    groups: dict[str, list[dict]] = {}
    for request, digest in pending:
        groups.setdefault(digest, []).append(request)
    unique = [members[0] for members in groups.values()]
    digest_of = {id(request): digest for digest, (request, *_) in groups.items()}
    display = progress() if progress is not None else None
    started = time.monotonic()
    writer = _AnswerWriter(cache, output, round_index, options.seed)

    def on_warning(message: str) -> None:
        report.warnings.append(message)
        if display is not None:
            display.warn(message)

    def on_reply(request: Mapping, reply: Reply) -> None:
        digest = digest_of[id(request)]
        writer.put(digest, groups[digest], reply.response)
        report.answered += len(groups[digest])
        if display is not None:
            display.advance(len(groups[digest]))

    def on_failure(request: Mapping, failure: RequestFailed) -> None:
        members = groups[digest_of[id(request)]]
        report.failed += len(members)
        report.failure_reasons[failure.reason] += len(members)
        report.failure_examples.setdefault(failure.reason, str(failure))
        if display is not None:
            display.advance(len(members), failed=len(members))

    async def main(client_holder: list) -> None:
        async with TeacherClient(endpoint, options.limits, seed=options.seed, on_warning=on_warning) as client:
            client_holder.append(client)
            await client.check(options.model)  # before any display: a wrong URL or key is one line, not a bar and a line
            if display is not None:
                display.start(round_index, total=report.requests, done=report.already + report.cached, cached=report.cached,
                              stats=lambda: client.stats, price=price, limits=client.limits_in_force)
            await client.run(unique, on_reply, on_failure)

    holder: list[TeacherClient] = []
    try:
        asyncio.run(main(holder))
    finally:
        writer.close()
        if display is not None:
            display.stop()
        if holder:
            stats = holder[0].stats
            report.limits = holder[0].limits_in_force()
            report.retried, report.retry_reasons = stats.retried, Counter(stats.retry_reasons)
            report.n_completions, report.http_requests = stats.n_completions, stats.http_requests
            report.prompt_tokens, report.completion_tokens = stats.prompt_tokens, stats.completion_tokens
            report.cost = None if price is None else price.cost(stats.prompt_tokens, stats.completion_tokens)
        report.seconds = time.monotonic() - started
        output.sync()


class RoundDisplay(Protocol):
    """What the round loop tells a live display (``commands/teach_display.py`` draws one with rich): the data layer
    only calls these."""

    def start(self, round_index: int, *, total: int, done: int, cached: int, stats: Callable[[], Stats], price,
              limits: Callable[[], str] | None = None) -> None: ...

    def warn(self, message: str) -> None: ...

    def advance(self, count: int = 1, *, failed: int = 0) -> None: ...

    def stop(self) -> None: ...


# --- Batch API -----------------------------------------------------------------------------------

def batch_input_path(out: Path, round_index: int) -> Path:
    """``teacher/csqa.jsonl`` -> ``teacher/csqa.round1.batch-input.jsonl``."""
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.round{round_index}.batch-input.jsonl")


def batch_input_meta_path(batch_input: Path) -> Path:
    """``csqa.round1.batch-input.jsonl`` -> ``csqa.round1.batch-input.json``: the split seed its questions
    were asked from (a Batch input line holds only what the Batch API takes)."""
    return batch_input.with_suffix(".json")


def write_batch_input(out: Path, round_index: int, requests: Sequence[dict], *, split_seed: int) -> Path:
    path = batch_input_path(out, round_index)
    write_jsonl(path, requests)
    atomic_write_text(batch_input_meta_path(path), json.dumps({"split_seed": split_seed, "round": round_index}) + "\n")
    return path


def _batch_split_seed(requests_path: Path) -> int | None:
    """The split seed recorded beside a Batch input file by ``teach --batch-api``; None when absent."""
    meta = batch_input_meta_path(requests_path)
    try:
        value = json.loads(meta.read_text(encoding="utf-8")).get("split_seed")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def batch_limits_warning(path: Path) -> str | None:
    lines = sum(1 for _ in path.open(encoding="utf-8"))
    size = path.stat().st_size
    if lines > BATCH_MAX_REQUESTS or size > BATCH_MAX_BYTES:
        return (f"{path} has {lines:,} requests / {size / 2**20:.0f} MiB; one Batch API job takes at most "
                f"{BATCH_MAX_REQUESTS:,} requests and {BATCH_MAX_BYTES // 2**20} MiB: split it (use --limit per run)")
    return None


@dataclass
class ImportReport:
    lines: int = 0
    imported: int = 0
    already: int = 0
    failed: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)  # custom_ids of requests with no output line


def import_batch(
    batch_outputs: Sequence[str | Path],
    requests_path: str | Path,
    out: str | Path,
    *,
    round_index: int = 1,
    cache_dir: str | Path | None = None,
) -> ImportReport:
    """Check OpenAI Batch output files against the Batch input they answer and append their good
    lines to ``out`` in our output format (and to the cache). Failed lines are counted, not written:
    those requests stay unanswered for the next ``teach`` run or Batch job."""
    requests: dict[str, tuple[dict, str]] = {}
    for number, request in iter_jsonl(requests_path, what="Batch input file"):
        custom_id, body = request.get("custom_id"), request.get("body")
        if not isinstance(custom_id, str) or not isinstance(body, dict):
            raise TinyThinkerError(f"{where(requests_path, number)}: not a Batch input line (custom_id, body)")
        if custom_id in requests:
            raise TinyThinkerError(f"{where(requests_path, number)}: custom_id {custom_id!r} appears twice; one Batch file holds one request per question")
        requests[custom_id] = (request, request_hash(request))
    split_seed = _batch_split_seed(Path(requests_path))
    report = ImportReport()
    with ResponseCache(cache_dir or default_cache_dir()) as cache, ResponsesFile(out) as output:
        for path in batch_outputs:
            for number, line in iter_jsonl(path, what="Batch output file"):
                report.lines += 1
                origin = where(path, number)
                custom_id = line.get("custom_id")
                if not isinstance(custom_id, str) or custom_id not in requests:
                    raise TinyThinkerError(f"{origin}: custom_id {custom_id!r} is not in {requests_path}; pass --requests the Batch input this output answers")
                request, digest = requests[custom_id]
                response = line.get("response")
                body = response.get("body") if isinstance(response, dict) else None
                status = response.get("status_code") if isinstance(response, dict) else None
                problem = None if status == 200 else f"status {status}" if status is not None else "no response"
                if problem is None:
                    problem = check_completion(body)
                if line.get("error") or problem:
                    error = line.get("error") if isinstance(line.get("error"), dict) else {}
                    report.failed += 1
                    report.failure_reasons[str(error.get("code") or problem or "error")] += 1
                    continue
                kept = {"status_code": 200, "request_id": response.get("request_id"), "body": body}
                cache.put(digest, kept)
                if output.append(output_line(request, kept, round_index=round_index, digest=digest, split_seed=split_seed)):
                    report.imported += 1
                else:
                    report.already += 1
        report.missing = sorted(cid for cid, (_, digest) in requests.items() if not output.has(cid, digest))
    return report
