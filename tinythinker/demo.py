"""The embedded demo set: a few dozen questions per data set and a template "teacher", written by
this module and shipped in ``tinythinker/resources/demo/`` so that a fresh machine with no network
can build, train and evaluate end to end.

    python -m tinythinker.demo --regenerate    # rewrite the committed files (deterministic)
    python -m tinythinker.demo --check         # fail if the committed files differ from a regeneration

The questions are invented from a small world (objects and where they are kept; things and their
kinds), so that a tiny student can learn something: the same objects recur across splits under
other wordings and other distractors. They are stored in the ORIGINAL raw formats (CommonsenseQA
``*_rand_split.jsonl``, OpenBookQA ``train/dev/test.jsonl``, StrategyQA ``strategyqa_train.json``,
each with one exact duplicate question where the real release has some) and answered by a
deterministic template teacher in the reference's response format (``[request, response]`` JSONL,
gzipped, no ids: matched by text) for the questions of every split. A few samples are deliberately
bad (cut off, an option missing, a wrong answer, a malformed verdict, no key information) and one
training request failed, so the card's rejection counts have something to show.

Library use: :func:`demo_raw_dir`, :func:`demo_responses`, :func:`build_demo`.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import sys
from importlib import resources
from pathlib import Path

from .sources import DATASETS, Question, get_spec
from .teacher.requests import build_request

DEMO_TEACHER = "tinythinker-demo-teacher"
SEED = 7  # of the generator; the build seed is the usual 42
RESPONSES_FILE = "teacher.jsonl.gz"


def _demo_root() -> Path:
    return Path(str(resources.files("tinythinker").joinpath("resources", "demo")))


def demo_raw_dir(dataset: str) -> Path:
    """Folder with the demo questions of ``dataset`` in its original release format."""
    get_spec(dataset)
    return _demo_root() / dataset / "raw"


def demo_responses(dataset: str) -> Path:
    """The demo teacher's responses (reference format, gzipped JSONL) for every demo question."""
    get_spec(dataset)
    return _demo_root() / dataset / RESPONSES_FILE


def build_demo(dataset: str, out: str | Path, overwrite: bool = False, *, seed: int = 42, progress=None):
    """Build the demo stage data set of ``dataset`` at ``out`` (what ``tinythinker build`` makes)."""
    from dataset_builders.build import build_dataset

    return build_dataset(dataset, demo_raw_dir(dataset), [demo_responses(dataset)], out, seed=seed,
                         overwrite=overwrite, progress=progress)


# --- the world the questions come from --------------------------------------------------------------

PLACES = {
    "kitchen": ["frying pan", "kettle", "spatula", "cutting board"],
    "garden": ["rake", "watering can", "flower pot", "garden hose"],
    "library": ["encyclopedia", "bookshelf", "library card", "reading lamp"],
    "garage": ["wrench", "car jack", "motor oil can", "spare tire"],
    "classroom": ["chalkboard", "textbook", "school desk", "pencil sharpener"],
    "hospital": ["stethoscope", "wheelchair", "bandage", "hospital bed"],
    "beach": ["seashell", "surfboard", "beach towel", "sand castle"],
    "bakery": ["baguette", "croissant", "bread oven", "rolling pin"],
    "bathroom": ["toothbrush", "bath towel", "shower curtain", "bar of soap"],
    "office": ["stapler", "filing cabinet", "desk phone", "paper clip"],
}
KINDS = {
    "metal": ("conducts electricity", ["copper wire", "iron nail", "steel spoon", "aluminum can"]),
    "insulator": ("blocks electricity", ["rubber glove", "wooden stick", "plastic cup", "glass marble"]),
    "plant": ("makes food from sunlight", ["oak tree", "fern", "sunflower", "moss patch"]),
    "animal": ("eats other living things", ["fox", "sparrow", "trout", "frog"]),
    "liquid": ("takes the shape of its container", ["cup of water", "bottle of vinegar", "jar of olive oil", "glass of milk"]),
    "magnet": ("attracts iron", ["fridge magnet", "compass needle", "horseshoe magnet", "magnetic strip"]),
}
# OpenBookQA options sometimes contain ", " (the reference mangled those): some demo options do too.
COMMA_FORMS = {"copper wire": "a copper wire, bent into a loop", "rubber glove": "a rubber glove, worn on one hand",
               "oak tree": "an oak tree, tall and old", "fox": "a fox, hunting at night"}

