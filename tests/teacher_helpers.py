"""Small raw data for teacher tests and benchmarks: a CommonsenseQA-format folder written from scratch.

``write_tiny_csqa(folder, train=40, dev=10)`` writes ``train_rand_split.jsonl`` and
``dev_rand_split.jsonl`` in the original release format with distinct synthetic questions, so the
teacher tests need neither ../shared/data nor the network. With csqa's split rule (REFERENCE 1)
``train=40, dev=10`` gives 30 train, 10 validation and 10 test questions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tinythinker.data.teacher.cache import iter_output_lines

_THINGS = ["kettle", "violin", "harbor", "glacier", "lantern", "orchard", "compass", "meadow", "anvil", "satchel",
           "beehive", "canyon", "ledger", "quarry", "thimble", "workshop", "lighthouse", "pantry", "tram", "easel"]
_VERBS = ["find", "keep", "use", "see", "store", "repair", "carry", "clean", "paint", "sell"]
_PLACES = ["kitchen", "museum", "garage", "library", "market", "attic", "farm", "school", "station", "forest",
           "bakery", "office", "studio", "harbour", "cellar", "garden", "theater", "hospital", "river", "desert"]


def _record(index: int, rng: random.Random) -> dict:
    thing = _THINGS[index % len(_THINGS)]
    verb = _VERBS[(index // len(_THINGS)) % len(_VERBS)]
    options = rng.sample(_PLACES, 5)
    return {
        "answerKey": "ABCDE"[rng.randrange(5)],
        "id": f"q{index:05d}",
        "question": {
            "question_concept": thing,
            "choices": [{"label": label, "text": text} for label, text in zip("ABCDE", options)],
            "stem": f"Where would you {verb} a {thing} number {index}?",
        },
    }


def write_tiny_csqa(folder: str | Path, train: int = 40, dev: int = 10, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = [_record(i, rng) for i in range(train + dev)]
    (folder / "train_rand_split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:train]), encoding="utf-8")
    (folder / "dev_rand_split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[train:]), encoding="utf-8")
    return folder


def read_output_lines(path) -> list[dict]:
    """Every line of a teach output file (the library streams them with ``iter_output_lines``)."""
    return list(iter_output_lines(path))
