"""Async client for any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, Ollama, TGI, llama.cpp).

It sends Batch-API-shaped request lines (``{"custom_id", "body"}``) with:

- bounded concurrency (at most ``concurrency`` HTTP requests in flight);
- rate limits: by default the server's own, read from OpenAI's ``x-ratelimit-*`` reply headers
  (:class:`ServerBudget`; a server that sends none, like vLLM, Ollama or llama.cpp, gets no
  requests- or tokens-per-minute limit beyond ``concurrency``); explicit ``rpm`` / ``tpm`` budgets
  replace them (:class:`RateBudget`: token buckets holding one second of rate). A request reserves
  ``chars/4 + n x max_tokens`` tokens before it is sent (OpenAI's own rule);
- retries with exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and
  malformed replies, honouring ``Retry-After`` / ``retry-after-ms`` (a 429 also pauses every worker);
- a per-request timeout;
- servers that ignore ``n``: fewer choices than asked are completed with ``n=1`` requests and the
  choices merged into one chat.completion (re-indexed, usage summed);
- one clear error, no retries, for a refused key (401/403) or an unknown model/path (404), and for a
  base URL nobody answers at (checked once before the run); unless ``GET /models`` already named
  the model, the first request goes alone, so a wrong model costs one request, not a wave.

The API key goes only into the ``Authorization`` header: it is never logged, stored or put into
an exception message (server messages are scrubbed of it too).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import aiohttp

from tinythinker.errors import TinyThinkerError
from tinythinker.data.teacher.cache import canonical_json
from tinythinker.data.teacher.cost import reservation_tokens

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
FATAL_STATUSES = frozenset({401, 403, 404})


class TeacherServerError(TinyThinkerError):
    """The server refused the whole run (bad key, unknown model or path, unreachable)."""


class RequestFailed(Exception):
    """One request could not be answered (after retries, or a non-retryable 4xx)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Endpoint:
    base_url: str = DEFAULT_BASE_URL  # includes the /v1 part, as in the OpenAI SDK
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str = "OPENAI_API_KEY"  # named in messages, never the key itself

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def models_url(self) -> str:
        return self.base_url.rstrip("/") + "/models"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def scrub(self, text: str) -> str:
        """Text from a server or an exception with the key removed (some servers echo it)."""
        if self.api_key:
            text = text.replace(self.api_key, "<redacted>")
        return text


@dataclass(frozen=True)
class Limits:
    concurrency: int = 32
    rpm: float | None = None  # None: the server's x-ratelimit-*-requests headers (no limit when it sends none)
    tpm: float | None = None  # None: the server's x-ratelimit-*-tokens headers (no limit when it sends none)
    timeout: float = 60.0  # seconds per HTTP request
    max_retries: int = 6
    backoff_base: float = 1.0  # first retry waits about this long, doubling each time
    backoff_max: float = 60.0
    burst_seconds: float = 1.0  # rate budgets hold this many seconds of rate (limits are enforced per second too)


@dataclass
class Stats:
    """Live counters (read by the progress display)."""

    http_requests: int = 0
    retried: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    n_completions: int = 0  # extra n=1 requests sent because the server returned fewer choices
    prompt_tokens: int = 0
    completion_tokens: int = 0
    warnings: list[str] = field(default_factory=list)  # each said once (e.g. a nonsense rate-limit header)
    oversized: int = 0  # replies far longer than their max_tokens allows

    def note_retry(self, reason: str) -> None:
        self.retried += 1
        self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + 1


class RateBudget:
    """Token bucket: ``per_minute`` units, holding ``burst_seconds`` of rate. A request larger than
    the bucket waits for a full bucket and leaves it in debt, so the long-run rate stays right."""

    def __init__(self, per_minute: float, burst_seconds: float = 1.0, *, start_full: bool = True):
        if per_minute <= 0:
            raise ValueError("a rate budget must be positive")
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity if start_full else min(1.0, self.capacity)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()
        self.paused_until = 0.0

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, amount: float) -> None:
        async with self._lock:  # waiters are served in order
            while True:
                now = time.monotonic()
                if now < self.paused_until:
                    await asyncio.sleep(self.paused_until - now)
                    continue
                self._refill()
                need = min(amount, self.capacity)
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)

    def settle(self, reserved: float, used: float) -> None:
        """Give back what a request reserved but did not use (or take what it used beyond it)."""
        self._refill()
        self.level = min(self.capacity, self.level + reserved - used)

    def done(self, reserved: float, used: float) -> None:
        """A request that reserved ``reserved`` has its answer (or failed): settle what it used."""
        if reserved != used:
            self.settle(reserved, used)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


