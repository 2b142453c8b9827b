"""Batched three-stage inference (REFERENCE 8): Recall -> Analyze (every option) -> Summarize, and the
baselines' one pass (``cot``, ``dsbs``: one generation per question, its answer read by the same rule).

The engine runs stage by stage over all questions at once: all recalls, then every (question x
option) analysis, then all summaries. Each stage's prompts are tokenised once, sorted by length and
cut into batches (:meth:`Student.generate_ids`), so batches are full and barely padded; greedy
stages generate each distinct prompt once. Recall and analyze may be sampled (several samples per
question through ``num_return_sequences`` or distinct prompts); summarize is always greedy. The
same student, items, settings and seed give the same traces.

Every prompt comes from :mod:`tinythinker.protocol`; this module never writes stage text itself.
It is the engine behind the trainer's validation, self-reflection data and evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

from tinythinker import protocol
from tinythinker.data.splits import Item
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import ANALYZE, RECALL, SUMMARIZE, VARIANT_STAGES

# Longest continuation per stage. A trained student stops at eos long before (teacher recalls and
# analyses are 20-35 words, a summary is `So the answer is option X.`); the caps bound runaway text.
MAX_NEW_TOKENS = {RECALL: 96, ANALYZE: 96, SUMMARIZE: 16}


def stage_caps(max_new_tokens: int | None) -> dict[str, int] | None:
    """The per-stage caps of one ``max_new_tokens`` setting: recall and analyze capped at it, summarize (a
    short sentence) keeping its own; None: :data:`MAX_NEW_TOKENS` as they are."""
    return None if max_new_tokens is None else {RECALL: int(max_new_tokens), ANALYZE: int(max_new_tokens)}


def one_pass_cap(caps: dict[str, int], stage: str, n_options: int) -> int:
    """The new-token cap of a one-pass stage (a baseline's): ``caps[stage]`` when given, else the caps
    of the stage texts its target holds, summed (analyze once per option), so the one pass may write
    what the three stages together may: CoT 96 + 5 x 96 + 16 = 592 on csqa, DSbS's label 16."""
    if stage in caps:
        return caps[stage]
    return sum(caps[part] * (n_options if part == ANALYZE else 1) for part in protocol.ONE_PASS_TEXTS[stage])


@dataclass
class Sampling:
    """How recall and analyze are decoded (summarize is always greedy)."""

    do_sample: bool = False
    temperature: float = 0.7
    top_k: int = 0  # 0: no top-k cut


GREEDY = Sampling()


@dataclass
class Trace:
    """Everything one run of the pipeline on one question produced (one per question and sample)."""

    id: str
    sample: int
    recall: str | None
    analyses: dict[str, str]
    summary: str
    answer: str | None
    gold: str | None
    correct: bool
    seconds: float  # this run's share of the batches it was in (traces of a run sum to its wall time)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "Trace":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in names})


# --- the stage runner ----------------------------------------------------------------------------

class _Progress:
    """A rich progress bar with one task per stage (a no-op when disabled)."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.console import Console

            from tinythinker.progress import progress_bar

            self.bar = progress_bar(console=Console(stderr=True))

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def task(self, name: str, total: int) -> Callable[[int], None]:
        if self.bar is None:
            return lambda done: None
        task_id = self.bar.add_task(name, total=total)
        return lambda done: self.bar.advance(task_id, done)


_NO_PROGRESS = _Progress(False)


def _run_stage(student, prompts: Sequence[str], owners: Sequence[int], n_owners: int, *, n: int, sampling: Sampling,
               seed: int, max_new_tokens: int, batch_size: int, progress: _Progress, name: str):
    """Generate ``n`` continuations for every prompt (ensure nothing is generated twice when greedy).

    Returns (texts per prompt, seconds per owner): each batch's time is shared by its sequences and
    credited to the owner (question or sample) of each prompt."""
    sample = sampling.do_sample
    if n > 1 and not sample:
        raise ValueError("several samples per prompt need sampling (Sampling(do_sample=True))")
    if not prompts:
        return [], [0.0] * n_owners
    distinct = list(dict.fromkeys(prompts)) if not sample else list(prompts)
    where = {p: i for i, p in enumerate(distinct)}
    users: list[list[int]] = [[] for _ in distinct]  # prompt positions served by each distinct prompt
    for position, prompt in enumerate(prompts):
        users[where[prompt] if not sample else position].append(position)
    seconds = [0.0] * n_owners
    advance = progress.task(name, len(distinct) * n)

    def on_batch(indices: list[int], elapsed: float) -> None:
        share = elapsed / sum(len(users[i]) for i in indices)
        for i in indices:
            for position in users[i]:
                seconds[owners[position]] += share
        advance(len(indices) * n)

    ids = student.tokenize_prompts(distinct)
    texts = student.generate_ids(ids, max_new_tokens=max_new_tokens, do_sample=sample, temperature=sampling.temperature,
                                 top_k=sampling.top_k, num_return_sequences=n, seed=seed if sample else None,
                                 batch_size=batch_size, on_batch=on_batch)
    out: list[list[str]] = [[] for _ in prompts]
    for i, positions in enumerate(users):
        for position in positions:
            out[position] = texts[i]
    return out, seconds


def _recalls(student, items, n, sampling, seed, *, max_new_tokens, batch_size, progress=_NO_PROGRESS):
    prompts = [protocol.recall_prompt(item.question) for item in items]
    texts, seconds = _run_stage(student, prompts, range(len(items)), len(items), n=n, sampling=sampling, seed=seed,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, name=RECALL)
    return [[protocol.ensure_period(t) for t in row] for row in texts], seconds


def _analyses(student, units, n, sampling, seed, *, max_new_tokens, batch_size, progress=_NO_PROGRESS):
    prompts, owners, slots = [], [], []
    for u, (item, recall) in enumerate(units):
        for letter in item.letters:
            prompts.append(protocol.analyze_prompt(item.question, letter, recall))
            owners.append(u)
            slots.append(letter)
    texts, seconds = _run_stage(student, prompts, owners, len(units), n=n, sampling=sampling, seed=seed,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, name=ANALYZE)
    runs: list[list[dict[str, str]]] = [[{} for _ in range(n)] for _ in units]
    for row, owner, letter in zip(texts, owners, slots):
        for k, text in enumerate(row):
            runs[owner][k][letter] = protocol.ensure_period(text)
    return runs, seconds


def _one_pass(student, items, stage, n, sampling, seed, *, caps, batch_size, progress=_NO_PROGRESS):
    """A baseline's one pass per question (``n`` samples when sampled): [(text, answer)] per item."""
    prompts = [protocol.one_pass_prompt(item.question, stage) for item in items]
    cap = max((one_pass_cap(caps, stage, len(item.letters)) for item in items), default=0)
    texts, seconds = _run_stage(student, prompts, range(len(items)), len(items), n=n, sampling=sampling, seed=seed,
                                max_new_tokens=cap, batch_size=batch_size, progress=progress, name=stage)
    return [[(text, protocol.parse_answer(text)) for text in row] for row in texts], seconds


def _summaries(student, units, *, max_new_tokens, batch_size, progress=_NO_PROGRESS):
    prompts = [protocol.summarize_prompt(item.question, recall, analyses) for item, recall, analyses in units]
    texts, seconds = _run_stage(student, prompts, range(len(units)), len(units), n=1, sampling=GREEDY, seed=0,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, name=SUMMARIZE)
    return [(row[0], protocol.parse_answer(row[0])) for row in texts], seconds


# --- stage primitives (self-reflection builds its pairs from these) -------------------------------

def generate_recalls(student, items: Sequence[Item], n: int = 1, sampling: Sampling = GREEDY, seed: int = 42, *,
                     max_new_tokens: int = MAX_NEW_TOKENS[RECALL], batch_size: int | None = None) -> dict[str, list[str]]:
    """``n`` recalls per question id (period-terminated, REFERENCE 8.1)."""
    texts, _ = _recalls(student, items, n, sampling, seed, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return {item.id: row for item, row in zip(items, texts)}


def generate_analyses(student, units: list[tuple[Item, str | None]], n: int = 1, sampling: Sampling = GREEDY,
                      seed: int = 42, *, max_new_tokens: int = MAX_NEW_TOKENS[ANALYZE],
                      batch_size: int | None = None) -> list[list[dict[str, str]]]:
    """For every (question, recall or None) unit, ``n`` runs of per-option analyses {letter: text}."""
    runs, _ = _analyses(student, units, n, sampling, seed, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return runs


def generate_summaries(student, units: list[tuple[Item, str | None, dict[str, str] | None]], *,
                       max_new_tokens: int = MAX_NEW_TOKENS[SUMMARIZE], batch_size: int | None = None) -> list[tuple[str, str | None]]:
    """Greedy summary and its parsed answer letter for every (question, recall, analyses) unit."""
    results, _ = _summaries(student, units, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return results


# --- the whole pipeline --------------------------------------------------------------------------

def _analyze_runs(student, items, runs, recall_of, given_analyses, *, samples, sampling, seed, max_new_tokens, batch_size,
                  progress) -> tuple[list[dict[str, str]], list[float]]:
    """The analyses of every (item, sample) run, and the seconds spent on each: generated, or the
    teacher's where ``given_analyses`` has the question. ``recall_of`` (per run) is None without a
    recall stage: then a question's samples share their prompts and are drawn ``samples`` at once."""
    analyses_of: list[dict[str, str] | None] = [None] * len(runs)
    seconds = [0.0] * len(runs)
    todo_runs = [r for r, (i, _) in enumerate(runs) if items[i].id not in given_analyses]
    if recall_of is not None:  # each sample has its own recall: one prompt set per run
        units = [(items[runs[r][0]], recall_of[r]) for r in todo_runs]
        results, spent = _analyses(student, units, 1, sampling, seed, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, progress=progress)
        for r, result, t in zip(todo_runs, results, spent):
            analyses_of[r], seconds[r] = result[0], t
    else:
        todo_items = list(dict.fromkeys(runs[r][0] for r in todo_runs))
        results, spent = _analyses(student, [(items[i], None) for i in todo_items], samples, sampling, seed,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
        by_item = {i: (result, t / samples) for i, result, t in zip(todo_items, results, spent)}
        for r in todo_runs:
            i, s = runs[r]
            analyses_of[r], seconds[r] = by_item[i][0][s], by_item[i][1]
    for r, (i, _) in enumerate(runs):
        if analyses_of[r] is None:
            given = given_analyses[items[i].id]
            analyses_of[r] = {x: protocol.ensure_period(given[x]) for x in items[i].letters if x in given}
    return analyses_of, seconds


def run_pipeline(
    student,
    items: Sequence[Item],
    *,
    variant: str = "full",
    samples: int = 1,
    sampling: Sampling = GREEDY,
    batch_size: int | None = None,
    seed: int = 42,
    progress: bool = True,
    given_recalls: dict[str, str] | None = None,
    given_analyses: dict[str, dict[str, str]] | None = None,
    max_new_tokens: dict[str, int] | None = None,
) -> list[Trace]:
    """Run the variant's stages over all items; one :class:`Trace` per (item, sample), item order.

    ``samples`` > 1 needs ``sampling.do_sample`` (self-consistency: see :func:`vote`).
    ``given_recalls`` / ``given_analyses`` replace the student's text for the ids they hold with the
    teacher's (oracle evaluation). ``max_new_tokens`` overrides :data:`MAX_NEW_TOKENS` per stage (a
    baseline's one pass: :func:`one_pass_cap`). A baseline (``cot``, ``dsbs``) runs its one pass,
    sampled like recall when ``sampling`` samples; its trace's ``summary`` is the whole generated text."""
    if variant not in VARIANT_STAGES:
        raise TinyThinkerError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANT_STAGES)}")
    if samples < 1:
        raise ValueError("samples must be at least 1")
    if samples > 1 and not sampling.do_sample:
        raise ValueError("samples > 1 needs sampling (Sampling(do_sample=True)); greedy runs would all be equal")
    stages = VARIANT_STAGES[variant]
    caps = {**MAX_NEW_TOKENS, **(max_new_tokens or {})}
    items = list(items)
    runs = [(i, s) for i in range(len(items)) for s in range(samples)]  # one trace each, in output order
    with _Progress(progress) as bar:
        if stages[0] in protocol.ONE_PASS_TEXTS:
            texts, spent = _one_pass(student, items, stages[0], samples, sampling, seed, caps=caps, batch_size=batch_size,
                                     progress=bar)
            recall_of, analyses_of = [None] * len(runs), [None] * len(runs)
            results = [texts[i][s] for i, s in runs]
            seconds = {stages[0]: [spent[i] / samples for i, _ in runs]}
        else:
            recall_of, analyses_of, results, seconds = _staged_runs(
                student, items, runs, stages, samples=samples, sampling=sampling, seed=seed, caps=caps, batch_size=batch_size,
                given_recalls=given_recalls or {}, given_analyses=given_analyses or {}, progress=bar)
    traces = []
    for r, (i, s) in enumerate(runs):
        item = items[i]
        summary, answer = results[r]
        stage_seconds = {stage: seconds[stage][r] for stage in stages}
        traces.append(Trace(id=item.id, sample=s, recall=recall_of[r], analyses=analyses_of[r] or {}, summary=summary,
                            answer=answer, gold=item.gold, correct=answer is not None and answer == item.gold,
                            seconds=sum(stage_seconds.values()), stage_seconds=stage_seconds))
    return traces


def _staged_runs(student, items, runs, stages, *, samples, sampling, seed, caps, batch_size, given_recalls, given_analyses,
                 progress):
    """Recall -> Analyze -> Summarize (the stages of ``stages``) for every (item, sample) run:
    (recall per run, analyses per run, (summary, answer) per run, {stage: seconds per run})."""
    seconds = {stage: [0.0] * len(runs) for stage in stages}
    recall_of: list[str | None] = [None] * len(runs)
    analyses_of: list[dict[str, str] | None] = [None] * len(runs)
    if RECALL in stages:
        todo = [i for i, item in enumerate(items) if item.id not in given_recalls]
        texts, spent = _recalls(student, [items[i] for i in todo], samples, sampling, seed,
                                max_new_tokens=caps[RECALL], batch_size=batch_size, progress=progress)
        generated = {i: (row, t / samples) for i, row, t in zip(todo, texts, spent)}
        for r, (i, s) in enumerate(runs):
            if i in generated:
                recall_of[r] = generated[i][0][s]
                seconds[RECALL][r] = generated[i][1]
            else:
                recall_of[r] = protocol.ensure_period(given_recalls[items[i].id])
    if ANALYZE in stages:
        analyses_of, seconds[ANALYZE] = _analyze_runs(
            student, items, runs, recall_of if RECALL in stages else None, given_analyses, samples=samples,
            sampling=sampling, seed=seed + 1, max_new_tokens=caps[ANALYZE], batch_size=batch_size, progress=progress)
    results, seconds[SUMMARIZE] = _summaries(student, [(items[i], recall_of[r], analyses_of[r]) for r, (i, _) in enumerate(runs)],
                                             max_new_tokens=caps[SUMMARIZE], batch_size=batch_size, progress=progress)
    return recall_of, analyses_of, results, seconds


def vote(traces: Iterable[Trace]) -> dict[str, str | None]:
    """Self-consistency as the reference counts it (``Counter(predictions).most_common(1)``): the
    most frequent answer per question id, a run with no parsable answer voting for None, a tie going
    to the answer of the lowest sample."""
    answers: dict[str, list[tuple[int, str | None]]] = {}
    for trace in traces:
        answers.setdefault(trace.id, []).append((trace.sample, trace.answer))
    result = {}
    for qid, pairs in answers.items():
        result[qid] = protocol.majority(a for _, a in sorted(pairs, key=lambda p: p[0]))
    return result


def accuracy(traces: Sequence[Trace]) -> dict[str, float | int]:
    """Accuracy of a run: per sample, and of the self-consistency vote over samples."""
    traces = list(traces)
    gold = {t.id: t.gold for t in traces}
    voted = vote(traces)
    n = len(gold)
    return {
        "questions": n,
        "runs": len(traces),
        "accuracy": sum(voted[q] is not None and voted[q] == gold[q] for q in gold) / n if n else 0.0,
        "sample_accuracy": sum(t.correct for t in traces) / len(traces) if traces else 0.0,
        "no_answer": sum(t.answer is None for t in traces) / len(traces) if traces else 0.0,
    }

