"""Token counts and prices: what a teacher run will cost before it starts, and what it cost after.

Prompt tokens are counted with the model's real tokenizer when one is available offline
(``tiktoken`` with its encoding file already cached, or ``bpe-openai``, which ships the
encodings inside its wheel); otherwise with a word-piece estimate calibrated on ``o200k_base``
(within about 3.5% on English prompts and rationales; ``benchmarks/teacher.py`` measures it).
Completion tokens cannot be counted before the teacher writes them: the forecast is the length of
the data set's few-shot exemplar answers (what the instruction asks the teacher to imitate),
capped at ``max_tokens``; the upper bound ``n x max_tokens`` is shown beside it.

Prices are USD per million tokens. The built-in table can be extended or overridden with a
YAML/JSON file (``--prices FILE``): ``{model: {input: 2.5, output: 10.0}}``.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from tinythinker.errors import TinyThinkerError

# USD per 1M tokens (OpenAI list prices, standard tier). Batch API requests cost half.
BUILTIN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-2024-05-13": (5.00, 15.00),  # the paper's teacher
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "chatgpt-4o-latest": (5.00, 15.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
BATCH_DISCOUNT = 0.5

# Model name prefix -> tiktoken encoding (the same rule tiktoken.encoding_for_model applies).
_ENCODING_PREFIXES = (
    ("gpt-4o", "o200k_base"), ("chatgpt-4o", "o200k_base"), ("gpt-4.1", "o200k_base"), ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"), ("o1", "o200k_base"), ("o3", "o200k_base"), ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-3.5", "cl100k_base"),
)
_TIKTOKEN_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}

# OpenAI chat format overhead (tokens per message and for priming the reply), as in OpenAI's cookbook.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


@dataclass(frozen=True)
class Price:
    model: str  # the table entry used (may be a prefix of the requested model)
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        usd = (prompt_tokens * self.input + completion_tokens * self.output) / 1e6
        return usd * BATCH_DISCOUNT if batch else usd


def load_prices(path: str | Path | None = None) -> dict[str, tuple[float, float]]:
    """The built-in price table with the user's file (YAML or JSON) merged over it."""
    prices = dict(BUILTIN_PRICES)
    if path is None:
        return prices
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TinyThinkerError(f"{path}: cannot read the price file ({error.strerror or error.__class__.__name__})") from None
    try:
        import yaml

        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except Exception as error:  # noqa: BLE001 - any parse error is the user's file
        raise TinyThinkerError(f"{path}: not valid YAML/JSON ({error.__class__.__name__}); write `model: {{input: USD, output: USD}}` per 1M tokens") from None
    if not isinstance(data, dict):
        raise TinyThinkerError(f"{path}: expected a mapping of model -> {{input: USD, output: USD}} per 1M tokens")
    for model, entry in data.items():
        if not isinstance(entry, dict) or set(entry) != {"input", "output"}:
            raise TinyThinkerError(f"{path}: model {model!r} needs exactly `input` and `output` (USD per 1M tokens)")
        values = entry["input"], entry["output"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v) for v in values):
            raise TinyThinkerError(f"{path}: model {model!r}: input and output must be non-negative numbers (USD per 1M tokens)")
        prices[str(model)] = (float(values[0]), float(values[1]))
    return prices


def price_for(model: str, prices: Mapping[str, tuple[float, float]] | None = None) -> Price | None:
    """The model's price: an exact entry, else the longest entry that is a dash-prefix of it
    (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``); None when the table does not know it."""
    prices = BUILTIN_PRICES if prices is None else prices
    if model in prices:
        return Price(model, *prices[model])
    candidates = [name for name in prices if model.startswith(name + "-")]
    if not candidates:
        return None
    best = max(candidates, key=len)
    return Price(best, *prices[best])


# --- token counting ------------------------------------------------------------------------------

def encoding_name(model: str) -> str | None:
    for prefix, name in _ENCODING_PREFIXES:
        if model.startswith(prefix):
            return name
    return None


def _tiktoken_encoder(name: str):
    """tiktoken's encoding if tiktoken is installed and the encoding file is already cached
    (tiktoken would otherwise download it: we never reach for the network to count tokens)."""
    try:
        import hashlib

        import tiktoken
    except ImportError:
        return None
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    url = _TIKTOKEN_URLS.get(name)
    if url is None or not os.path.exists(os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())):
        return None
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # noqa: BLE001 - a broken cache means: fall back to the next counter
        return None


def _bpe_openai_encoder(name: str):
    try:
        import bpe_openai
    except ImportError:
        return None
    try:
        return bpe_openai.get_encoding(name)
    except Exception:  # noqa: BLE001
        return None