STEMS = {
    "csqa": ["Where would you most likely find {a_item}?", "Where is {a_item} usually kept?",
             "If you see {a_item}, where are you probably?", "Where does {a_item} belong?"],
    "obqa": ["Which of these {property}?", "Which of these would most likely be chosen because it {property}?",
             "A student needs something that {property}. Which should she pick?"],
    "strategyqa": ["Is {a_item} a kind of {asked}?", "Would {a_item} count as {a_asked}?"],
}
GENERAL_TEMPLATES = {
    "csqa": [
        "People usually keep {a_item} in {a_answer}.",
        "{A_item} is a typical thing to find in {a_answer}.",
        "You would expect to see {a_item} in {a_answer}, where it is used.",
        "The usual place for {a_item} is {a_answer}.",
        "People usually keep {a_item} inside {a_answer}.",  # near-duplicate of the first: diversity fill
    ],
    "obqa": [
        "Something that {property} is {a_kind}; for example, {a_item}.",
        "{A_item} is {a_kind}, and every {kind} {property}.",
        "Every {kind} {property}, and {a_item} is {a_kind}.",
        "{A_item} is {a_kind}, and each {kind} {property}.",
    ],
    "strategyqa": [
        "{A_item} is {a_kind}.",
        "By its nature, {a_item} is {a_kind}.",
        "Everyone knows that {a_item} is {a_kind}.",
        "{A_item} belongs to the group called {kind}.",
    ],
}


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _facts(**facts) -> dict:
    """What the template teacher knows about a question, with the article forms templates use."""
    for key in ("item", "kind", "asked", "answer"):
        if key in facts:
            facts[f"a_{key}"] = _a(facts[key])
            facts[f"A_{key}"] = facts[f"a_{key}"][0].upper() + facts[f"a_{key}"][1:]
    return facts


Demo = tuple  # (Question, facts)


def _csqa_questions(rng: random.Random, count: int, prefix: str, used: set) -> list[Demo]:
    out = []
    while len(out) < count:
        place = rng.choice(sorted(PLACES))
        facts = _facts(item=rng.choice(PLACES[place]), answer=place)
        options = [place] + rng.sample([p for p in sorted(PLACES) if p != place], 4)
        rng.shuffle(options)
        stem = rng.choice(STEMS["csqa"]).format(**facts)
        question = Question(f"{prefix}{len(out):03d}", stem, tuple(options), "ABCDE"[options.index(place)])
        if question.key not in used:
            used.add(question.key)
            out.append((question, facts))
    return out


def _obqa_questions(rng: random.Random, count: int, prefix: str, used: set) -> list[Demo]:
    out = []
    while len(out) < count:
        kinds = rng.sample(sorted(KINDS), 4)  # the first is the answer's kind
        items = [rng.choice(KINDS[k][1]) for k in kinds]
        texts = [COMMA_FORMS[i] if i in COMMA_FORMS and rng.random() < 0.5 else _a(i) for i in items]
        order = list(range(4))
        rng.shuffle(order)
        facts = _facts(item=items[0], kind=kinds[0], property=KINDS[kinds[0]][0],
                       option_kinds=[kinds[i] for i in order])
        stem = rng.choice(STEMS["obqa"]).format(**facts)
        question = Question(f"{prefix}-{len(out) + 1}", stem, tuple(texts[i] for i in order), "ABCD"[order.index(0)])
        if question.key not in used:
            used.add(question.key)
            out.append((question, facts))
    return out


def _strategy_questions(rng: random.Random, count: int, used: set) -> list[Demo]:
    out = []
    while len(out) < count:
        kind = rng.choice(sorted(KINDS))
        asked = kind if rng.random() < 0.5 else rng.choice([k for k in sorted(KINDS) if k != kind])
        facts = _facts(item=rng.choice(KINDS[kind][1]), kind=kind, asked=asked)
        stem = rng.choice(STEMS["strategyqa"]).format(**facts)
        question = Question(f"{rng.getrandbits(80):020x}", stem, ("yes", "no"), "A" if asked == kind else "B")
        if question.key not in used:
            used.add(question.key)
            out.append((question, facts))
    return out


