"""The generation engine behind :meth:`tinythinker.students.Student.generate_ids`.

A lean decoding loop on the model's own forward (seq2seq: the encoder, then the decoder step by step
with an ``EncoderDecoderCache``; causal: a prefill, then one token per step with a ``DynamicCache``),
instead of one ``model.generate`` call per batch. What it does differently from ``generate``:

* **Batches sized by a memory budget**, not a fixed count: the rows of a batch fit ``memory_budget``
  bytes of cache, logits and activations (estimated from the model's config), so a tiny student
  decodes thousands of sequences per batch and a large one stays within memory. An explicit
  ``batch_size`` caps the sequences per batch instead.
* **Prompts in chunks, decoding in bulk**: the encoder (causal: the prefill) runs over chunks of
  similar lengths (:data:`ENCODER_CHUNK_TOKENS`), since attention over the prompt is quadratic in its
  padded width; the decoder steps run over the whole batch.
* **Finished rows leave the batch**: a row that emits eos (or reaches ``max_new_tokens``) stops
  counting at once and, once such rows are :data:`COMPACT_AT` of the batch, is removed from the
  batch and its cache (``generate`` computes every row until the longest one ends).
* **Less copying and per-step overhead**: keys and values live in preallocated buffers (a step writes
  one column; ``DynamicCache`` concatenates, i.e. copies, the whole cache every step); no logits
  processors, stopping criteria or growing ``input_ids``.
* **Shared prompt work**: a prompt is encoded once for all its ``num_return_sequences``; causal
  prompts that differ only in their last tokens (a question's analyze prompts) share the prefill of
  their common prefix (:func:`shared_suffix`).

Greedy texts equal ``model.generate``'s (same forward calls, argmax on float32 logits); only batch
composition differs, which can move float rounding in the last bits (the benchmark checks every text).
Sampling: temperature, then top-k (0 = off), then a draw from the softmax (inverse CDF at one
uniform number per row: distributed as ``torch.multinomial``'s draw) from one ``torch.Generator``
seeded with ``seed`` on the model's device. The same prompts, seed, settings, batch sizing
(``batch_size`` / ``memory_budget``) and device give the same texts.

Models whose generation config asks for more than plain greedy/sampling (forced bos/eos tokens,
suppressed tokens, a minimum length, ...) go through :func:`plain_generate_ids` (``model.generate``),
as does everything when ``plain=True``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from typing import Callable, Sequence

import torch

# How a checkpoint's generation_config is read (every field of transformers' GenerationConfig is in one of
# these, or forces model.generate: tests/test_decoding.py pins the list against the installed release).
# The call decides the decoding: greedy, or sampling with temperature and top-k.
ENGINE_FIELDS = frozenset({
    # what the engine does itself: length, the call's decoding, the special tokens
    "max_length", "max_new_tokens", "do_sample", "temperature", "top_k", "num_return_sequences",
    "pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id",
    # what does not change the tokens: outputs, caches, compilation, memory, speculative decoding
    "use_cache", "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "transformers_version", "_from_model_config", "cache_implementation", "cache_config", "max_cache_len",
    "compile_config", "disable_compile", "prefill_chunk_size", "continuous_batching_config", "low_memory",
    "remove_invalid_values", "renormalize_logits", "is_assistant", "assistant_confidence_threshold",
    "assistant_early_exit", "assistant_lookbehind", "target_lookbehind", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "prompt_lookup_num_tokens", "max_matching_ngram_size",
})
# other search strategies and logits processors: the plain path states these neutral values (when it samples,
# the sampling warpers too), so that neither path takes the checkpoint's (docs/students.md lists them)
IGNORED_FIELDS = {"num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "early_stopping": False,
                  "length_penalty": 1.0, "penalty_alpha": 0.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                  "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0}
IGNORED_WHEN_SAMPLING = {"top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
# Any other field set to something other than its neutral value (forced or suppressed tokens, a minimum length,
# stop strings, ...: fields the engine does not implement, including those of later transformers releases) makes
# the engine hand the checkpoint to model.generate, which honours it.
NEUTRAL = {"min_length": 0, "min_new_tokens": 0, "token_healing": False, "guidance_scale": 1.0}
CPU_MEMORY_BUDGET = 1 << 30  # bytes per generation batch on a CPU
CUDA_MEMORY_FRACTION = 0.25  # of the device's memory (the weights and other work need the rest)
MAX_ROWS = 4096  # sequences per batch at most, however small the model
ENCODER_CHUNK_TOKENS = 4096  # padded prompt tokens per encoder call or causal prefill (see _encode, _prefill)
SHARE_PREFIXES = True  # causal: prompts that differ only in their last tokens share their prefix's prefill
COMPACT_AT = 0.5  # finished rows leave the batch (a copy of its cache) once they are this share of its rows (measured: docs/students.md)


def pad_rows(rows: Sequence[Sequence[int]], value: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows as one [n, longest] tensor padded with ``value`` (on the left: every row ends at the
    last column, where a causal continuation starts), and the attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
    return ids, mask


def plain_only(model) -> str | None:
    """The first generation_config field of ``model`` that the lean loop does not implement and that is set
    (:data:`ENGINE_FIELDS`, :data:`IGNORED_FIELDS`), else None: such a checkpoint is decoded by model.generate."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return None
    handled = ENGINE_FIELDS | set(IGNORED_FIELDS) | set(IGNORED_WHEN_SAMPLING)
    for name, value in sorted(config.to_dict().items()):
        if name in handled or value is None or value in ([], (), {}) or value == NEUTRAL.get(name):
            continue
        return name
    return None