class ServerBudget:
    """One of the server's rate limits (requests or tokens), as its ``x-ratelimit-*`` headers say.

    Until a reply carries the headers there is no limit (a server that never sends them, like vLLM,
    Ollama or llama.cpp, is limited by the concurrency alone). After one, it mirrors the server's
    bucket: ``limit`` units that refill continuously (OpenAI's limiter: ``reset`` is the time until
    the bucket is full again). Each observation sets the level to ``remaining`` less what is still in
    flight (the server may not have counted it yet), and the level refills at a rate estimated from
    ``(limit - remaining) / reset``. ``remaining`` is a whole number below the server's true level
    (at most one unit below), so ``(limit - remaining - 1) / reset`` is a lower bound on the rate:
    the client's model stays at or below the server's bucket and never sends into a 429 by its own
    count. Waiters are served in order; a 429's ``Retry-After`` pauses everyone (:meth:`pause`)."""

    def __init__(self, kind: str):
        self.kind = kind  # "requests" or "tokens": the header suffix
        self.limit: float | None = None
        self.level = 0.0
        self.rate = 0.0  # units per second
        self._bound = 0.0  # best lower bound of the rate seen since the limit last changed
        self._updated = time.monotonic()
        self.outstanding = 0.0  # reserved by requests still waiting or in flight
        self.paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, amount: float) -> None:
        if self.limit is None and time.monotonic() >= self.paused_until:  # the common case for local servers: free
            self.outstanding += amount
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self.paused_until:
                    await asyncio.sleep(self.paused_until - now)
                    continue
                if self.limit is None:
                    break
                self._refill(now)
                need = min(amount, self.limit)
                if self.level >= need:
                    self.level -= amount
                    break
                # look again at least twice a second: replies in the meantime may say there is room
                await asyncio.sleep(min(0.5, max(0.001, (need - self.level) / self.rate)))
        self.outstanding += amount

    def done(self, reserved: float, used: float) -> None:
        self.outstanding -= reserved

    def observe(self, limit: float, remaining: float, reset: float | None) -> None:
        """What one reply's headers said (call :meth:`done` for that request first)."""
        now = time.monotonic()
        remaining = min(remaining, limit)
        if limit != self.limit:
            self.limit, self._bound = limit, 0.0
            self.rate = limit / 60.0  # OpenAI's limits are per minute; refined below
        deficit = limit - remaining
        if reset is not None and reset > 0 and deficit >= 1:
            if deficit >= 2:
                self._bound = max(self._bound, (deficit - 1) / reset)
                self.rate = self._bound
            elif self._bound == 0.0:
                self.rate = deficit / reset  # one unit used (a fresh bucket): the only figure there is
        self.level = remaining - self.outstanding
        self._updated = now

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