def _option_reason(dataset: str, facts: dict, q: Question, letter: str, rng: random.Random) -> str:
    """Why option ``letter`` is right or wrong, from the world's facts."""
    index = q.letters.index(letter)
    text, right = q.options[index], letter == q.answer
    if dataset == "csqa":
        if right:
            return rng.choice(["{a_item} is kept in {a_answer}.", "{a_answer} is where {a_item} is used."]).format(**facts)
        return rng.choice(["{a_item} is not usually found in {a_option}.", "{a_option} has no use for {a_item}."]).format(
            a_option=_a(text), **facts)
    if dataset == "obqa":
        kind = facts["option_kinds"][index]
        if right:
            return rng.choice(["{text} is {a_kind}, and {a_kind} {property}.", "{text} {property}."]).format(text=text, **facts)
        return rng.choice(["{text} is {other}, not {a_kind}.", "{text} is {other}, so it does not help here."]).format(
            text=text, other=_a(kind), **facts)
    if right:
        return "{a_item} is {a_kind}.".format(**facts) if letter == "A" else "{a_item} is {a_kind}, not {a_asked}.".format(**facts)
    return "{a_item} is not {a_asked}; it is {a_kind}.".format(**facts) if letter == "A" else "{a_item} is {a_asked}.".format(**facts)


def teacher_text(dataset: str, demo: Demo, sample: int, rng: random.Random, *, answer: str | None = None) -> str:
    """A good completion: general knowledge, then one verdict line per option (the hinted answer
    first, as the request asks), each with a reason."""
    q, facts = demo
    templates = GENERAL_TEMPLATES[dataset]
    general = templates[sample % len(templates)].format(**facts)
    answer = answer or q.answer
    lines = [
        f"{x} is {'correct' if x == answer else 'incorrect'}. Because {_option_reason(dataset, facts, q, x, rng)}"
        for x in [answer] + [x for x in q.letters if x != answer]
    ]
    return f"Key Information: {general}\nExplanations: " + "\n".join(lines)


def _bad_sample(kind: str, dataset: str, demo: Demo, sample: int, rng: random.Random) -> tuple[str, str]:
    """(text, finish_reason) of a deliberately bad (or merely odd) sample."""
    q = demo[0]
    good = teacher_text(dataset, demo, sample, rng)
    lines = good.split("\n")
    if kind == "truncated":
        return good[: len(good) * 2 // 3], "length"
    if kind == "missing_option":
        return "\n".join(lines[:-1]), "stop"
    if kind == "wrong_answer":
        return teacher_text(dataset, demo, sample, rng, answer=next(x for x in q.letters if x != q.answer)), "stop"
    if kind == "bad_prefix":
        lines[-1] = "Option " + lines[-1]  # "Option D is incorrect." does not match ^[A-E] is ...$
        return "\n".join(lines), "stop"
    if kind == "no_key_information":
        return "I am sorry, but I cannot explain this question.", "stop"
    if kind == "preamble_multiline":  # accepted: text before Key Information dropped, block joined
        return good.replace("Key Information: ", "Sure, here it is.\nKey Information:\n", 1), "stop"
    if kind == "two_because":  # accepted: split at the first "Because " (REFERENCE 10)
        lines[-1] += " Because of that, it does not fit."
        return "\n".join(lines), "stop"
    raise ValueError(kind)


BAD_KINDS = ("truncated", "missing_option", "wrong_answer", "bad_prefix", "no_key_information",
             "preamble_multiline", "two_because")


def _responses(dataset: str, demos: list[Demo], failed: str) -> list[list]:
    """[request, response] lines for every question; the odd samples go to the first questions."""
    spec = DATASETS[dataset]
    rng = random.Random(f"{SEED}:{dataset}:teacher")
    odd = {demo[0].id: kind for demo, kind in zip(demos, BAD_KINDS)}
    lines = []
    for demo in demos:
        q = demo[0]
        request = build_request(q, dataset=dataset, model=DEMO_TEACHER, seed=42)["body"]
        if q.id == failed:
            lines.append([request, ["RateLimitError: the demo teacher was busy (a failed request, kept on purpose)"]])
            continue
        choices = []
        for k in range(spec.samples):
            if k == spec.samples - 1 and q.id in odd:
                text, finish = _bad_sample(odd[q.id], dataset, demo, k, rng)
            else:
                text, finish = teacher_text(dataset, demo, k, rng), "stop"
            choices.append({"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        lines.append([request, {"id": f"demo-{dataset}-{q.id}", "object": "chat.completion", "model": DEMO_TEACHER,
                                "choices": choices}])
    return lines