@functools.cache
def engine_contract() -> str | None:
    """What the lean loop needs of transformers' cache classes, checked once: None when all is there, else
    what is missing (a later release that changes these internals: the engine then hands every batch to
    model.generate, with one warning)."""
    try:
        from transformers import DynamicCache, EncoderDecoderCache
        from transformers.cache_utils import DynamicLayer
        from transformers.modeling_outputs import BaseModelOutput  # noqa: F401

        cache = DynamicCache()
        missing = [name for name in ("layers", "layer_class_to_replicate", "batch_select_indices", "batch_repeat_interleave")
                   if not hasattr(cache, name)]
        layer = DynamicLayer()
        missing += [f"DynamicLayer.{name}" for name in ("keys", "values", "is_initialized", "update", "get_seq_length")
                    if not hasattr(layer, name)]
        EncoderDecoderCache(DynamicCache(), DynamicCache())
    except Exception as error:  # noqa: BLE001 - any change of these internals means: do not use them
        return f"{type(error).__name__}: {error}"
    return f"transformers' cache has no {', '.join(missing)}" if missing else None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("tinythinker").warning(message)


def bytes_per_row(model, prompt_len: int, max_new_tokens: int) -> int:
    """Rough bytes one generated sequence holds during decoding: its KV cache (self-attention over
    prompt and continuation; seq2seq also the cross-attention over the prompt and the encoder's
    outputs), one step's logits and their float32 copies, and the widest activation of a prompt pass."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(config, "d_model", None) or getattr(config, "hidden_size", 512)
    layers = getattr(config, "num_decoder_layers", None) or getattr(config, "num_layers", None) \
        or getattr(config, "num_hidden_layers", 6)
    heads = getattr(config, "num_heads", None) or getattr(config, "num_attention_heads", 8)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "d_kv", None) or getattr(config, "head_dim", None) or hidden // heads
    wide = getattr(config, "d_ff", None) or getattr(config, "intermediate_size", None) or 4 * hidden
    vocab = getattr(config, "vocab_size", 32000)
    per_token = 2 * layers * kv_heads * head_dim * 4  # keys and values, float32
    cached = prompt_len + max_new_tokens
    if model.config.is_encoder_decoder:
        cached += prompt_len  # cross-attention keys and values
    prompt_pass = prompt_len * (wide + heads * prompt_len) * 4  # feed-forward or attention scores of one layer
    states = prompt_len * hidden * 4 if model.config.is_encoder_decoder else 0  # encoder outputs, kept while decoding
    return per_token * cached + 4 * vocab * 4 + prompt_pass + states


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":  # of the total, not the free memory: the same batches (and samples) on every run
        return int(torch.cuda.get_device_properties(device).total_memory * CUDA_MEMORY_FRACTION)
    return CPU_MEMORY_BUDGET


def plan_batches(lengths: Sequence[int], order: Sequence[int], *, n: int, max_new_tokens: int, batch_size: int | None,
                 row_bytes: Callable[[int], int], budget: int) -> list[list[int]]:
    """Cut ``order`` (prompt indices, longest first) into batches: at most ``batch_size`` sequences
    (``n`` per prompt) when given, else as many as ``budget`` bytes hold (the first, longest prompt of
    a batch sets its width); always at least one prompt."""
    batches, start = [], 0
    while start < len(order):
        width = lengths[order[start]]
        if batch_size is not None:
            prompts = max(1, batch_size // n)
        else:
            prompts = max(1, min(MAX_ROWS, budget // max(1, row_bytes(width))) // n)
        batches.append(list(order[start : start + prompts]))
        start += prompts
    return batches


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_class: type) -> frozenset[str]:
    """The argument names of a model class's forward (read once per class, not per batch)."""
    return frozenset(inspect.signature(model_class.forward).parameters)