_DURATION = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h|d)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str) -> float | None:
    """Seconds from an ``x-ratelimit-reset-*`` value: a Go duration as OpenAI writes it ("1s", "6m0s",
    "20ms", "1h2m3.5s") or plain seconds ("0.5"); None for anything else (negative, NaN, words)."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        if not text or not re.fullmatch(f"(?:{_DURATION.pattern})+", text):
            return None
        seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _header_number(value: str, *, positive: bool) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        return None
    return number


def describe_limits(limits: "Limits") -> str:
    """Where a run's rate limits come from, before it starts (the dry run says this)."""
    headers = "read from the server's x-ratelimit headers at run time; none if it sends none"
    if limits.rpm is not None and limits.tpm is not None:
        return f"{limits.rpm:,.0f} rpm / {limits.tpm:,.0f} tpm (--rpm / --tpm)"
    if limits.rpm is not None:
        return f"{limits.rpm:,.0f} rpm (--rpm); tokens per minute {headers}"
    if limits.tpm is not None:
        return f"{limits.tpm:,.0f} tpm (--tpm); requests per minute {headers}"
    return f"{headers} (then only --concurrency {limits.concurrency} bounds the rate)"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _error_message(text: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        data = json.loads(text)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    except ValueError:
        pass
    return " ".join(text.split())[:300]


def _error_code(text: str) -> str | None:
    """The ``error.code`` (or ``error.type``) of an OpenAI-style error body."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return code if isinstance(code, str) else None
    return None


# error codes or types of a 200 error object that may pass on a retry (anything else is the request's own fault)
TRANSIENT_ERROR_WORDS = ("server", "overload", "rate", "timeout", "unavailable", "busy", "capacity", "internal")
OVERSIZED_CHARS_PER_TOKEN = 20  # a token is about 4 characters of English; 20 leaves room for any tokenizer


def check_completion(data) -> str | None:
    """None when ``data`` looks like a chat.completion with choices, else what is wrong."""
    if not isinstance(data, dict):
        return "reply is not a JSON object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "reply has no choices"
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            return "a choice has no message"
        content = choice["message"].get("content")
        if content is not None and not isinstance(content, str):
            return "a choice's content is not text"
    return None


def _listed_models(text: str) -> set[str]:
    """Model ids of a ``GET /models`` reply (``{"data": [{"id": ...}]}``); empty when it is not one."""
    try:
        data = json.loads(text).get("data")
    except (ValueError, AttributeError):
        return set()
    return {item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)} if isinstance(data, list) else set()


def _usage(reply: dict, key: str) -> int:
    """A token count from a reply's ``usage`` (0 when the server does not say)."""
    usage = reply.get("usage")
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def merge_choices(replies: list[dict], n: int) -> dict:
    """One chat.completion from a reply and the n=1 replies that completed it: the first ``n``
    choices re-indexed, usage summed."""
    merged = dict(replies[0])
    choices = [choice for reply in replies for choice in reply["choices"]][:n]
    merged["choices"] = [{**choice, "index": index} for index, choice in enumerate(choices)]
    if any(isinstance(reply.get("usage"), dict) for reply in replies):
        merged["usage"] = {key: sum(_usage(reply, key) for reply in replies) for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return merged


@dataclass
class _Attempt:
    """One HTTP attempt's outcome (``TeacherClient._attempt``)."""

    status: int | None = None  # None: no HTTP reply (see reason / message)
    headers: Mapping[str, str] | None = None
    data: dict | None = None  # a well-formed chat.completion (status 200)
    text: str = ""  # the body of a non-200 reply
    reason: str = "none"
    message: str = ""
    no_quota: bool = False
    tokens_used: int = 0  # prompt + completion tokens the reply's usage reports
    final: bool = False  # an error that asking again will not change (a 200 carrying a request error)


@dataclass
class Reply:
    """A request's answer: ``response`` is ``{"status_code", "request_id", "body"}`` (Batch output shape)."""

    response: dict
    http_requests: int


class TeacherClient:
    """Use as ``async with TeacherClient(endpoint, limits) as client: await client.run(...)``."""

    def __init__(self, endpoint: Endpoint, limits: Limits = Limits(), *, seed: int = 0,
                 on_warning: Callable[[str], None] | None = None):
        self.endpoint = endpoint
        self.limits = limits
        self.stats = Stats()
        self._on_warning = on_warning  # called once per warning (also kept in stats.warnings)
        self._jitter = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._requests: RateBudget | ServerBudget | None = None
        self._tokens: RateBudget | ServerBudget | None = None
        self._paced_by_headers: tuple[ServerBudget, ...] = ()
        self._replies = 0  # HTTP replies received (any status)
        self._bad_headers: set[str] = set()  # nonsense rate-limit headers already warned about
        self._first_reply: asyncio.Event | None = None  # set once the server has answered one request
        self._probing = False
        self._refused_in_a_row = 0  # connections refused since the server last answered

    async def __aenter__(self) -> "TeacherClient":
        connector = aiohttp.TCPConnector(limit=self.limits.concurrency, limit_per_host=self.limits.concurrency, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, headers=self.endpoint.headers())
        self._in_flight = asyncio.Semaphore(self.limits.concurrency)
        self._first_reply = asyncio.Event()
        # Explicit budgets: the request budget starts nearly empty (the run ramps up at the budgeted rate
        # from its first second); the token budget starts full (a single request may need a whole
        # second of it). Without them, the server's x-ratelimit headers set the pace.
        self._requests = (ServerBudget("requests") if self.limits.rpm is None
                          else RateBudget(self.limits.rpm, self.limits.burst_seconds, start_full=False))
        self._tokens = ServerBudget("tokens") if self.limits.tpm is None else RateBudget(self.limits.tpm, self.limits.burst_seconds)
        self._paced_by_headers = tuple(b for b in (self._requests, self._tokens) if isinstance(b, ServerBudget))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- rate limits -----------------------------------------------------------------------------

    def limits_in_force(self) -> str:
        """The rate limits pacing the run now, and where they come from (for the live display), e.g.
        ``limits: 500 rpm / 30,000 tpm (server headers)``."""
        parts = []
        for budget, unit, flag in ((self._requests, "rpm", "--rpm"), (self._tokens, "tpm", "--tpm")):
            if isinstance(budget, RateBudget):
                parts.append((f"{budget.per_minute:,.0f} {unit}", flag))
            elif budget is not None and budget.limit is not None:
                parts.append((f"{budget.limit:,.0f} {unit}", "server headers"))
            else:
                parts.append((f"no {unit} limit", None))
        concurrency = f"concurrency {self.limits.concurrency}"
        if all(source is None for _, source in parts):
            if not self._replies:
                return f"limits: from the server's x-ratelimit headers once it answers; {concurrency}"
            return f"limits: none (server sends no limit headers; {concurrency})"
        sources = {source for _, source in parts if source is not None}
        if len(sources) == 1 and all(source is not None for _, source in parts):
            flags = " / ".join(source for _, source in parts) if sources != {"server headers"} else "server headers"
            return f"limits: {parts[0][0]} / {parts[1][0]} ({flags})"
        text = " / ".join(f"{value} ({source})" if source else value for value, source in parts)
        return f"limits: {text}; {concurrency}"

    def _check_length(self, data: dict, body: dict) -> None:
        """Flag a reply far beyond the ``max_tokens`` it was asked with (kept: the build rejects it as too_long)."""
        asked = body.get("max_tokens")
        longest = max((len(c["message"].get("content") or "") for c in data["choices"]), default=0)
        if isinstance(asked, int) and longest > OVERSIZED_CHARS_PER_TOKEN * asked:
            self.stats.oversized += 1
            if self.stats.oversized == 1:
                self._warn(f"a reply of {longest:,} characters came for max_tokens {asked} (more than {OVERSIZED_CHARS_PER_TOKEN} "
                           "characters a token): the server ignores max_tokens; build rejects such samples as too_long")

    def _warn(self, message: str) -> None:
        self.stats.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)

    def _observe_limits(self, headers: Mapping[str, str]) -> None:
        """Pace the header-paced budgets by a reply's ``x-ratelimit-*`` headers. A header with a
        nonsense value is ignored (with its budget's other headers of that reply), with one warning."""
        for budget in self._paced_by_headers:
            names = [f"x-ratelimit-{part}-{budget.kind}" for part in ("limit", "remaining", "reset")]
            raw = [headers.get(name) for name in names]
            if raw[0] is None or raw[1] is None:
                continue  # the server does not send (enough of) this limit
            limit = _header_number(raw[0], positive=True)
            remaining = _header_number(raw[1], positive=False)
            reset = None if raw[2] is None else parse_duration(raw[2])
            unusable = f"no {budget.kind} limit is read from the headers (429s are still honoured)"
            bad = [(name, value, what, effect) for name, value, parsed, what, effect in (
                (names[0], raw[0], limit, f"a positive number of {budget.kind}", unusable),
                (names[1], raw[1], remaining, f"a number of {budget.kind}", unusable),
                (names[2], raw[2], reset if raw[2] is not None else 0.0, 'a duration such as "1s", "6m0s" or "20ms"',
                 f"the {budget.kind} limit is taken to refill once a minute"),
            ) if parsed is None]
            for name, value, what, effect in bad:
                if name not in self._bad_headers:
                    self._bad_headers.add(name)
                    shown = self.endpoint.scrub(value)[:40]
                    self._warn(f"ignoring the server's {name} header: {shown!r} is not {what}; {effect} (said once)")
            if limit is None or remaining is None:
                continue
            budget.observe(limit, remaining, reset)

    # --- one run ---------------------------------------------------------------------------------

    async def check(self, model: str | None = None) -> None:
        """Before sending anything: is someone answering at the base URL, and does it accept the key?

        Any HTTP answer to ``GET /models`` but 401/403 is fine (some servers have no /models). When
        the list names ``model``, key and model are known good: the first request need not go alone."""
        url = self.endpoint.models_url
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=min(self.limits.timeout, 30.0))) as reply:
                status, text = reply.status, await reply.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise TeacherServerError(
                f"cannot reach the teacher at {self.endpoint.base_url} ({self._describe(error)}); check --base-url (it ends in /v1) and that the server is running"
            ) from None
        if status in (401, 403):
            raise self._auth_error(status, text)
        if status == 200 and model is not None and model in _listed_models(text):
            self._first_reply.set()

    async def run(
        self,
        requests: Iterable[Mapping],
        on_reply: Callable[[Mapping, Reply], None],
        on_failure: Callable[[Mapping, RequestFailed], None],
    ) -> None:
        """Answer every request; ``on_reply`` / ``on_failure`` are called once per request, in the
        event loop's thread, as each finishes. A :class:`TeacherServerError` stops the whole run."""
        queue: asyncio.Queue = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)

        async def worker() -> None:
            while True:
                try:
                    request = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    reply = await self.complete(request)
                except RequestFailed as failure:
                    on_failure(request, failure)
                else:
                    on_reply(request, reply)

        workers = [asyncio.ensure_future(worker()) for _ in range(max(1, min(self.limits.concurrency, queue.qsize())))]
        try:
            await _gather_or_cancel(workers)
        finally:
            for task in workers:
                task.cancel()

    async def complete(self, request: Mapping) -> Reply:
        """One request, with the missing choices completed by n=1 requests when the server ignores ``n``."""
        body = dict(request["body"])
        n = int(body.get("n") or 1)
        first, request_id = await self._post(body)
        replies = [first]
        missing = n - len(first["choices"])
        if missing > 0:
            self.stats.n_completions += missing
            single = {**body, "n": 1}
            extra = await _gather_or_cancel([asyncio.ensure_future(self._post(single)) for _ in range(missing)])
            replies += [reply for reply, _ in extra]
        merged = merge_choices(replies, n) if len(replies) > 1 or len(first["choices"]) > n else first
        return Reply({"status_code": 200, "request_id": request_id, "body": merged}, len(replies))

    # --- one HTTP request with retries -----------------------------------------------------------

    async def _wait_for_first_reply(self) -> bool:
        """The first request of a run goes alone (True: this one); the others wait until the server
        has answered it, so a wrong model or key costs one request, not a wave of them."""
        if self._first_reply.is_set():
            return False
        if not self._probing:
            self._probing = True
            return True
        await self._first_reply.wait()
        return False

    async def _post(self, body: dict) -> tuple[dict, str | None]:
        probe = await self._wait_for_first_reply()
        try:
            result = await self._post_with_retries(body, probe)
        except TeacherServerError:
            raise  # the run stops: the others never leave the gate
        except BaseException:
            if probe:
                self._first_reply.set()
            raise
        if probe:
            self._first_reply.set()
        return result

    async def _post_with_retries(self, body: dict, probe: bool) -> tuple[dict, str | None]:
        reserved = reservation_tokens(body)
        last, reason, wait = "no attempt", "none", None
        payload = canonical_json(body)
        for attempt in range(self.limits.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, wait))
            wait = None
            await self._requests.acquire(1)
            try:
                await self._tokens.acquire(reserved)
            except BaseException:
                self._requests.done(1, 1)
                raise
            reply = _Attempt()
            try:
                reply = await self._attempt(payload, probe)
            finally:  # the budgets learn what this attempt used, and what the server's headers say
                self._requests.done(1, 1)
                self._tokens.done(reserved, (reply.tokens_used or reserved) if reply.data is not None else 0)
                if reply.headers is not None and self._paced_by_headers:
                    self._observe_limits(reply.headers)
            status, text = reply.status, reply.text
            if reply.data is not None:
                self.stats.prompt_tokens += _usage(reply.data, "prompt_tokens")
                self.stats.completion_tokens += _usage(reply.data, "completion_tokens")
                self._check_length(reply.data, body)
                return reply.data, reply.headers.get("x-request-id")
            if status is None or status == 200:  # no reply, or a malformed one
                reason, last = reply.reason, reply.message
                if reply.final:
                    raise RequestFailed(reason, last)
            elif status in FATAL_STATUSES:
                if status == 404:
                    raise TeacherServerError(
                        f"{self.endpoint.chat_url} answered 404 ({self.endpoint.scrub(_error_message(text))}); check --model and --base-url"
                    )
                raise self._auth_error(status, text)
            elif reply.no_quota:
                raise TeacherServerError(
                    f"{self.endpoint.base_url} says the account has no quota left (HTTP 429 insufficient_quota: "
                    f"{self.endpoint.scrub(_error_message(text))}); add credit or use another key, then run the same command again"
                )
            elif status in RETRY_STATUSES:
                reason, last = str(status), f"HTTP {status}: {self.endpoint.scrub(_error_message(text))}"
                wait = retry_after_seconds(reply.headers)
                if status == 429 and wait is not None:
                    self._requests.pause(wait)  # everyone waits: the server said so
            else:
                raise RequestFailed(str(status), f"HTTP {status}: {self.endpoint.scrub(_error_message(text))}")
            if attempt < self.limits.max_retries:
                self.stats.note_retry(reason)
        raise RequestFailed(reason, f"gave up after {self.limits.max_retries + 1} attempts; last: {last}")

    async def _attempt(self, payload: bytes, probe: bool) -> "_Attempt":
        """One HTTP request: the reply (its status and headers, and the completion when it is a good
        one), or why there was none."""
        try:
            async with self._in_flight:
                self.stats.http_requests += 1
                async with self._session.post(
                    self.endpoint.chat_url, data=payload, timeout=aiohttp.ClientTimeout(total=self.limits.timeout)
                ) as reply:
                    status, headers, raw = reply.status, reply.headers, await reply.read()
        except asyncio.TimeoutError:
            return _Attempt(reason="timeout", message=f"no reply within {self.limits.timeout:g} s (--timeout)")
        except aiohttp.ClientConnectorError as error:  # nobody accepts connections (any more)
            message = self._describe(error)
            self._refused_in_a_row += 1
            if self._refused_in_a_row >= max(20, 2 * self.limits.concurrency):
                raise TeacherServerError(
                    f"lost the teacher at {self.endpoint.base_url}: {self._refused_in_a_row} connections in a row failed ({message}); "
                    "the answers so far are saved: run the same command again when the server is back"
                ) from None
            return _Attempt(reason="connection", message=message)
        except (aiohttp.ClientError, OSError) as error:
            return _Attempt(reason="connection", message=self._describe(error))
        self._replies += 1
        self._refused_in_a_row = 0
        text = "" if status == 200 else raw.decode("utf-8", "replace")
        no_quota = status == 429 and _error_code(text) == "insufficient_quota"  # billing, not rate: waiting will not help
        if probe and status not in FATAL_STATUSES and not no_quota:
            self._first_reply.set()  # the server answers and accepts model and key: open the gate
        if status != 200:
            return _Attempt(status, headers, text=text, no_quota=no_quota)
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("error") and not data.get("choices"):
            # some servers answer 200 with an error object: say what the server said, and retry only what may pass
            body = raw.decode("utf-8", "replace")
            error = data["error"] if isinstance(data["error"], dict) else {}
            code = error.get("code") or error.get("type") or ""
            transient = (isinstance(code, int) and (code >= 500 or code == 429)) or \
                (isinstance(code, str) and any(word in code.lower() for word in TRANSIENT_ERROR_WORDS))
            return _Attempt(status, headers, reason="error_reply", final=not transient,
                            message=f"the server answered 200 with an error ({self.endpoint.scrub(_error_message(body))}"
                                    f"{f'; code {code}' if code else ''})")
        problem = check_completion(data)
        if problem is not None:
            return _Attempt(status, headers, reason="bad_reply", message=f"malformed reply ({problem})")
        return _Attempt(status, headers, data=data, tokens_used=_usage(data, "prompt_tokens") + _usage(data, "completion_tokens"))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server gave one (plus up to 10% jitter), else exponential with jitter."""
        if retry_after is not None:
            return retry_after * (1.0 + 0.1 * self._jitter.random())
        ceiling = min(self.limits.backoff_max, self.limits.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + self._jitter.random() * ceiling / 2

    def _auth_error(self, status: int, text: str) -> TeacherServerError:
        detail = self.endpoint.scrub(_error_message(text))
        if self.endpoint.api_key:
            fix = f"check the key in ${self.endpoint.api_key_env} (or name another variable with --api-key-env)"
        else:
            fix = f"set ${self.endpoint.api_key_env} to your API key (or name another variable with --api-key-env)"
        return TeacherServerError(f"{self.endpoint.base_url} refused the API key (HTTP {status}: {detail}); {fix}")

    def _describe(self, error: BaseException) -> str:
        text = str(error) or error.__class__.__name__
        return self.endpoint.scrub(f"{error.__class__.__name__}: {text}" if str(error) else text)


async def _gather_or_cancel(tasks: list[asyncio.Future]) -> list:
    """Like gather, but the first exception cancels the other tasks before it is raised."""
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

