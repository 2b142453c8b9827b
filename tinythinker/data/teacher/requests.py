"""Teacher requests exactly as REFERENCE section 3, as OpenAI Batch API input lines.

One request per training question: the instruction plus k seeded few-shot exemplars as the system
message (one system message per data set and seed, the same for every request and round, as the
reference drew its exemplars once), the question with a gold-label hint as the user message. A request is a dict shaped like a
Batch API input line (``custom_id`` = question id), so the same object is what the async client
sends, what ``--batch-api`` writes, and what ``build`` writes for "needs another round".
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache
from importlib import resources

from tinythinker.data.sources import Question, get_spec

TEMPERATURE = 0.8
MAX_TOKENS = 256
CHAT_PATH = "/v1/chat/completions"


@lru_cache(maxsize=None)
def _prompt_file(name: str):
    return json.loads(resources.files("tinythinker").joinpath("resources/prompts", name).read_text(encoding="utf-8"))


def instruction() -> str:
    return _prompt_file("request.json")["Key"]


def exemplars(dataset: str) -> list[dict]:
    return _prompt_file(f"{dataset}_cot.json")


def prompt_hash(dataset: str) -> str:
    """Fingerprint of the instruction and the exemplar file (recorded in cards)."""
    digest = hashlib.sha256(instruction().encode())
    digest.update(json.dumps(exemplars(dataset), sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()[:16]


def render_exemplar(example: dict) -> str:
    return (
        f"\n###\n{example['Q']}\nOptions: {example['Options']}\nKey Information: {example['Key Information']}"
        f"\nExplanations: {chr(10).join(example['Explanations'])}\n###\n"
    )


@lru_cache(maxsize=None)
def system_message(dataset: str, seed: int) -> str:
    """The data set's one system message: k exemplars drawn once with ``seed`` (REFERENCE 3)."""
    spec, pool = get_spec(dataset), exemplars(dataset)
    chosen = random.Random(f"{seed}:{dataset}:exemplars").sample(pool, min(spec.exemplars, len(pool)))
    return (instruction() + "".join(render_exemplar(e) for e in chosen)).strip()


def user_message(question: Question) -> str:
    """The question, `A. text, B. text` options, and the gold hint to be rationalised."""
    options = ", ".join(f"{x}. {text}" for x, text in zip(question.letters, question.options))
    lines = [question.stem, f"Options: {options}", "Key Information:", f"Explanations: {question.answer} is correct. Because"]
    lines += [f"{x} is incorrect. Because" for x in question.letters if x != question.answer]
    return "\n".join(lines).strip()


_HINT_MARK = "\nKey Information:"


def match_key(user_text: str) -> str:
    """The part of a user message that identifies its question (stem and `Options:` line, before
    the `Key Information:` hint) with all whitespace removed: the reference wrote its requests from
    unstripped raw text (31 StrategyQA stems and one CSQA option carry stray spaces).

    This is how responses without an id (the reference's files) are matched back to questions."""
    return "".join(user_text.split(_HINT_MARK, 1)[0].split())


def question_match_key(question: Question) -> str:
    return match_key(user_message(question))


def build_request(
    question: Question,
    *,
    dataset: str,
    model: str,
    seed: int = 42,
    n: int | None = None,
    max_tokens: int = MAX_TOKENS,
    temperature: float = TEMPERATURE,
) -> dict:
    """A Batch-API-shaped request line for one question (``n`` defaults to the data set's samples)."""
    spec = get_spec(dataset)
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": system_message(dataset, seed)},
            {"role": "user", "content": user_message(question)},
        ],
        "temperature": temperature,
        "max_tokens": max_tokens,
        "n": spec.samples if n is None else n,
    }
    return {"custom_id": question.id, "method": "POST", "url": CHAT_PATH, "body": body}