def _question_row(q: Question) -> dict:
    return {"answerKey": q.answer, "id": q.id,
            "question": {"stem": q.stem, "choices": [{"label": x, "text": t} for x, t in zip(q.letters, q.options)]}}


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _gzip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:  # no name or time: reproducible
        handle.write(data)
    return buffer.getvalue()


def generate() -> dict[str, bytes]:
    """{relative path under resources/demo: content} of the whole demo set."""
    files: dict[str, bytes] = {}
    rng = random.Random(SEED)
    # csqa: 50 in the train file (40 train + 10 validation after the seeded split), 10 in dev (= test)
    used: set = set()
    train, dev = _csqa_questions(rng, 50, "demo-csqa-train-", used), _csqa_questions(rng, 10, "demo-csqa-dev-", used)
    files["csqa/raw/train_rand_split.jsonl"] = _jsonl(_question_row(q) for q, _ in train)
    files["csqa/raw/dev_rand_split.jsonl"] = _jsonl(_question_row(q) for q, _ in dev)
    files[f"csqa/{RESPONSES_FILE}"] = _gzip(_jsonl(_responses("csqa", train + dev, failed=train[-1][0].id)))
    # obqa: 40 train (+ one exact duplicate under another id, as the real release has), 10 dev, 10 test
    used = set()
    train, dev, test = (_obqa_questions(rng, n, p, used) for n, p in ((40, "demo-1"), (10, "demo-2"), (10, "demo-3")))
    first = train[3][0]
    duplicate = Question("demo-1-41", first.stem, first.options, first.answer)
    for name, questions in (("train", [q for q, _ in train] + [duplicate]), ("dev", [q for q, _ in dev]), ("test", [q for q, _ in test])):
        files[f"obqa/raw/{name}.jsonl"] = _jsonl(_question_row(q) for q in questions)
    files[f"obqa/{RESPONSES_FILE}"] = _gzip(_jsonl(_responses("obqa", train + dev + test, failed=train[-1][0].id)))
    # strategyqa: 60 questions (+ one asked twice under two qids), split 48 / 6 / 6 by the build's seed
    demos = _strategy_questions(rng, 60, set())
    twice = (Question(f"{rng.getrandbits(80):020x}", demos[5][0].stem, ("yes", "no"), demos[5][0].answer), demos[5][1])
    records = [
        {"qid": q.id, "term": facts["item"], "description": facts["a_kind"], "question": q.stem, "answer": q.answer == "A",
         "facts": ["{A_item} is {a_kind}.".format(**facts)],
         "decomposition": ["What kind of thing is {a_item}?".format(**facts), f"Is #1 {facts['a_asked']}?"]}
        for q, facts in demos[:10] + [twice] + demos[10:]
    ]
    files["strategyqa/raw/strategyqa_train.json"] = json.dumps(records, indent=4, ensure_ascii=False).encode()
    files[f"strategyqa/{RESPONSES_FILE}"] = _gzip(_jsonl(_responses("strategyqa", demos, failed=demos[-1][0].id)))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinythinker.demo", description="Regenerate or check the embedded demo set.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--regenerate", action="store_true", help="rewrite tinythinker/resources/demo")
    group.add_argument("--check", action="store_true", help="exit 1 if the committed files differ from a regeneration")
    args = parser.parse_args(argv)
    root = _demo_root()
    files = generate()
    if args.check:
        stale = [path for path, data in files.items() if not (root / path).is_file() or (root / path).read_bytes() != data]
        for path in stale:
            print(f"differs: {root / path}", file=sys.stderr)
        return 1 if stale else 0
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    print(f"wrote {len(files)} files ({sum(map(len, files.values())) / 1024:.0f} KiB) under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
