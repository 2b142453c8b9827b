"""The lm-eval model ``tinythinker``: one ``lm_eval`` run does the whole multi-stage generation.

Every doc of our tasks carries its ``kind`` and ``variant`` (:mod:`tinythinker.evaluate.tasks`). For a
``full`` or ``sc`` doc it runs the inference engine (:func:`tinythinker.evaluate.engine.run_pipeline`)
in the doc's variant and answers with the whole trace as JSON, which the tasks' ``process_results``
score stage by stage; for an ``analyze_oracle`` doc it runs the engine with the teacher's recall
given. Any other request (the summarize-oracle kind, or another lm-eval task) is plain generation.
This module owns the trace format (:func:`encode_trace`, :func:`decode_trace`).

All requests of a run arrive in one ``generate_until`` call; they are grouped by what they need
(pipeline variant, oracle, sampling, samples per question) and every group goes through the engine
in one batched call, in generation batches of ``gen_batch_size`` sequences (default: as many as fit the
engine's memory budget, :mod:`tinythinker.decoding`). lm-eval's
own ``batch_size`` (1 unless given) does not reach the engine: lm-eval already hands over every
request at once, and a batch of 1 would make the engine an order of magnitude slower. Questions
come from the request's doc (our tasks' columns ``id``, ``question``, ``choices``, ``GT``,
``teacher_recall``), never from re-parsing the prompt.

Data parallel: under ``accelerate launch`` (several processes) the model reports lm-eval's ``rank``
and ``world_size`` from accelerate, so lm-eval gives each process every ``world_size``-th doc of each
task, and gathers the per-question results on rank 0, which writes the results.

    lm_eval --model tinythinker --model_args pretrained=runs/csqa-sft/best[,gen_batch_size=N,variant=full,seed=42,dtype=bfloat16] ...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lm_eval.models  # noqa: F401  (first: lm-eval registers its stock models only into an empty registry)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from tinythinker.errors import TinyThinkerError
import json

from tinythinker.evaluate.tasks import MODEL_NAME
from tinythinker.protocol import VARIANTS, letters_for, parse_answer

log = logging.getLogger(__name__)

# Sequences per generation batch (the engine's batch; model_args gen_batch_size=N). Not lm-eval's
# batch_size: lm-eval defaults that to 1, which would starve the engine.
DEFAULT_GEN_BATCH_SIZE = None  # the engine sizes its batches by memory
# Questions per engine call. After each call its responses go to lm-eval's request cache (when the
# run has --use_cache), so an interrupted run loses at most one call's work when rerun.
CHUNK_QUESTIONS = 512
# model_args that lm-eval also hands to the tasks (it merges them into the task metadata)
TASK_ARGS = ("data", "split", "trust_remote_code")


def register() -> type:
    """Make ``--model tinythinker`` known to lm-eval (idempotent: importing this module registers it,
    after lm-eval's stock models, which lm-eval only adds to an empty registry)."""
    from lm_eval.api.registry import get_model

    return get_model(MODEL_NAME)


@dataclass(frozen=True)
class _Job:
    """What one request needs: its group key decides which requests share one engine call."""

    mode: str  # "pipeline", "analyze_oracle" or "generate"
    variant: str
    do_sample: bool
    temperature: float
    top_k: int
    samples: int  # sampled: lm-eval's `repeats` of the request (samples per question); greedy: 1
    max_new_tokens: int
    until: tuple[str, ...]


def _parse_gen_batch_size(value) -> int | None:
    if value is None or str(value).strip().lower() in ("", "auto"):
        return DEFAULT_GEN_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1 or str(size) != str(value).strip():
        raise TinyThinkerError(f"gen_batch_size {value!r}: give a whole number of sequences, at least 1, or auto (the default: sized by memory)")
    return size


def _accelerator():
    """accelerate's state when this process is one of several launched ones (``accelerate launch``,
    torchrun), else None. On a machine without accelerators the processes run on the CPUs (gloo)."""
    import os

    from datetime import timedelta

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from tinythinker.students import distributed_on_cpus

    # a process that finished its share waits for the others in lm-eval's barrier and gathers, for as
    # long as their generation takes: no collective timeout (NCCL's default 10 minutes would abort it;
    # lm-eval's own hf model does the same)
    wait = InitProcessGroupKwargs(timeout=timedelta(weeks=52))
    accelerator = Accelerator(cpu=distributed_on_cpus(), kwargs_handlers=[wait])
    return accelerator if accelerator.num_processes > 1 else None


def _pick_device(device):
    import torch

    if device in (None, "", "auto"):
        return None  # the Student's default: cuda when available
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; running on cpu", device)
        return "cpu"
    return str(device)


@register_model(MODEL_NAME)
class TinyThinkerLM(LM):
    """A TinyThinker student behind lm-eval's LM interface (generate_until only)."""

    def __init__(self, pretrained: str, variant: str = "full", gen_batch_size=None, batch_size=None, max_batch_size=None,
                 device=None, dtype=None, bf16: bool = False, seed: int = 42, progress: bool = True, max_new_tokens=None,
                 revision=None, **task_args):
        super().__init__()
        from tinythinker.students import Student

        unknown = sorted(k for k in task_args if k not in TASK_ARGS and not k.startswith("data_"))
        if unknown:
            raise TinyThinkerError(f"unknown --model_args for tinythinker: {', '.join(unknown)} (known: pretrained, variant, "
                                   "gen_batch_size, device, dtype, bf16, seed, progress, max_new_tokens, revision; data/split go to the tasks)")
        if variant not in VARIANTS:
            raise TinyThinkerError(f"variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        self.pretrained = str(pretrained)
        self.variant = variant
        # the engine's batch; lm-eval's batch_size / max_batch_size (the CLI passes 1 by default) are
        # accepted and left out: lm-eval hands every request over at once, the engine batches them
        self.gen_batch_size = _parse_gen_batch_size(gen_batch_size)
        if batch_size not in (None, "") and str(batch_size) != str(self.gen_batch_size):
            log.info("lm-eval's batch_size %s is not the engine's batch: %d sequences per generation batch "
                     "(--model_args gen_batch_size=N)", batch_size, self.gen_batch_size)
        self.seed = int(seed)
        # a cap on recall and analysis length (the engine's defaults otherwise): bounds runaway text
        from tinythinker.evaluate.engine import stage_caps

        self.stage_tokens = stage_caps(None if max_new_tokens in (None, "") else int(max_new_tokens))
        self.accelerator = _accelerator()
        if self.accelerator is not None:
            # data parallel (lm-eval's LM API): this process answers every world_size-th doc. The global
            # process index, not the per-machine one, so that processes on several machines share the docs.
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            if device not in (None, "", "auto") and str(device) != str(self.accelerator.device):
                log.info("rank %d: device %s given, using accelerate's %s", self._rank, device, self.accelerator.device)
            device = str(self.accelerator.device)
        self.progress = _as_bool(progress) and self._rank == 0
        self.student = Student.load(self.pretrained, device=_pick_device(device), dtype=dtype, bf16=_as_bool(bf16),
                                    revision=None if revision in (None, "") else str(revision))
        self._device = self.student.device
        self.engine_seconds = 0.0  # time spent inside the engine (benchmarks/eval.py)

    # --- lm-eval's distributed primitives (evaluate() splits docs by rank and gathers results) -------

    def all_gather(self, tensor):
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        if self.accelerator is None:
            return [obj]
        import torch.distributed

        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # --- lm-eval interface ----------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise TinyThinkerError("the tinythinker model only generates (generate_until tasks); use --model hf for loglikelihood tasks")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise TinyThinkerError("the tinythinker model only generates (generate_until tasks); use --model hf for perplexity tasks")

    def get_model_info(self) -> dict:
        return {"tinythinker_student": self.pretrained, "tinythinker_student_revision": self.student.revision,
                "tinythinker_variant": self.variant,
                "tinythinker_seq2seq": self.student.is_seq2seq, "tinythinker_seed": self.seed,
                "tinythinker_max_new_tokens": self.stage_tokens, "tinythinker_gen_batch_size": self.gen_batch_size or "auto",
                "tinythinker_processes": self.world_size,
                "model_num_parameters": sum(p.numel() for p in self.student.model.parameters())}

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        import time

        started = time.perf_counter()
        # lm-eval repeats a request `repeats` times in a row (the same Instance): run it once, with
        # that many samples. Under several processes lm-eval also pads the shorter ranks with extra
        # copies of their last request; those copies get the same samples again, in the same order.
        counts: dict[int, int] = {}
        order: list = []
        for request in requests:
            if id(request) not in counts:
                counts[id(request)] = 0
                order.append(request)
            counts[id(request)] += 1
        groups: dict[_Job, list] = {}
        for request in order:
            repeats = getattr(request, "repeats", None) or counts[id(request)]
            groups.setdefault(self._job(request, repeats), []).append(request)
        answers: dict[int, list[str]] = {}
        for job, members in groups.items():
            if job.mode == "generate":
                answers.update(self._generate(job, members))
            else:
                answers.update(self._run_engine(job, members))
        # the k-th copy of a repeated request gets the k-th sample (a greedy request has one answer)
        taken: dict[int, int] = {}
        out = []
        for request in requests:
            k = taken.get(id(request), 0)
            taken[id(request)] = k + 1
            texts = answers[id(request)]
            out.append(texts[k % len(texts)])
        self.engine_seconds += time.perf_counter() - started
        return out

    # --- grouping -------------------------------------------------------------------------------

    def _job(self, request, repeats: int) -> _Job:
        gen_kwargs = dict(request.args[1] or {})
        do_sample = _as_bool(gen_kwargs.get("do_sample", False))
        until = gen_kwargs.get("until") or []
        # greedy repeats are all the same answer: one sample, and one group whatever the repeats
        job = dict(variant=self.variant, do_sample=do_sample, samples=repeats if do_sample else 1,
                   temperature=float(gen_kwargs.get("temperature", 0.7 if do_sample else 1.0)),
                   top_k=int(gen_kwargs.get("top_k", 0) or 0), max_new_tokens=int(gen_kwargs.get("max_gen_toks", 128)),
                   until=tuple([until] if isinstance(until, str) else until))
        doc = request.doc if isinstance(request.doc, dict) else {}
        # our tasks' docs say what they are (evaluate/tasks.py); any other request is plain generation
        kind = doc.get("kind") if {"id", "question", "choices"} <= set(doc) else None
        if kind in ("full", "sc"):
            return _Job(mode="pipeline", **{**job, "variant": doc.get("variant") or self.variant})
        if kind == "analyze_oracle" and doc.get("teacher_recall"):
            return _Job(mode="analyze_oracle", **{**job, "variant": "full"})
        return _Job(mode="generate", **job)

    # --- execution ------------------------------------------------------------------------------

    def _sampling(self, job: _Job):
        from tinythinker.evaluate.engine import Sampling

        if job.do_sample:
            return Sampling(do_sample=True, temperature=job.temperature, top_k=job.top_k)
        return Sampling()

    def _run_engine(self, job: _Job, members: list) -> dict[int, list[str]]:
        from tinythinker.data.splits import Item
        from tinythinker.evaluate.engine import run_pipeline

        samples = job.samples  # 1 when greedy: repeats would all be the same trace
        out: dict[int, list[str]] = {}
        for batch in _unique_id_batches(members):
            for start in range(0, len(batch), CHUNK_QUESTIONS):
                chunk = batch[start : start + CHUNK_QUESTIONS]
                items: dict[str, Item] = {}
                for r in chunk:  # one item per question, however many tasks asked for it
                    items.setdefault(r.doc["id"], Item(id=r.doc["id"], question=r.doc["question"],
                                                       letters=letters_for(len(r.doc["choices"])), gold=r.doc.get("GT")))
                given = {r.doc["id"]: r.doc["teacher_recall"] for r in chunk} if job.mode == "analyze_oracle" else None
                traces = run_pipeline(self.student, list(items.values()), variant=job.variant, samples=samples,
                                      sampling=self._sampling(job), batch_size=self.gen_batch_size, seed=self.seed,
                                      progress=self.progress, given_recalls=given, max_new_tokens=self.stage_tokens)
                by_key = {(t.id, t.sample): t for t in traces}
                for request in chunk:
                    texts = [encode_trace(by_key[(request.doc["id"], s)]) for s in range(samples)]
                    out[id(request)] = texts
                    self._cache(request, texts, job)
        return out

    def _cache(self, request, texts: list[str], job: _Job) -> None:
        """Hand a finished greedy response to lm-eval's request cache (a no-op without --use_cache;
        lm-eval never caches sampled responses)."""
        if not job.do_sample:
            self.cache_hook.add_partial("generate_until", request.args, texts[0])

    def _generate(self, job: _Job, members: list) -> dict[int, list[str]]:
        prompts = [r.args[0] for r in members]
        sampling = dict(do_sample=True, temperature=job.temperature, top_k=job.top_k, num_return_sequences=job.samples) if job.do_sample else {}
        texts = self.student.generate(prompts, max_new_tokens=job.max_new_tokens, seed=self.seed, batch_size=self.gen_batch_size, **sampling)
        out = {}
        for request, continuations in zip(members, texts):
            cut = [_cut_at(text, job.until) for text in continuations]
            out[id(request)] = cut
            self._cache(request, cut, job)
        return out


# --- the trace format: one lm-eval response is one whole trace as JSON ------------------------------

def encode_trace(trace) -> str:
    """One lm-eval response: the whole trace (``Trace`` or its dict) as compact JSON."""
    data = trace.to_dict() if hasattr(trace, "to_dict") else dict(trace)
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def decode_trace(response: str, task: str) -> dict:
    """The trace in one lm-eval response; a clear error when the model did not run the pipeline."""
    try:
        data = json.loads(response)
    except (TypeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or "summary" not in data or "analyses" not in data:
        raise TinyThinkerError(
            f"{task}: the model's response is not a TinyThinker trace ({str(response)[:60]!r}); run this task with "
            "--model tinythinker (the *_summarize_oracle tasks are the ones any generate_until model can run)"
        )
    return data


def parse_summary_response(response: str) -> dict:
    """A summarize-oracle response: plain generated text, or a trace when our model returned one."""
    try:
        data = json.loads(response)
    except (TypeError, json.JSONDecodeError):
        data = None
    if isinstance(data, dict) and "summary" in data:
        return {"summary": data["summary"], "answer": data.get("answer")}
    summary = (response or "").strip()
    return {"summary": summary, "answer": parse_answer(summary)}


def _unique_id_batches(members: list) -> list[list]:
    """Split requests so that no engine call holds two different questions under one id (ids of
    different data sets could collide); the same question asked twice stays in one call."""
    batches: list[dict[str, str]] = []  # per batch: id -> question
    grouped: list[list] = []
    for request in members:
        qid, question = request.doc["id"], request.doc["question"]
        for questions, batch in zip(batches, grouped):
            if questions.setdefault(qid, question) == question:
                batch.append(request)
                break
        else:
            batches.append({qid: question})
            grouped.append([request])
    return grouped


def _cut_at(text: str, until: tuple[str, ...]) -> str:
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