def _cache_kwarg(model) -> str | None:
    """``cache`` (transformers >= 5.x) or ``past_key_values`` (older): what the forward calls its KV cache;
    None when it takes neither (the engine cannot feed it one)."""
    parameters = _forward_parameters(type(model))
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _last_logits_only(model) -> dict:
    """``logits_to_keep=1`` where the forward takes it: a prefill needs the last position's logits only."""
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(type(model)) else {}


def _choose(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, generator) -> torch.Tensor:
    """Next token per row: argmax, or (as ``generate``'s warpers) temperature, then top-k, then a draw."""
    scores = logits.to(torch.float32)
    if not do_sample:
        return scores.argmax(dim=-1)
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        k = min(top_k, scores.shape[-1])
        threshold = torch.topk(scores, k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    # a draw from softmax(scores) by inverting its cumulative sum at one uniform number per row (the
    # distribution of torch.multinomial's draw; several times faster for many rows on a CPU, and one
    # random number per row rather than one per vocabulary entry)
    cdf = torch.softmax(scores, dim=-1).cumsum_(dim=-1)
    u = torch.rand((cdf.shape[0], 1), generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[-1] - 1)


class _Clock:
    """Time per sequence: each interval is shared equally by the rows running in it, so the seconds
    of all sequences sum to the wall time. ``share`` is the running sum of per-row shares."""

    def __init__(self):
        self.share = 0.0
        self.mark = time.perf_counter()

    def tick(self, rows: int) -> None:
        now = time.perf_counter()
        self.share += (now - self.mark) / max(1, rows)
        self.mark = now


def _chunks(widths: Sequence[int], tokens: int) -> list[slice]:
    """Consecutive slices of rows (longest first) with at most ``tokens`` padded tokens each (at least one row)."""
    out, start = [], 0
    while start < len(widths):
        stop = start + max(1, tokens // max(1, widths[start]))
        out.append(slice(start, min(stop, len(widths))))
        start = stop
    return out


def _encode(student, rows: list[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder states and mask of ``rows`` (longest first), right-padded to the longest. The encoder
    runs in chunks of :data:`ENCODER_CHUNK_TOKENS` padded tokens: its attention is quadratic in the
    width, so a chunk of similar lengths wastes little on padding and keeps its score tensors small,
    while the decoder still runs all rows at once."""
    encoder, device, pad = student.model.get_encoder(), student.device, student.tokenizer.pad_token_id
    width = max(1, max(len(row) for row in rows))
    states, masks = [], []
    for part in _chunks([max(1, len(row)) for row in rows], ENCODER_CHUNK_TOKENS):
        input_ids, mask = pad_rows(rows[part], pad)
        input_ids, mask = input_ids.to(device), mask.to(device)
        hidden = encoder(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state
        extra = width - hidden.shape[1]
        if extra:
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, extra))
            mask = torch.nn.functional.pad(mask, (0, extra))
        states.append(hidden)
        masks.append(mask)
    if len(states) == 1:
        return states[0], masks[0]
    return torch.cat(states), torch.cat(masks)


def shared_suffix(rows: Sequence[Sequence[int]], longest: int = 8) -> int:
    """How many last tokens to split off so that prompts sharing the rest can share its prefill: the
    largest difference (at most ``longest`` tokens) at the end of neighbouring prompts of equal length
    that are otherwise equal (a question's analyze prompts differ only in ``For option X,``); 0 when
    no prompts pair up or too few would share (under a third of the rows)."""
    suffix = 0
    for a, b in zip(rows, rows[1:]):
        if len(a) == len(b) and a != b:
            for k in range(1, min(longest, len(a) - 1) + 1):
                if a[: len(a) - k] == b[: len(b) - k]:
                    suffix = max(suffix, k)
                    break
    if not suffix or any(len(row) <= suffix for row in rows):
        return 0
    distinct = len({tuple(row[: len(row) - suffix]) for row in rows})
    return suffix if distinct <= len(rows) * 2 / 3 else 0


def _prefill(student, rows: list[Sequence[int]], cache_name: str, max_new_tokens: int):
    """Causal prompts through the model, as ``generate``'s prefill (see :func:`_prefill_rows`); when
    prompts differ only in their last few tokens (:func:`shared_suffix`, with :data:`SHARE_PREFIXES`),
    each distinct prefix is computed once, its cache copied to the prompts that share it, and the last
    tokens run as one more step over all rows."""
    suffix = shared_suffix(rows) if SHARE_PREFIXES else 0
    if not suffix:
        return _prefill_rows(student, rows, cache_name, max_new_tokens)
    model, device = student.model, student.device
    heads = {}
    index = [heads.setdefault(tuple(row[: len(row) - suffix]), len(heads)) for row in rows]
    _, cache, mask, positions = _prefill_rows(student, [list(head) for head in heads], cache_name, max_new_tokens + suffix)
    index = torch.tensor(index, device=device)
    cache.batch_select_indices(index)
    mask = torch.nn.functional.pad(mask[index], (0, suffix), value=1)
    positions = positions[index] + torch.arange(1, suffix + 1, device=device)
    tails = torch.tensor([list(row[len(row) - suffix :]) for row in rows], dtype=torch.long, device=device)
    extra = _last_logits_only(model)
    logits = model(input_ids=tails, attention_mask=None if bool(mask.all()) else mask, position_ids=positions,
                   use_cache=True, **{cache_name: cache}, **extra).logits[:, -1]
    return logits, cache, mask, positions[:, -1:]


def _prefill_rows(student, rows: list[Sequence[int]], cache_name: str, max_new_tokens: int):
    """Causal prompts (longest first) through the model in chunks of :data:`ENCODER_CHUNK_TOKENS`
    padded tokens (attention is quadratic in the width), each left-padded to its own longest; the
    chunks' caches are then left-padded (masked) to the batch's width and copied into one cache with
    room for ``max_new_tokens`` more. Returns the last position's logits, the cache, the attention
    mask and the last position ids, as ``generate``'s prefill would (count of real tokens before; pads 0)."""
    from transformers import DynamicCache

    model, device, pad = student.model, student.device, student.tokenizer.pad_token_id
    extra = _last_logits_only(model)
    width = max(1, max(len(row) for row in rows))
    logits, masks, positions = [], [], []
    joined = _buffered_cache(max_new_tokens)
    for part in _chunks([max(1, len(row)) for row in rows], ENCODER_CHUNK_TOKENS):
        input_ids, mask = pad_rows(rows[part], pad, left=True)
        input_ids, mask = input_ids.to(device), mask.to(device)
        position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache()
        logits.append(model(input_ids=input_ids, attention_mask=None if bool(mask.all()) else mask, position_ids=position,
                            use_cache=True, **{cache_name: cache}, **extra).logits[:, -1])
        masks.append(torch.nn.functional.pad(mask, (width - mask.shape[1], 0)))
        positions.append(position[:, -1:])
        for index, layer in enumerate(cache.layers):
            while len(joined.layers) <= index:
                joined.layers.append(joined.layer_class_to_replicate())
            joined.layers[index].place(layer.keys, layer.values, part, len(rows), width)
    return torch.cat(logits), joined, torch.cat(masks), torch.cat(positions)


@functools.cache
def _buffered_layer_class():
    """A ``DynamicLayer`` whose keys and values live in a buffer with room for ``room`` more tokens, so
    a decoding step writes one column instead of concatenating (copying) the whole cache, as
    ``DynamicLayer.update`` does; ``keys`` / ``values`` are views of the filled part."""
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        def __init__(self, room: int):
            super().__init__()
            self.room, self.length, self.key_buffer, self.value_buffer = room, 0, None, None

        def _views(self):
            self.keys = self.key_buffer[:, :, : self.length]
            self.values = self.value_buffer[:, :, : self.length]

        def _allocate(self, like: torch.Tensor, batch: int, length: int):
            shape = (batch, like.shape[1], length + self.room, like.shape[3])
            self.key_buffer = like.new_empty(shape)  # unfilled columns are never read (views end at length)
            self.value_buffer = like.new_empty(shape)
            self.device, self.is_initialized = like.device, True

        def place(self, keys, values, rows: slice, batch: int, width: int):
            """Copy one prefill chunk's keys and values into rows ``rows``, right-aligned at ``width``."""
            if self.key_buffer is None:
                self._allocate(keys, batch, width)
            start = width - keys.shape[2]
            self.key_buffer[rows, :, start:width] = keys
            self.value_buffer[rows, :, start:width] = values
            if start:  # masked columns, but zeros: 0 x garbage could be NaN in attention
                self.key_buffer[rows, :, :start] = 0
                self.value_buffer[rows, :, :start] = 0
            self.length = width
            self._views()

        def update(self, key_states, value_states, *args, **kwargs):
            new = key_states.shape[2]
            if self.key_buffer is None:
                self._allocate(key_states, key_states.shape[0], new)
            if self.length + new > self.key_buffer.shape[2]:  # out of room: grow (never in a decoding loop)
                grown = (self.key_buffer.shape[0], self.key_buffer.shape[1], self.length + new + self.room, self.key_buffer.shape[3])
                keys, values = self.key_buffer.new_empty(grown), self.value_buffer.new_empty(grown)
                keys[:, :, : self.length] = self.key_buffer[:, :, : self.length]
                values[:, :, : self.length] = self.value_buffer[:, :, : self.length]
                self.key_buffer, self.value_buffer = keys, values
            self.key_buffer[:, :, self.length : self.length + new] = key_states
            self.value_buffer[:, :, self.length : self.length + new] = value_states
            self.length += new
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices):
            if self.key_buffer is not None:
                self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
                self._views()

        def batch_repeat_interleave(self, repeats: int):
            if self.key_buffer is not None:
                self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
                self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
                self._views()

        def reorder_cache(self, beam_idx):
            self.batch_select_indices(beam_idx)

        def crop(self, tokens_to_remove: int):
            raise NotImplementedError("the engine's cache is never cropped")

        def reset(self):
            self.length = 0
            if self.key_buffer is not None:
                self._views()

    return BufferedLayer


def _buffered_cache(room: int):
    """A ``DynamicCache`` whose layers keep their keys and values in buffers with ``room`` free columns."""
    from functools import partial

    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = partial(_buffered_layer_class(), room)
    return cache


def _seq2seq_start(student, rows, *, n: int, max_new_tokens: int, cache_name: str):
    """Encode the prompts once (repeated for ``n`` samples): the first step's logits, the decoder
    cache, ``forward(step_ids)`` for the next steps and ``select(keep)`` to drop rows."""
    from transformers import EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    model = student.model
    encoded, mask = _encode(student, rows)
    if n > 1:
        encoded, mask = encoded.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
    cache = EncoderDecoderCache(_buffered_cache(max_new_tokens), _buffered_cache(0))
    start = model.generation_config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    step_ids = torch.full((encoded.shape[0], 1), start, dtype=torch.long, device=student.device)

    def forward(step_ids):
        return model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), attention_mask=mask,
                     decoder_input_ids=step_ids, use_cache=True, **{cache_name: cache}).logits[:, -1]

    def select(keep):
        nonlocal encoded, mask
        encoded, mask = encoded[keep], mask[keep]

    return forward(step_ids), cache, forward, select


def _causal_start(student, rows, *, n: int, max_new_tokens: int, cache_name: str):
    """Prefill the prompts once (their cache repeated for ``n`` samples): as :func:`_seq2seq_start`."""
    model = student.model
    logits, cache, mask, positions = _prefill(student, rows, cache_name, max_new_tokens)
    use_mask = not bool(mask.all())  # as generate: no mask at all when nothing is padded
    width = mask.shape[1]
    mask = torch.nn.functional.pad(mask, (0, max_new_tokens), value=1)  # columns of the new tokens
    if n > 1:
        logits = logits.repeat_interleave(n, dim=0)
        positions, mask = positions.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        cache.batch_repeat_interleave(n)

    def forward(step_ids):
        nonlocal positions, width
        positions, width = positions + 1, width + 1
        return model(input_ids=step_ids, attention_mask=mask[:, :width] if use_mask else None, position_ids=positions,
                     use_cache=True, **{cache_name: cache}).logits[:, -1]

    def select(keep):
        nonlocal positions, mask
        positions, mask = positions[keep], mask[keep]

    return logits, cache, forward, select


def _decode_batch(student, rows: list[Sequence[int]], *, n: int, max_new_tokens: int, do_sample: bool,
                  temperature: float, top_k: int, generator, clock: _Clock, finished: Callable[[int, float], None]
                  ) -> torch.Tensor:
    """Decode one batch; returns [len(rows) * n, max_new_tokens] token ids (pad after eos), rows in
    order, ``n`` consecutive sequences per prompt. ``finished(prompt_position, seconds)`` follows
    each prompt whose ``n`` sequences are all done."""
    device = student.device
    pad, eos = student.tokenizer.pad_token_id, student.tokenizer.eos_token_id
    cache_name = _cache_kwarg(student.model)
    total = len(rows) * n
    out = torch.full((total, max_new_tokens), pad, dtype=torch.long, device=device)
    started = [clock.share] * len(rows)  # each prompt's share of time so far, at its start
    remaining = [n] * len(rows)  # unfinished sequences per prompt
    with student.autocast():
        start = _seq2seq_start if student.is_seq2seq else _causal_start
        logits, cache, forward, select = start(student, rows, n=n, max_new_tokens=max_new_tokens, cache_name=cache_name)
        active = torch.arange(total, device=device)  # the output row of each row of the batch
        alive = torch.ones(total, dtype=torch.bool, device=device)  # rows still generating (the rest wait for compaction)
        dead = 0
        for step in range(max_new_tokens):
            tokens = _choose(logits, do_sample, temperature, top_k, generator)
            out[active, step] = torch.where(alive, tokens, pad)
            done = (tokens == eos) & alive if step + 1 < max_new_tokens else alive
            running = active.shape[0] - dead
            if bool(done.any()):
                ended = active[done].tolist()
                clock.tick(running)
                for row in ended:
                    prompt = row // n
                    remaining[prompt] -= 1
                    if remaining[prompt] == 0:
                        finished(prompt, clock.share - started[prompt])
                running -= len(ended)
                if running == 0:
                    break
                alive &= ~done
                dead += len(ended)
                if dead >= COMPACT_AT * active.shape[0]:  # drop the finished rows from the batch and its cache
                    keep = alive.nonzero().squeeze(1)
                    active, tokens, alive, dead = active[keep], tokens[keep], alive[keep], 0
                    cache.batch_select_indices(keep)
                    select(keep)
            logits = forward(tokens[:, None])
            clock.tick(running)
    return out


def _trimmed(tokens: torch.Tensor, pad: int) -> list[list[int]]:
    """Rows of generated ids without their trailing pads (less for the tokenizer to walk through)."""
    ends = ((tokens != pad) * torch.arange(1, tokens.shape[1] + 1, device=tokens.device)).amax(dim=1)
    return [row[:end] for row, end in zip(tokens.cpu().tolist(), ends.cpu().tolist())]


def _check_settings(num_return_sequences: int, do_sample: bool, temperature: float, batch_size: int | None) -> None:
    if num_return_sequences < 1:
        raise ValueError("num_return_sequences must be at least 1")
    if num_return_sequences > 1 and not do_sample:
        raise ValueError("several sequences per prompt need do_sample=True (greedy would repeat one text)")
    if do_sample and temperature <= 0:
        raise ValueError("temperature must be positive when sampling")
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be at least 1 (or None: sized by memory)")


def generate_ids(student, ids: Sequence[Sequence[int]], *, max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, num_return_sequences: int = 1, seed: int | None = None,
                 batch_size: int | None = None, memory_budget: int | None = None, plain: bool = False,
                 on_batch: Callable[[list[int], float], None] | None = None) -> list[list[str]]:
    """Stripped continuations of token-id prompts, ``num_return_sequences`` per prompt, in prompt order.

    ``batch_size``: most sequences per batch (None: as many as ``memory_budget`` bytes hold; default
    1 GiB on a CPU, a quarter of the device's memory on CUDA). ``on_batch(prompt_indices, seconds)`` follows
    each prompt as soon as all its sequences are done (``seconds``: its share of the time of the
    steps it ran in); the seconds of all calls sum to the time spent. ``plain=True``: one
    ``model.generate`` per fixed batch (:func:`plain_generate_ids`)."""
    _check_settings(num_return_sequences, do_sample, temperature, batch_size)
    broken = engine_contract() or (None if _cache_kwarg(student.model) else
                                   f"{type(student.model).__name__}.forward takes no cache or past_key_values")
    if broken and not plain:
        _warn_once(f"the generation engine cannot run with this transformers release ({broken}); decoding with "
                   "model.generate instead (the same texts, slower)")
    if plain or broken or plain_only(student.model) is not None:
        return plain_generate_ids(student, ids, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                  top_k=top_k, num_return_sequences=num_return_sequences, seed=seed,
                                  batch_size=batch_size or 64, on_batch=on_batch)
    n = num_return_sequences
    out: list[list[str]] = [[] for _ in ids]
    if not ids:
        return out
    if max_new_tokens < 1:
        return [[""] * n for _ in ids]
    lengths = [len(row) for row in ids]
    order = sorted(range(len(ids)), key=lambda i: (-lengths[i], i))  # longest first: memory trouble shows at once
    budget = memory_budget if memory_budget is not None else _memory_budget(student.device)
    batches = plan_batches(lengths, order, n=n, max_new_tokens=max_new_tokens, batch_size=batch_size, budget=budget,
                           row_bytes=lambda width: bytes_per_row(student.model, width, max_new_tokens))
    generator = None
    if do_sample:
        generator = torch.Generator(device=student.device)
        # no seed: one drawn from torch's global generator (reproducible under torch.manual_seed, new on every call)
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
    decode = student.tokenizer.batch_decode
    was_training = student.model.training
    student.model.eval()
    try:
        with torch.inference_mode():
            for chosen in batches:
                clock = _Clock()

                def finished(position: int, seconds: float, chosen=chosen) -> None:
                    if on_batch is not None:
                        on_batch([chosen[position]], seconds)

                tokens = _decode_batch(student, [ids[i] for i in chosen], n=n, max_new_tokens=max_new_tokens,
                                       do_sample=do_sample, temperature=temperature, top_k=top_k, generator=generator,
                                       clock=clock, finished=finished)
                texts = [text.strip() for text in decode(_trimmed(tokens, student.tokenizer.pad_token_id), skip_special_tokens=True)]
                for k, i in enumerate(chosen):
                    out[i] = texts[k * n : (k + 1) * n]
    finally:
        student.model.train(was_training)
    return out


def plain_generate_ids(student, ids: Sequence[Sequence[int]], *, max_new_tokens: int = 128, do_sample: bool = False,
                       temperature: float = 1.0, top_k: int = 0, num_return_sequences: int = 1, seed: int | None = None,
                       batch_size: int = 64, on_batch: Callable[[list[int], float], None] | None = None) -> list[list[str]]:
    """The previous engine: prompts sorted by length, fixed batches of ``batch_size`` sequences, one
    ``model.generate`` each; sampling from the global generator seeded with ``seed`` (forked, so the
    caller's random state is untouched). ``on_batch(prompt_indices, seconds)`` follows each batch."""
    _check_settings(num_return_sequences, do_sample, temperature, batch_size)
    out: list[list[str]] = [[] for _ in ids]
    if not ids:
        return out
    config = _generation_config(student, max_new_tokens, do_sample, temperature, top_k, num_return_sequences)
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    per_batch = max(1, batch_size // num_return_sequences)
    was_training = student.model.training
    student.model.eval()
    device = student.device
    rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices, enabled=seed is not None), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(order), per_batch):
                chosen = order[start : start + per_batch]
                began = time.perf_counter()
                texts = _generate_batch(student, [ids[i] for i in chosen], config)
                for k, i in enumerate(chosen):
                    out[i] = texts[k * num_return_sequences : (k + 1) * num_return_sequences]
                if on_batch is not None:
                    on_batch(chosen, time.perf_counter() - began)
    finally:
        student.model.train(was_training)
    return out


def _generation_config(student, max_new_tokens, do_sample, temperature, top_k, num_return_sequences):
    """``model.generate``'s settings for the plain path: plain greedy or sampling, nothing else."""
    from transformers import GenerationConfig

    base = student.model.generation_config
    settings = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=1,
        num_return_sequences=num_return_sequences,
        pad_token_id=student.tokenizer.pad_token_id,
        eos_token_id=student.tokenizer.eos_token_id,
        decoder_start_token_id=getattr(base, "decoder_start_token_id", None),
        bos_token_id=getattr(base, "bos_token_id", None),
    )
    # every logits processor stated: a value left None is filled from transformers' global defaults
    # (top_k 50) or from the checkpoint's own generation_config, and would change what is sampled
    settings.update(IGNORED_FIELDS)
    if do_sample:  # (greedy runs no sampling warpers; naming them there only draws warnings)
        settings.update(temperature=temperature, top_k=top_k, **IGNORED_WHEN_SAMPLING)
    return GenerationConfig(**settings)


def _generate_batch(student, rows: list[Sequence[int]], config) -> list[str]:
    """One ``model.generate`` call on a batch of token-id prompts; the stripped texts."""
    pad = student.tokenizer.pad_token_id
    # causal prompts are left-padded: every prompt ends where its continuation starts
    input_ids, attention_mask = pad_rows(rows, pad, left=not student.is_seq2seq)
    input_ids, attention_mask = input_ids.to(student.device), attention_mask.to(student.device)
    with student.autocast():
        generated = student.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    if not student.is_seq2seq:
        generated = generated[:, input_ids.shape[1] :]
    texts = student.tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [text.strip() for text in texts]
