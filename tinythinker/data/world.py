"""A learnable world: invented, compositional, seeded questions and a teacher that explains them.

Real teachers, pretrained weights and GPUs are out of reach on a laptop CPU, so the evidence that the
recipe works comes from a task a tiny student *can* learn in minutes, the way character-level
Shakespeare shows that nanoGPT's trainer works. The world is built so that the method matters:

* **Two hops.** Every entity has an invented name (no pretrained model knows it) and is a kind of
  thing (also invented). A kind fixes every property: where it is kept, what it is made of, what it
  is used for, ... (:data:`RELATIONS`). A question asks one property of one entity, so the answer
  needs two facts: the entity's kind, and that kind's property.
* **Every fact is taught, no held-out combination is asked in training.** ``questions`` counts
  (entity, relation) pairs. A held-out pair is asked once, in a held-out file; a training pair is
  asked ``TRAIN_VARIANTS`` times, with other distractors in other places. An entity's training
  questions state its kind in their rationales; other entities of the same kind state the kind's
  property. Answering a held-out question means recalling learned facts and composing them: what
  Recall and Analyze are for.
* **Each value under its own letter** (``letters="fixed"``, the default): a value of a relation
  always sits under the same letter, so naming the option that holds a recalled value is learned
  knowledge, not an in-context lookup a tiny student cannot learn in minutes (see
  :meth:`World.letter_index`). ``letters="shuffled"`` puts the gold anywhere, balanced per file.
* **No shortcut.** Options are values of the asked relation (the same type), the question's text
  never names the answer, distractors are drawn at random, and no stem is in two files.
* **A teacher** that writes correct coarse-to-fine rationales in the reference's response format
  (general knowledge = the two facts; one explanation per option), with a configurable share of
  defective samples (cut off, an option missing, a wrong answer, a malformed verdict, no key
  information) and one failed request, so that the cards' rejection counts show something.

:func:`write_world` writes ``DIR/raw/`` in the data set's original release format (CommonsenseQA
``*_rand_split.jsonl``, OpenBookQA ``train/dev/test.jsonl``, StrategyQA ``strategyqa_train.json``)
and ``DIR/teacher.jsonl`` (``[request, response]`` lines, matched to questions by text), so that
``tinythinker build DATASET --raw DIR/raw --responses DIR/teacher.jsonl`` works unchanged.
``DIR/world.json`` records the seed, the sizes and every fact.

Held-out questions: CommonsenseQA's dev file (the test split, as for the real data) holds
``HELD_OUT["csqa"]`` relations of every entity, and its train file holds ``VALIDATION_HELD_OUT["csqa"]``
more, asked once and marked as validation (``sources.SPLIT_KEY``): the real data's rule (validation =
a random draw from train, REFERENCE 1) would here draw questions whose (entity, relation) pair and
gold letter training asks too (288 of 300 did, seed 42), and validation would measure memory.
OpenBookQA's dev and test files hold one relation of every entity each. StrategyQA's one file asks
every pair once, so the build's 80/10/10 split keeps validation and test pairs out of train. In every
data set, no validation or test question asks a pair a training question asks (:func:`check_held_out`).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from tinythinker.artifacts import OWNER_MARK, OWNER_TEXT, atomic_write_text, check_replaceable
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import letters_for
from tinythinker.data.sources import SPLIT_KEY, Question, get_spec
from tinythinker.data.teacher.requests import build_request

WORLD_TEACHER = "tinythinker-world-teacher"
DEFAULT_QUESTIONS = 800  # 100 entities x 8 relations: csqa test 300 (3 an entity), validation 100 (1), train 1,200 (4 x 3)
DEFAULT_DEFECTS = 0.03  # share of teacher samples that are defective
MIN_ENTITIES = 10


@dataclass(frozen=True)
class Relation:
    stem: str  # the multiple-choice question, {e} = the entity
    fact: str  # the kind's property, {k} = the kind, {v} = the value (value last: "..., not {other}" reads well)
    yes_no: str  # the StrategyQA question, {e} and {v}
    values: tuple[str, ...]


RELATIONS: dict[str, Relation] = {
    "place": Relation("Where is a {e} usually kept?", "a {k} is usually kept in the {v}", "Is a {e} usually kept in the {v}?",
                      ("kitchen", "garden", "garage", "attic", "cellar", "barn", "office", "bathroom", "shed", "library")),
    "material": Relation("What is a {e} made of?", "a {k} is made of {v}", "Is a {e} made of {v}?",
                         ("wood", "glass", "iron", "clay", "wool", "paper", "stone", "copper", "leather", "rubber")),
    "use": Relation("What is a {e} used for?", "a {k} is used for {v}", "Is a {e} used for {v}?",
                    ("cooking", "lighting", "cleaning", "writing", "digging", "sewing", "fishing", "painting", "measuring", "heating")),
    "color": Relation("What color is a {e}?", "the color of a {k} is {v}", "Is the color of a {e} {v}?",
                      ("red", "blue", "green", "yellow", "white", "black", "brown", "purple", "gray", "pink")),
    "sound": Relation("What sound does a {e} make?", "the sound of a {k} is a {v}", "Is the sound of a {e} a {v}?",
                      ("ring", "buzz", "click", "hum", "whistle", "creak", "rattle", "chime", "thud", "hiss")),
    "user": Relation("Who uses a {e}?", "a {k} is used by a {v}", "Is a {e} used by a {v}?",
                     ("baker", "farmer", "doctor", "sailor", "painter", "teacher", "miner", "tailor", "cook", "hunter")),
    "shape": Relation("What shape is a {e}?", "the shape of a {k} is {v}", "Is the shape of a {e} {v}?",
                      ("round", "square", "flat", "long", "curved", "pointed", "hollow", "narrow", "wide", "thin")),
    "smell": Relation("What does a {e} smell like?", "a {k} smells like {v}", "Does a {e} smell like {v}?",
                      ("smoke", "roses", "mint", "rain", "bread", "pine", "lemon", "soap", "earth", "honey")),
}
KINDS = 10  # one per value of every relation: a kind's properties are a row of a Latin-like table
# relations of every entity held out: csqa's dev file (its test split); obqa's dev file, and again its test file.
# Three for csqa: 100 entities give the 300 test questions, and each entity's kind is learned from its
# 5 training relations (300 entities with one held out each left the entity -> kind memory weak).
HELD_OUT = {"csqa": 3, "obqa": 1, "strategyqa": 0}
# relations of every entity held out for csqa's validation split (written into its train file, marked); obqa's
# dev file is its validation split, strategyqa's build draws validation from pairs asked once
VALIDATION_HELD_OUT = {"csqa": 1, "obqa": 0, "strategyqa": 0}
# Where an option's value sits: "fixed" (each value of a relation always under the same letter, what a
# tiny student learns in minutes) or "shuffled" (anywhere: the letter must be read in context).
LETTERS = ("fixed", "shuffled")
# how often the train file asks each of its (entity, relation) pairs, with other distractors (shuffled
# letters: in other places too, so no question's letter can be memorised; with one variant a tiny
# student memorised the training questions' letters and stayed at chance on held-out ones).
# StrategyQA has one: its build splits the one file at random, so a variant could land in test.
TRAIN_VARIANTS = {"csqa": 3, "obqa": 3, "strategyqa": 1}

_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
# no final "e" (fate, tune, mole: most English words of this shape end in a silent e), and no word a
# reader (or a pretrained model) would know
_FINAL_VOWELS = "aiou"
_KNOWN_WORDS = {"soda", "tuna", "menu", "polo", "solo", "kilo", "sofa", "lava", "toga", "tofu", "sumo", "demo", "memo",
                "veto", "zero", "tutu", "mini", "data", "beta", "zeta", "pita", "diva", "gala", "saga", "soma", "limo",
                "silo", "dodo", "judo", "guru", "kudu", "deli", "sari", "tiki", "lego", "logo", "puma", "lama", "lima",
                "nori", "miso", "taro", "koto", "mama", "papa", "nana", "dada", "kiwi", "bali", "kobe", "mafia", "tuba",
                "pupa", "vita", "lira", "mira", "raku", "bora", "mega", "vega", "kata", "gaga", "sepia", "fugu", "bozo"}


def _invented_names(rng: random.Random, count: int, syllables: int, taken: set[str]) -> list[str]:
    """Pronounceable invented words (consonant-vowel syllables, so the article is always "a")."""
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS if i < syllables - 1 else _FINAL_VOWELS) for i in range(syllables))
        if name not in taken and name not in _KNOWN_WORDS:
            taken.add(name)
            names.append(name)
    return names


def check_held_out(files: dict[str, list[tuple[str, str]]]) -> None:
    """No (entity, relation) pair of a held-out file is asked in train; a lone train file (strategyqa,
    split at random by the build) asks every pair once, so no split of it shares a pair."""
    train = files["train"]
    if len(files) == 1 and len(set(train)) != len(train):
        raise AssertionError("a world's one file asks a pair twice: a random split could put it in train and test")
    shared = {split: len(set(pairs) & set(train)) for split, pairs in files.items() if split != "train"}
    if any(shared.values()):
        raise AssertionError(f"held-out files ask training pairs: {shared}")


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class WorldQuestion:
    question: Question
    entity: str
    kind: str
    relation: str
    value: str  # the true value of (entity, relation)
    asked: str | None = None  # StrategyQA: the value the question asks about


class World:
    """The facts of one seeded world and its questions (no files: :func:`write_world` writes them)."""

    def __init__(self, seed: int = 42, questions: int = DEFAULT_QUESTIONS, letters: str = "fixed"):
        if questions < MIN_ENTITIES * len(RELATIONS):
            raise TinyThinkerError(f"--questions {questions} is too few: a world needs at least {MIN_ENTITIES * len(RELATIONS)} "
                                   f"({MIN_ENTITIES} entities x {len(RELATIONS)} relations)")
        if letters not in LETTERS:
            raise TinyThinkerError(f"--letters {letters!r}: choose one of {', '.join(LETTERS)}")
        self.seed = seed
        self.letters = letters
        rng = random.Random(f"world:{seed}")
        taken = {v for r in RELATIONS.values() for v in r.values}
        self.kinds = _invented_names(rng, KINDS, 3, taken)
        # each relation maps the kinds onto its values one to one, independently of the others
        self.properties: dict[str, dict[str, str]] = {kind: {} for kind in self.kinds}
        for name, relation in RELATIONS.items():
            values = list(relation.values)
            rng.shuffle(values)
            for kind, value in zip(self.kinds, values):
                self.properties[kind][name] = value
        entities = questions // len(RELATIONS)
        self.entities = _invented_names(rng, entities, 2, taken)
        self.kind_of = {entity: self.kinds[i % KINDS] for i, entity in enumerate(self.entities)}  # balanced kinds

    def value(self, entity: str, relation: str) -> str:
        return self.properties[self.kind_of[entity]][relation]

    def general_knowledge(self, entity: str, relation: str) -> str:
        """The two facts a question about (entity, relation) needs: what the teacher recalls."""
        kind = self.kind_of[entity]
        fact = RELATIONS[relation].fact.format(k=kind, v=self.value(entity, relation))
        return f"A {entity} is a kind of {kind}. {_sentence(fact)}"

    def explanation(self, wq: WorldQuestion, letter: str) -> str:
        """Why option ``letter`` of ``wq`` is right or wrong (the text after ``Because``): the kind's
        fact, which option holds its value, and the verdict.

        The fact is copied from the recall, the value's letter is known (fixed letters) or looked up
        in the question (shuffled), and the verdict compares two letters. Comparing two of 80 values directly ("option (B) is wide ... so
        (B) is right") stayed unlearned by a tiny student after 3,000 steps; a lookup and a
        comparison of letters are what small transformers learn quickly."""
        fact = RELATIONS[wq.relation].fact.format(k=wq.kind, v=wq.value)
        if wq.asked is not None:  # StrategyQA: yes / no about one asked value
            right = (wq.asked == wq.value) == (letter == "A")
            return f"{fact}; the question asks about {wq.asked}, so ({letter}) is {'right' if right else 'wrong'}."
        gold = wq.question.answer
        return f"{fact}, which is option ({gold}), so ({letter}) is {'right' if letter == gold else 'wrong'}."

    def teacher_text(self, wq: WorldQuestion, *, answer: str | None = None) -> str:
        """A good completion: key information, then one verdict per option (the hinted answer first)."""
        q = wq.question
        answer = answer or q.answer
        lines = [f"{x} is {'correct' if x == answer else 'incorrect'}. Because {self.explanation(wq, x)}"
                 for x in [answer] + [x for x in q.letters if x != answer]]
        return f"Key Information: {self.general_knowledge(wq.entity, wq.relation)}\nExplanations: " + "\n".join(lines)

    # --- questions ----------------------------------------------------------------------------------

    def questions(self, dataset: str) -> dict[str, list[WorldQuestion]]:
        """{file split: questions}: "train"/"validation"/"dev" (csqa: validation goes into the train file,
    marked), "train"/"dev"/"test" (obqa), "train" (strategyqa)."""
        spec = get_spec(dataset)
        rng = random.Random(f"world:{self.seed}:{dataset}")
        relations = list(RELATIONS)
        held = HELD_OUT[dataset]
        files: dict[str, list[tuple[str, str]]] = {"train": [], "validation": [], "dev": []} if dataset == "csqa" else \
            {"train": [], "dev": [], "test": []} if dataset == "obqa" else {"train": []}
        valid = VALIDATION_HELD_OUT[dataset]
        for index, entity in enumerate(self.entities):
            # rotate which relations are held out, so every relation is asked in every file
            start = (index * max(held, 1)) % len(relations)
            order = relations[start:] + relations[:start]
            variants = TRAIN_VARIANTS[dataset]
            if dataset == "csqa":
                files["dev"] += [(entity, r) for r in order[:held]]
                files["validation"] += [(entity, r) for r in order[held : held + valid]]
                files["train"] += [(entity, r) for r in order[held + valid :]] * variants
            elif dataset == "obqa":
                files["dev"].append((entity, order[0]))
                files["test"].append((entity, order[1]))
                files["train"] += [(entity, r) for r in order[2:]] * variants
            else:
                files["train"] += [(entity, r) for r in order]
        check_held_out(files)
        out: dict[str, list[WorldQuestion]] = {}
        for split, pairs in files.items():
            rng.shuffle(pairs)
            out[split] = self._make_questions(dataset, split, pairs, spec.n_options, rng)
        return out

    @staticmethod
    def letter_index(relation: str, value: str, n_options: int) -> int:
        """The option position a value of ``relation`` always takes (0 = A): values rotate over the
        letters, shifted by the relation, so every letter holds the same number of values overall.

        Why fixed: an option's letter must be found from its text, in context, on every question
        whose options are shuffled; a randomly initialised tiny student does not learn that lookup
        in a quickstart's budget (measured: "option (X) is <its text>" stayed at chance for 4,000
        steps, d_model 64). With each value under one letter, "which is option (B)" is learned
        knowledge, like the facts, and the world measures what the method is about: recalling and
        composing facts, analysing each option, summarizing. Real students are pretrained and read
        the options; ``letters="shuffled"`` keeps the harder world."""
        shift = list(RELATIONS).index(relation)
        return (RELATIONS[relation].values.index(value) + shift) % n_options

    def _make_questions(self, dataset: str, split: str, pairs: list[tuple[str, str]], n_options: int,
                        rng: random.Random) -> list[WorldQuestion]:
        letters = letters_for(n_options)
        gold_positions = [i % n_options for i in range(len(pairs))]  # shuffled letters: balanced over the letters
        rng.shuffle(gold_positions)
        made, seen = [], set()
        for number, ((entity, relation), gold) in enumerate(zip(pairs, gold_positions)):
            value, kind = self.value(entity, relation), self.kind_of[entity]
            values = RELATIONS[relation].values
            if dataset == "strategyqa":
                asked = value if gold == 0 else rng.choice([v for v in values if v != value])
                stem = RELATIONS[relation].yes_no.format(e=entity, v=asked)
                qid = f"{rng.getrandbits(80):020x}"
                made.append(WorldQuestion(Question(qid, stem, ("yes", "no"), letters[gold]), entity, kind, relation, value, asked))
                continue
            stem = RELATIONS[relation].stem.format(e=entity)
            if self.letters == "fixed":
                gold = self.letter_index(relation, value, n_options)
                pools = [[v for v in values if self.letter_index(relation, v, n_options) == i] for i in range(n_options)]
            while True:  # a variant of a pair gets other options (never an exact duplicate)
                if self.letters == "fixed":
                    options = [value if i == gold else rng.choice(pool) for i, pool in enumerate(pools)]
                else:
                    others = rng.sample([v for v in values if v != value], n_options - 1)
                    options = others[:gold] + [value] + others[gold:]
                if (stem, tuple(options)) not in seen:
                    seen.add((stem, tuple(options)))
                    break
            qid = f"world-{dataset}-{split}-{number:05d}" if dataset == "csqa" else f"{ {'train': 1, 'dev': 2, 'test': 3}[split]}-{number + 1}"
            made.append(WorldQuestion(Question(qid, stem, tuple(options), letters[gold]), entity, kind, relation, value))
        return made

    def facts(self) -> dict:
        return {"kind_properties": {kind: dict(self.properties[kind]) for kind in self.kinds}, "entity_kinds": dict(self.kind_of)}


# --- the teacher ----------------------------------------------------------------------------------

DEFECTS = ("truncated", "missing_option", "wrong_answer", "bad_prefix", "no_key_information")


def _defective(world: World, wq: WorldQuestion, kind: str) -> tuple[str, str]:
    """(text, finish_reason) of a defective sample."""
    good = world.teacher_text(wq)
    lines = good.split("\n")
    if kind == "truncated":
        return good[: len(good) * 2 // 3], "length"
    if kind == "missing_option":
        return "\n".join(lines[:-1]), "stop"
    if kind == "wrong_answer":
        return world.teacher_text(wq, answer=next(x for x in wq.question.letters if x != wq.question.answer)), "stop"
    if kind == "bad_prefix":
        lines[-1] = "Option " + lines[-1]  # "Option D is incorrect." does not match ^[A-E] is ...$
        return "\n".join(lines), "stop"
    return "I am sorry, but I cannot explain this question.", "stop"


def teacher_lines(world: World, dataset: str, questions: list[WorldQuestion], *, defects: float) -> list[list]:
    """[request, response] pairs (the reference's format) for every question; the first question's
    request failed (kept on purpose, as a real run has some)."""
    spec = get_spec(dataset)
    rng = random.Random(f"world:{world.seed}:{dataset}:teacher")
    lines = []
    for index, wq in enumerate(questions):
        request = build_request(wq.question, dataset=dataset, model=WORLD_TEACHER, seed=world.seed)["body"]
        if index == 0:
            lines.append([request, ["RateLimitError: the world's teacher was busy (a failed request, kept on purpose)"]])
            continue
        choices = []
        good = world.teacher_text(wq)
        for k in range(spec.samples):
            text, finish = (_defective(world, wq, rng.choice(DEFECTS)) if rng.random() < defects else (good, "stop"))
            choices.append({"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        lines.append([request, {"id": f"world-{dataset}-{index}", "object": "chat.completion", "model": WORLD_TEACHER,
                                "choices": choices}])
    return lines


# --- files ----------------------------------------------------------------------------------------

def _choice_row(q: Question) -> dict:
    return {"answerKey": q.answer, "id": q.id,
            "question": {"stem": q.stem, "choices": [{"label": x, "text": t} for x, t in zip(q.letters, q.options)]}}


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def world_files(dataset: str, *, seed: int = 42, questions: int = DEFAULT_QUESTIONS, defects: float = DEFAULT_DEFECTS,
                letters: str = "fixed") -> dict[str, str]:
    """{relative path: text} of a world: raw files, teacher responses and world.json."""
    if not 0 <= defects < 1:
        raise TinyThinkerError(f"--defects {defects}: the share of defective teacher samples must be in [0, 1)")
    world = World(seed, questions, letters)
    by_file = world.questions(dataset)
    files: dict[str, str] = {}
    if dataset == "csqa":  # validation questions sit in the train file, as the real ones do, but marked
        marked = [{**_choice_row(wq.question), SPLIT_KEY: "validation"} for wq in by_file["validation"]]
        files["raw/train_rand_split.jsonl"] = _jsonl([*(_choice_row(wq.question) for wq in by_file["train"]), *marked])
        files["raw/dev_rand_split.jsonl"] = _jsonl(_choice_row(wq.question) for wq in by_file["dev"])
    elif dataset == "obqa":
        # the real release holds exact duplicates in train: so does the world (merged by the build)
        first = by_file["train"][0]
        twin = Question(f"1-{len(by_file['train']) + 1}", first.question.stem, first.question.options, first.question.answer)
        for split in ("train", "dev", "test"):
            rows = [_choice_row(wq.question) for wq in by_file[split]] + ([_choice_row(twin)] if split == "train" else [])
            files[f"raw/{split}.jsonl"] = _jsonl(rows)
    else:
        wqs = by_file["train"]
        twin = Question(f"{random.Random(seed).getrandbits(80):020x}", wqs[0].question.stem, ("yes", "no"), wqs[0].question.answer)
        records = [{"qid": wq.question.id, "term": wq.entity, "description": f"a kind of {wq.kind}", "question": wq.question.stem,
                    "answer": wq.question.answer == "A", "facts": world.general_knowledge(wq.entity, wq.relation).split(". "),
                    "decomposition": [f"What kind of thing is a {wq.entity}?", f"Is #1 {RELATIONS[wq.relation].fact.format(k='it', v=wq.asked)}?"]}
                   for wq in wqs]
        records.insert(1, {**records[0], "qid": twin.id})  # one question twice under two qids, as in the real release
        files["raw/strategyqa_train.json"] = json.dumps(records, indent=1, ensure_ascii=False)
    everything = [wq for split in by_file.values() for wq in split]
    files["teacher.jsonl"] = _jsonl(teacher_lines(world, dataset, everything, defects=defects))
    meta = {"dataset": dataset, "seed": seed, "questions": len(everything), "pairs": len(world.entities) * len(RELATIONS),
            "train_variants": TRAIN_VARIANTS[dataset], "entities": len(world.entities), "kinds": KINDS,
            "relations": list(RELATIONS), "held_out_per_entity": HELD_OUT[dataset],
            "validation_held_out_per_entity": VALIDATION_HELD_OUT[dataset], "defects": defects,
            "letters": letters, "files": {split: len(wqs) for split, wqs in by_file.items()}, "teacher": WORLD_TEACHER, **world.facts()}
    files["world.json"] = json.dumps(meta, indent=1, ensure_ascii=False) + "\n"
    return files


def write_world(dataset: str, out: str | Path, *, seed: int = 42, questions: int = DEFAULT_QUESTIONS,
                defects: float = DEFAULT_DEFECTS, letters: str = "fixed", overwrite: bool = False) -> Path:
    """Write a world to ``out`` (``raw/``, ``teacher.jsonl``, ``world.json``); all or nothing."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TinyThinkerError(f"{out}: exists and is not empty; pass --overwrite to replace it or choose another --out")
    check_replaceable(out)
    files = {**world_files(dataset, seed=seed, questions=questions, defects=defects, letters=letters), OWNER_MARK: OWNER_TEXT}
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for path, text in files.items():
        target = staging / path
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