# Pre-tokenisation close to o200k's: words with one leading non-letter, digit runs, punctuation runs, spaces.
_PIECE_RE = re.compile(r"[^\r\n\w]?[^\W\d_]+(?:'(?:s|t|re|ve|m|ll|d))?|\d{1,3}| ?[^\s\w]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+", re.I)
_WHOLE_WORD_CHARS = 10  # a word up to this long is one token ...
_CHARS_PER_EXTRA_TOKEN = 4  # ... a longer one costs one more token per 4 characters (fit on o200k_base)


def estimate_tokens(text: str) -> int:
    """Word-piece token estimate (no vocabulary needed), calibrated against o200k_base."""
    count = 0
    for piece in _PIECE_RE.findall(text):
        word = piece.lstrip(" ")
        if len(word) > _WHOLE_WORD_CHARS and (word[0].isalpha() or word[1:2].isalpha()):
            count += 1 + -(-(len(word) - _WHOLE_WORD_CHARS) // _CHARS_PER_EXTRA_TOKEN)
        else:
            count += 1
    return count


class TokenCounter:
    """Counts tokens for one model: its real tokenizer when available offline, else the estimate.

    ``method`` says which (shown in the dry run and recorded by the benchmark)."""

    def __init__(self, model: str, *, exact: bool = True):
        self.model = model
        name = encoding_name(model)
        encoder, source = None, ""
        if exact and name is not None:
            for source, load in (("tiktoken", _tiktoken_encoder), ("bpe-openai", _bpe_openai_encoder)):
                encoder = load(name)
                if encoder is not None:
                    break
        self._encoder = encoder
        if encoder is not None:
            self.method = f"{name} ({source})"
        else:
            self.method = "estimate (word pieces, calibrated on o200k_base)"

    @property
    def exact(self) -> bool:
        return self._encoder is not None

    def count(self, text: str) -> int:
        if self._encoder is not None:
            return len(self._encoder.encode(text, disallowed_special=()))
        return estimate_tokens(text)

    def count_messages(self, messages: Iterable[Mapping]) -> int:
        """Prompt tokens of a chat request: contents and roles plus the chat format's overhead."""
        total = TOKENS_PER_REPLY
        for message in messages:
            total += TOKENS_PER_MESSAGE + self.count(str(message.get("role", ""))) + self.count(str(message.get("content") or ""))
            if message.get("name"):
                total += 1 + self.count(str(message["name"]))
        return total


def reservation_tokens(body: Mapping) -> int:
    """Cheap upper-bound-ish token figure for rate limiting before a request is sent: characters / 4
    (the rule OpenAI's own limiter uses) plus ``n x max_tokens``; settled against real usage after."""
    chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", ()))
    return chars // 4 + TOKENS_PER_REPLY + int(body.get("n") or 1) * int(body.get("max_tokens") or 0)


# --- estimates -----------------------------------------------------------------------------------

@dataclass
class Estimate:
    """What a set of requests is expected to use and cost."""

    requests: int
    samples: int
    prompt_tokens: int
    completion_tokens: int  # forecast
    completion_tokens_max: int  # n x max_tokens
    method: str
    price: Price | None
    batch: bool = False

    @property
    def cost(self) -> float | None:
        return None if self.price is None else self.price.cost(self.prompt_tokens, self.completion_tokens, batch=self.batch)

    @property
    def cost_max(self) -> float | None:
        return None if self.price is None else self.price.cost(self.prompt_tokens, self.completion_tokens_max, batch=self.batch)

    def to_dict(self) -> dict:
        return {
            "requests": self.requests,
            "samples": self.samples,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "completion_tokens_max": self.completion_tokens_max,
            "token_counter": self.method,
            "price_model": None if self.price is None else self.price.model,
            "batch_api": self.batch,
            "cost_usd": None if self.cost is None else round(self.cost, 4),
            "cost_usd_max": None if self.cost_max is None else round(self.cost_max, 4),
        }


def completion_forecast(answers: Iterable[str], counter: TokenCounter) -> float:
    """Mean tokens of example answers (the data set's exemplar completions): tokens per sample."""
    counts = [counter.count(text) for text in answers]
    return sum(counts) / len(counts) if counts else 0.0


def estimate_requests(
    requests: Iterable[Mapping],
    counter: TokenCounter,
    *,
    tokens_per_sample: float,
    price: Price | None,
    batch: bool = False,
) -> Estimate:
    """Estimate prompt tokens (counted) and completion tokens (forecast per sample, capped at max_tokens)."""
    n_requests = samples = prompt = completion = completion_max = 0
    forecast = 0.0
    for request in requests:
        body = request["body"]
        n, max_tokens = int(body.get("n") or 1), int(body.get("max_tokens") or 0)
        n_requests += 1
        samples += n
        prompt += counter.count_messages(body["messages"])
        forecast += n * min(tokens_per_sample, max_tokens or tokens_per_sample)
        completion_max += n * max_tokens
    completion = round(forecast)
    return Estimate(n_requests, samples, prompt, completion, completion_max, counter.method, price, batch)

