"""A small, real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It answers ``POST /v1/chat/completions`` with completions in the teacher's format (``Key
Information: ...`` / ``Explanations: X is correct. Because ...``), written from the request itself:
the gold letter and the other options come from the user message, the wording from one of the
few-shot exemplars in the system message, so ``tinythinker build`` parses them like a real
teacher's. ``usage`` is counted with the model's real tokenizer when one is installed offline
(see ``tinythinker.data.teacher.cost``), else with the project's calibrated estimate (``usage="auto"``),
or cheaply as characters / 4 (``usage="chars"``, for throughput benchmarks).

Faults, each deterministic (every k-th request or sample, counted from the start):
``latency`` seconds from a request's arrival to its answer (the server's own work included); ``rate_limit_every`` (and ``rate_limit_first``: the first k
POSTs) -> 429 with ``Retry-After``;
``fail_every`` -> 500; ``drop_every`` -> the connection is closed without a reply;
``malformed_every`` -> a 200 whose body is not a chat completion; ``no_quota`` -> 429
``insufficient_quota`` for everything;
``truncate_every`` -> that sample is cut off with ``finish_reason: "length"`` (a sample longer
than ``max_tokens`` is cut too); ``ignore_n`` -> one choice whatever ``n`` says (``max_choices``
caps it at any number); ``api_key`` -> 401 for any other bearer token.

Rate limits as OpenAI reports them: ``limit_requests`` / ``limit_tokens`` (> 0) give the server a
bucket of that many requests / tokens that refills continuously in ``limit_window`` seconds (60: a
per-minute limit), and every reply (200 or 429) carries ``x-ratelimit-limit-*``,
``x-ratelimit-remaining-*`` (whole units, rounded down) and ``x-ratelimit-reset-*`` (the time until
the bucket is full, written as Go durations like OpenAI's: "1s", "6m0s", "20ms"). A request counts
1 request and characters / 4 + n x max_tokens tokens (OpenAI's rule) on arrival; one the bucket
cannot pay for gets 429 with ``Retry-After`` (``enforce_limits=False``: only report, never refuse).
``headers`` adds (or overrides) reply headers, ``"name=value,name=value"`` (e.g. a nonsense one).
Without ``limit_*`` no rate-limit header is sent, as with vLLM, Ollama or llama.cpp.

It counts what it received (``stats``): POSTs, replies by status, the sha256 of every body it
received and of every body it answered with 200 (of the bytes as sent: tinythinker's client sends
canonical JSON, so these are its ``request_hash`` values).

In a test::

    with serve(latency=0.05, rate_limit_every=7) as server:
        ... server.base_url ... server.stats["answered"] ...
        server.configure(fail_every=3)

From a shell (prints the base URL, serves until Ctrl-C or SIGTERM; ``GET /stats`` returns the counters)::

    python tests/openai_server.py --port 8000 --latency 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import math
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator

from aiohttp import web

if __package__ in (None, ""):  # run as a script from a checkout: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_GOLD_RE = re.compile(r"Explanations: ([A-Z]) is correct\. Because")
_WRONG_RE = re.compile(r"^([A-Z]) is incorrect\. Because", re.M)
_EXEMPLAR_RE = re.compile(r"Key Information: (.*?)\nExplanations: (.*?)\n###", re.S)


@dataclass
class Behaviour:
    latency: float = 0.0
    api_key: str | None = None
    rate_limit_every: int = 0
    rate_limit_first: int = 0  # the first k POSTs get 429 too
    no_quota: bool = False  # every POST -> 429 insufficient_quota (an empty account)
    retry_after: float = 0.2
    fail_every: int = 0
    drop_every: int = 0
    malformed_every: int = 0  # -> a 200 whose body is not a chat completion
    error_200: str = ""  # every POST -> a 200 carrying an error object with this code (some proxies answer so)
    oversized: int = 0  # > 0: every sample padded to this many characters, whatever max_tokens says
    truncate_every: int = 0
    ignore_n: bool = False
    max_choices: int | None = None
    usage: str = "auto"  # "auto" (real tokenizer if installed, else the project's estimate) or "chars"
    models: str = "test-teacher,gpt-4o-2024-05-13"  # what GET /v1/models lists (comma-separated)
    limit_requests: int = 0  # > 0: a bucket of this many requests, reported in x-ratelimit-*-requests headers
    limit_tokens: int = 0  # > 0: the same for tokens (x-ratelimit-*-tokens)
    limit_window: float = 60.0  # seconds in which an empty bucket refills completely
    enforce_limits: bool = True  # False: report the buckets but answer anyway
    headers: str = ""  # extra reply headers, "name=value,name=value" (override the rate-limit ones)


@dataclass
class Stats:
    posts: int = 0
    statuses: Counter = field(default_factory=Counter)
    received: Counter = field(default_factory=Counter)  # body sha256 -> times received
    answered: Counter = field(default_factory=Counter)  # body sha256 -> times answered with 200
    samples: int = 0
    truncated: int = 0
    dropped: int = 0
    malformed: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    post_times: list = field(default_factory=list)  # time.monotonic() of every POST
    limited: int = 0  # 429s because a rate-limit bucket could not pay for the request
    first_post: float | None = None
    last_reply: float | None = None

    def to_dict(self) -> dict:
        return {
            "posts": self.posts,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "distinct_bodies": len(self.received),
            "answered": sum(self.answered.values()),
            "samples": self.samples,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "malformed": self.malformed,
            "limited": self.limited,
            "max_in_flight": self.max_in_flight,
            "seconds": None if self.first_post is None or self.last_reply is None else self.last_reply - self.first_post,
        }


def go_duration(seconds: float) -> str:
    """Seconds as OpenAI writes its reset headers (Go's time.Duration): "1h2m3.5s", "6m0s", "1s",
    "20ms". Rounded up (to the microsecond), so a client never reads a shorter wait than the true one."""
    micros = math.ceil(max(0.0, seconds) * 1e6 - 1e-6)
    if micros < 1_000_000:
        return f"{micros / 1000:g}ms" if micros else "0s"
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if hours or minutes else ""
    return text + f"{rest / 1e6:.6f}".rstrip("0").rstrip(".") + "s"


def _exemplars(system: str) -> list[tuple[str, list[str]]]:
    """(key information, reasons) of each few-shot exemplar in a teacher system message."""
    blocks = (system + "\n").split("\n###\n")[1:]  # the instruction before the first block holds a template
    return [parsed for parsed in map(_exemplar, blocks) if parsed is not None]


@functools.lru_cache(maxsize=4096)
def _exemplar(block: str) -> tuple[str, list[str]] | None:
    match = _EXEMPLAR_RE.search(block + "\n###")
    if match is None:
        return None
    key, explanations = match.groups()
    reasons = [line.split("Because ", 1)[1].strip() for line in explanations.split("\n") if "Because " in line]
    return (key.strip(), reasons) if reasons else None


def teacher_completions(messages: list[dict], count: int, rng: random.Random) -> list[str]:
    """``count`` completions in the teacher's format for a teacher request (distinct wording per
    sample while exemplars last); a plain reply for anything else."""
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
    user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    gold = _GOLD_RE.search(user)
    exemplars = _exemplars(system)
    if gold is None or not exemplars:
        return [f"Reply {i + 1} to: {user[:60]}" for i in range(count)]
    letters = sorted({gold.group(1), *_WRONG_RE.findall(user)})
    order = rng.sample(range(len(exemplars)), len(exemplars))
    texts = []
    for i in range(count):
        key, reasons = exemplars[order[i % len(order)]]
        lines = [f"Key Information: {key}"]
        for j, letter in enumerate(letters):
            verdict = "correct" if letter == gold.group(1) else "incorrect"
            lines.append(("Explanations: " if j == 0 else "") + f"{letter} is {verdict}. Because {reasons[(j + i) % len(reasons)]}")
        texts.append("\n".join(lines))
    return texts


class FakeOpenAI:
    """The server object: ``base_url``, ``stats``, ``configure(**behaviour)``, ``reset_stats()``."""

    def __init__(self, behaviour: Behaviour | None = None):
        self.behaviour = behaviour or Behaviour()
        self.stats = Stats()
        self.base_url = ""
        self._counters: Counter = Counter()
        self._counter_cache: dict[str, object] = {}
        self._buckets: dict[str, list[float]] = {}  # kind -> [level, time of level]; full at the first request

    def configure(self, **changes) -> None:
        self.behaviour = replace(self.behaviour, **changes)

    def reset_stats(self) -> None:
        self.stats = Stats()
        self._counters = Counter()
        self._buckets = {}

    # --- rate limits --------------------------------------------------------------------------

    def _rate_limits(self, body: dict) -> tuple[bool, dict[str, str], float]:
        """Charge a request to the buckets: (allowed, x-ratelimit headers, seconds until it would be)."""
        behaviour = self.behaviour
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        chars = sum(len(str(m.get("content") or "")) for m in messages if isinstance(m, dict))
        try:
            tokens = chars // 4 + int(body.get("n") or 1) * int(body.get("max_tokens") or 0)
        except (TypeError, ValueError):
            tokens = chars // 4
        costs = {kind: (limit, cost) for kind, limit, cost in
                 (("requests", behaviour.limit_requests, 1), ("tokens", behaviour.limit_tokens, tokens)) if limit > 0}
        now = time.monotonic()
        wait = 0.0
        for kind, (limit, cost) in costs.items():
            bucket = self._buckets.setdefault(kind, [float(limit), now])
            rate = limit / behaviour.limit_window
            bucket[0], bucket[1] = min(float(limit), bucket[0] + (now - bucket[1]) * rate), now
            need = min(cost, limit)
            if bucket[0] < need:
                wait = max(wait, (need - bucket[0]) / rate)
        allowed = wait == 0.0 or not behaviour.enforce_limits
        headers = {}
        for kind, (limit, cost) in costs.items():
            bucket = self._buckets[kind]
            if allowed:
                bucket[0] -= cost
            rate = limit / behaviour.limit_window
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket[0])))
            headers[f"x-ratelimit-reset-{kind}"] = go_duration((limit - bucket[0]) / rate)
        for item in filter(None, behaviour.headers.split(",")):
            name, _, value = item.partition("=")
            headers[name.strip()] = value.strip()
        return allowed, headers, wait

    # --- token counting -----------------------------------------------------------------------

    def _counter(self, model: str):
        if model not in self._counter_cache:
            from tinythinker.data.teacher.cost import TokenCounter

            self._counter_cache[model] = TokenCounter(model)
        return self._counter_cache[model]

    def _count(self, model: str, text: str) -> int:
        if self.behaviour.usage == "chars":
            return max(1, len(text) // 4)
        return self._counter(model).count(text)

    def _count_prompt(self, model: str, messages: list[dict]) -> int:
        if self.behaviour.usage == "chars":
            return sum(len(str(m.get("content") or "")) for m in messages) // 4 + 3
        return self._counter(model).count_messages(messages)

    # --- HTTP ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        return app

    def _authorised(self, request: web.Request) -> bool:
        key = self.behaviour.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    @staticmethod
    def _error(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "code": None}}, status=status, headers=headers)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "Incorrect API key provided.", "invalid_request_error")
        models = [name for name in self.behaviour.models.split(",") if name]
        return web.json_response({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "tests"} for name in models]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_dict())

    def _every(self, name: str, every: int) -> bool:
        if every <= 0:
            return False
        self._counters[name] += 1
        return self._counters[name] % every == 0

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        stats, behaviour = self.stats, self.behaviour
        stats.posts += 1
        stats.post_times.append(time.monotonic())
        stats.first_post = stats.first_post or stats.post_times[-1]
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        # the latency is the time from arrival to the answer: the work of writing the answer is part of
        # it, not added to it (a fixed-latency server, whatever this process's load)
        deadline = time.monotonic() + behaviour.latency
        try:
            response = await self._answer(request, stats, behaviour, deadline)
            if response.status != 401:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            return response
        finally:
            stats.in_flight -= 1
            stats.last_reply = time.monotonic()

    async def _answer(self, request: web.Request, stats: Stats, behaviour: Behaviour, deadline: float) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            stats.statuses[400] += 1
            return self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        digest = hashlib.sha256(raw).hexdigest()  # tinythinker sends canonical JSON: this is its request_hash
        stats.received[digest] += 1
        if not self._authorised(request):
            stats.statuses[401] += 1
            return self._error(401, "Incorrect API key provided.", "invalid_request_error")
        if behaviour.no_quota:
            stats.statuses[429] += 1
            return web.json_response({"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                                                "code": "insufficient_quota"}}, status=429)
        allowed, limit_headers, wait = self._rate_limits(body)
        if not allowed:
            stats.statuses[429] += 1
            stats.limited += 1
            return self._error(429, "Rate limit reached for requests.", "requests",
                               {**limit_headers, "Retry-After": f"{max(0.001, wait):.3f}"})
        if self._every("drop", behaviour.drop_every):
            stats.dropped += 1
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            request.transport.close()  # the client sees the connection go away with no reply
            raise asyncio.CancelledError
        if self._every("rate_limit", behaviour.rate_limit_every) or stats.posts <= behaviour.rate_limit_first:
            stats.statuses[429] += 1
            return self._error(429, "Rate limit reached for requests.", "requests", {**limit_headers, "Retry-After": f"{behaviour.retry_after:g}"})
        if self._every("fail", behaviour.fail_every):
            stats.statuses[500] += 1
            return self._error(500, "The server had an error while processing your request.", "server_error", limit_headers)
        if behaviour.error_200:
            stats.statuses[200] += 1
            return web.json_response({"error": {"message": f"The proxy could not serve the request ({behaviour.error_200}).",
                                                "type": "proxy_error", "code": behaviour.error_200}}, headers=limit_headers)
        if self._every("malformed", behaviour.malformed_every):
            stats.malformed += 1
            return web.Response(text="<html>upstream hiccup</html>", content_type="text/html", headers=limit_headers)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            stats.statuses[400] += 1
            return self._error(400, "'messages' is a required property", "invalid_request_error", limit_headers)

        model = str(body.get("model", "test-teacher"))
        asked = int(body.get("n") or 1)
        given = 1 if behaviour.ignore_n else asked
        if behaviour.max_choices is not None:
            given = min(given, behaviour.max_choices)
        max_tokens = body.get("max_tokens")
        rng = random.Random(f"{digest}:{stats.answered[digest]}")
        choices, completion_tokens = [], 0
        for index, text in enumerate(teacher_completions(messages, given, rng)):
            if behaviour.oversized:  # a server that ignores max_tokens
                text, max_tokens = (text + " padding" * behaviour.oversized)[: behaviour.oversized], None
            tokens, finish = self._count(model, text), "stop"
            forced = self._every("truncate", behaviour.truncate_every)
            if forced or (max_tokens and tokens > max_tokens):
                keep = len(text) // 2 if forced else len(text) * max_tokens // tokens
                text = text[: max(1, keep)]
                tokens, finish = self._count(model, text), "length"
                stats.truncated += 1
            completion_tokens += tokens
            choices.append({"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish})
        prompt_tokens = self._count_prompt(model, messages)
        stats.samples += len(choices)
        stats.answered[digest] += 1
        stats.statuses[200] += 1
        reply = {
            "id": f"chatcmpl-{stats.statuses[200]:08d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_tests",
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        }
        return web.json_response(reply, headers={"x-request-id": f"req_{stats.posts:08d}", **limit_headers})


@contextlib.contextmanager
def serve(port: int = 0, **behaviour) -> Iterator[FakeOpenAI]:
    """Run a :class:`FakeOpenAI` on 127.0.0.1 in a background thread; yields it with ``base_url`` set."""
    server = FakeOpenAI(Behaviour(**behaviour))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def start() -> None:
        runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as error:  # noqa: BLE001 - reported to the starting thread
            holder["error"] = error
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(holder["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="fake-openai", daemon=True)
    thread.start()
    started.wait(30)
    if "error" in holder:
        raise holder["error"]
    server.base_url = f"http://127.0.0.1:{holder['port']}/v1"
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A small OpenAI-compatible test server on 127.0.0.1 (tinythinker tests).")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    for spec in fields(Behaviour):
        flag = "--" + spec.name.replace("_", "-")
        if spec.name == "enforce_limits":
            parser.add_argument("--no-enforce-limits", dest="enforce_limits", action="store_false")
        elif spec.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
        elif spec.name in ("api_key", "usage", "models", "headers"):
            parser.add_argument(flag, default=spec.default)
        else:
            caster = float if spec.name in ("latency", "retry_after", "limit_window") else int
            parser.add_argument(flag, type=caster, default=spec.default)
    args = vars(parser.parse_args(argv))
    port = args.pop("port")
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with serve(port, **args) as server:
        print(server.base_url, flush=True)
        done.wait()
        print(json.dumps(server.stats.to_dict()), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
