"""Students: one small interface over Hugging Face seq2seq (T5, BART) and causal (GPT-2, Llama) models.

The model kind is read from the checkpoint's config (``config.is_encoder_decoder``), never from its
name. What differs between the kinds lives here and only here:

* seq2seq: the stage input is the encoder input, the target is the decoder sequence (ending in eos).
* causal: the model reads ``prompt`` then ``" " + target + eos``; only target tokens carry loss.
  Training batches are right-padded; generation batches are left-padded so that every prompt ends
  where generation starts, and only the new tokens are returned.

:func:`make_tiny_student` builds a randomly initialised model with a tokenizer trained on the given
texts and saves it like any checkpoint (tests, demos, benchmarks); real users pass Hub ids.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from tinythinker.decoding import generate_ids as _decode
from tinythinker.decoding import pad_rows as _pad
from tinythinker.errors import TinyThinkerError
from tinythinker.protocol import REFERENCE_MAX_LENGTH

IGNORE_INDEX = -100  # label value that transformers' losses skip

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def distributed_on_cpus() -> bool:
    """Several processes (torchrun, `accelerate launch --multi_gpu`) on a machine without accelerators:
    tell accelerate to use the CPUs (gloo); it would otherwise fall back to one process each."""
    import os

    from accelerate.utils import is_mlu_available, is_npu_available, is_xpu_available

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available())


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    try:
        return names[str(dtype)]
    except KeyError:
        raise TinyThinkerError(f"unknown dtype {dtype!r}: choose one of {', '.join(names)}") from None


class Student:
    """A model and its tokenizer behind the few operations the recipe needs (train, score, generate).

    ``bf16`` turns on bfloat16 autocast for generation and scoring (CUDA, and CPUs where it is faster);
    the weights keep their dtype. :meth:`full_precision` turns it off for a while."""

    def __init__(self, model, tokenizer, *, device=None, bf16: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.bf16 = bf16
        self.revision: str | None = None  # set by load: the Hub commit the checkpoint was read at
        if tokenizer.pad_token_id is None:  # GPT-2 style tokenizers have no pad token: pad with eos
            if tokenizer.eos_token_id is None:
                raise TinyThinkerError("the student's tokenizer has neither a pad nor an eos token; add one and save it again")
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.eos_token_id is None:
            raise TinyThinkerError("the student's tokenizer has no eos token; generation could never stop: add one and save it again")

    # --- loading and saving ---------------------------------------------------------------------

    @classmethod
    def load(cls, name_or_path, *, device=None, dtype=None, bf16: bool = False, revision: str | None = None) -> "Student":
        """Load a checkpoint by local path or Hub id (at ``revision``: a branch, tag or commit id, default
        main; pinned to its commit first, see :func:`tinythinker.hub.pin`); seq2seq or causal is decided
        by its config."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from tinythinker.hub import hub_error, is_hub_id, pin

        source = str(name_or_path)
        local = Path(source)
        if local.exists() and not (local / "config.json").exists():
            raise TinyThinkerError(f"{source}: no config.json in this folder; pass a checkpoint folder (made by save_pretrained) or a Hub id")
        if not local.exists() and not is_hub_id(source, "model"):
            raise TinyThinkerError(f"{source}: no such student folder; pass a checkpoint folder or a Hub id such as google-t5/t5-small")
        hub = is_hub_id(source, "model")
        if hub or revision is not None:
            revision = pin(source, revision, repo_type="model")  # one-line errors for a missing repo or revision
        at = {"revision": revision} if revision is not None else {}
        try:
            config = AutoConfig.from_pretrained(source, **at)
        except (OSError, ValueError) as error:
            if hub:
                raise hub_error(error, source, repo_type="model", revision=revision, doing="load the config of") from None
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
            raise TinyThinkerError(f"{source}: cannot load the student's config ({first_line[:200]}); pass a checkpoint folder or a reachable Hub id") from None
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        device = torch.device(device) if device is not None else default_device()
        kwargs = {"dtype": _resolve_dtype(dtype)} if dtype is not None else {}
        def first_line(error: BaseException) -> str:
            return (str(error).strip().splitlines() or [error.__class__.__name__])[0][:200]

        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **at)
        except Exception as error:  # noqa: BLE001 - a damaged tokenizer file (bad JSON, bytes) is one line
            if hub:
                raise hub_error(error, source, repo_type="model", revision=revision, doing="load the tokenizer of") from None
            named = "tokenizer.json" if (local / "tokenizer.json").exists() else "its tokenizer files"
            raise TinyThinkerError(f"{source}: cannot read the tokenizer ({named}: {first_line(error)}); the file is damaged or "
                                   "incomplete: copy or save the checkpoint again") from None
        try:
            model = auto.from_pretrained(source, config=config, **at, **kwargs)
        except Exception as error:  # noqa: BLE001 - a truncated weights file raises safetensors' own error type
            if not isinstance(error, (OSError, ValueError)) and type(error).__name__ != "SafetensorError":
                raise
            if hub and isinstance(error, OSError):
                raise hub_error(error, source, repo_type="model", revision=revision, doing="load the weights of") from None
            weights = sorted(p.name for p in local.glob("*.safetensors")) if local.exists() else []
            what = f"the weights ({', '.join(weights)}: " if weights else "the student ("
            hint = "; the file is damaged or incomplete: copy or save the checkpoint again" if type(error).__name__ == "SafetensorError" else ""
            raise TinyThinkerError(f"{source}: cannot load {what}{first_line(error)}){hint}") from None
        model.to(device)
        model.eval()
        student = cls(model, tokenizer, device=device, bf16=bf16)
        student.revision = revision  # the commit a Hub student was read at (None: a local folder)
        return student

    def save(self, path) -> None:
        """save_pretrained of model and tokenizer: the folder loads with :meth:`load` or transformers."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    # --- training batches -----------------------------------------------------------------------

    def _prompt_ids(self, prompts: Sequence[str], max_length: int | None) -> list[list[int]]:
        """Token ids of stage inputs, cut from the left when too long: the end of a stage input
        (``Recall:``, ``For option X,``, ``Summarize:``) says what to generate and must survive."""
        if not prompts:  # e.g. every recall given by the teacher (oracle evaluation): nothing to tokenise
            return []
        ids = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        if max_length is not None:
            ids = [row[-max_length:] if len(row) > max_length else row for row in ids]
        return ids

    def _target_ids(self, targets: Sequence[str]) -> list[list[int]]:
        """Token ids of targets, each ending in exactly one eos (the model must learn to stop)."""
        eos = self.tokenizer.eos_token_id
        if self.is_seq2seq:
            rows = self.tokenizer(text_target=list(targets), add_special_tokens=True)["input_ids"]
        else:  # the target continues the prompt after one space
            rows = self.tokenizer([" " + t for t in targets], add_special_tokens=False)["input_ids"]
        return [row if row and row[-1] == eos else row + [eos] for row in rows]

    def encode(self, prompts: list[str], targets: list[str], max_length: int = REFERENCE_MAX_LENGTH,
               max_input_length: int | None = None) -> dict[str, torch.Tensor]:
        """Model inputs with ``labels`` (right-padded): only target tokens count, -100 elsewhere.

        Targets are capped at ``max_length`` tokens (eos kept). Inputs are not cut unless
        ``max_input_length`` is given (the reference cuts no SFT input); then they keep their end,
        which says what to generate."""
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        targets_ids = [row if len(row) <= max_length else row[: max_length - 1] + [eos] for row in self._target_ids(targets)]
        inputs = self._prompt_ids(prompts, max_input_length)
        if self.is_seq2seq:
            input_ids, attention_mask = _pad(inputs, pad)
            labels, _ = _pad(targets_ids, IGNORE_INDEX)
            return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        sequences = [prompt + target for prompt, target in zip(inputs, targets_ids)]
        label_rows = [[IGNORE_INDEX] * len(prompt) + target for prompt, target in zip(inputs, targets_ids)]
        input_ids, attention_mask = _pad(sequences, pad)
        labels, _ = _pad(label_rows, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def label_tokens(self, labels: torch.Tensor) -> int:
        """How many label tokens a loss over ``labels`` scores (causal: after the one-token shift)."""
        return int((labels if self.is_seq2seq else labels[:, 1:]).ne(IGNORE_INDEX).sum())

    def batch_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens a training batch runs through the model: the inputs, plus the decoder's labels (seq2seq)."""
        return int(batch["attention_mask"].sum()) + (self.label_tokens(batch["labels"]) if self.is_seq2seq else 0)

    @property
    def pipeline_tag(self) -> str:
        """The Hub's task of this kind of model (for model cards)."""
        return "text2text-generation" if self.is_seq2seq else "text-generation"

    @functools.cached_property
    def position_limit(self) -> int | None:
        """The longest sequence the model can take at all: the size of a learned absolute position table
        (GPT-2's ``wpe``, OPT's ``embed_positions``); None for relative or rotary positions (T5, Llama),
        which take any length (if not well)."""
        for name, module in self.model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, torch.nn.Embedding) and (leaf == "wpe" or "position" in leaf) and "relative" not in leaf:
                return module.num_embeddings - int(getattr(module, "offset", 0))
        return None

    def count_over_positions(self, prompts: Sequence[str], targets: Sequence[str], *, max_length: int,
                             max_input_length: int | None) -> int:
        """How many (prompt, target) rows, cut as :meth:`encode` cuts them, are longer than
        :attr:`position_limit` (0 when there is none): the encoder input of a seq2seq model, the prompt
        and target together of a decoder-only one."""
        limit = self.position_limit
        if limit is None:
            return 0
        inputs = [len(row) for row in self._prompt_ids(list(prompts), max_input_length)]
        if self.is_seq2seq:  # the decoder's learned positions hold the target
            lengths = [max(a, min(len(t), max_length)) for a, t in zip(inputs, self._target_ids(list(targets)))]
        else:
            lengths = [a + min(len(t), max_length) for a, t in zip(inputs, self._target_ids(list(targets)))]
        return sum(length > limit for length in lengths)

    def count_long_inputs(self, prompts: Sequence[str], limit: int) -> int:
        """How many of ``prompts`` are longer than ``limit`` tokens (what a cap at ``limit`` would cut)."""
        return sum(len(row) > limit for row in self._prompt_ids(list(prompts), None))

    def count_long_targets(self, targets: Sequence[str], limit: int) -> int:
        """How many of ``targets`` (with their eos) are longer than ``limit`` tokens (what :meth:`encode`'s
        ``max_length`` cuts)."""
        return sum(len(row) > limit for row in self._target_ids(list(targets)))

    def target_logprobs(self, batch, model=None) -> torch.Tensor:
        """[batch] sum of the log-probabilities of the label tokens (for DPO; ``model`` e.g. the
        frozen reference). Runs with gradients when called under grad mode."""
        model = model if model is not None else self.model
        batch = {k: v.to(self.device) for k, v in batch.items()}
        labels = batch["labels"]
        with self.autocast():
            logits = model(**batch).logits
        if not self.is_seq2seq:  # token t predicts token t+1
            logits, labels = logits[:, :-1, :], labels[:, 1:]
        mask = labels != IGNORE_INDEX
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = torch.gather(logprobs, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * mask).sum(-1)

    # --- generation -----------------------------------------------------------------------------

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def full_precision(self):
        """fp32 inside, whatever ``bf16`` and a bf16 ``accelerate`` preparation (which wraps the model's
        forward in autocast) say: validation decodes as ``eval`` does, and DPO scores its reference and
        its policy alike, so the log-ratio starts at 0."""
        model, flag = self.model, self.bf16
        patched = "forward" in vars(model) and hasattr(model, "_original_forward")
        if patched:
            wrapped, model.forward = model.forward, model._original_forward
        self.bf16 = False
        try:
            yield self
        finally:
            self.bf16 = flag
            if patched:
                model.forward = wrapped

    def tokenize_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of generation prompts, all tokenised in one call (no truncation)."""
        return self._prompt_ids(prompts, None)

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        num_return_sequences: int = 1,
        seed: int | None = None,
        batch_size: int | None = None,
        on_batch: Callable[[list[int], float], None] | None = None,
    ) -> list[list[str]]:
        """Stripped continuations, ``num_return_sequences`` per prompt, in prompt order.

        Prompts are tokenised once, sorted by length and cut into batches of at most ``batch_size``
        generated sequences (None: as many as fit a memory budget, see :mod:`tinythinker.decoding`),
        so padding is minimal; finished sequences leave their batch at once. Greedy by default;
        sampling draws from one generator seeded with ``seed``, so the same prompts, seed, batch
        sizing and device give the same texts. ``top_k=0`` disables top-k.
        ``on_batch(prompt_indices, seconds)`` follows each prompt once all its sequences are done."""
        ids = self.tokenize_prompts(prompts)
        return self.generate_ids(ids, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                 top_k=top_k, num_return_sequences=num_return_sequences, seed=seed,
                                 batch_size=batch_size, on_batch=on_batch)

    def generate_ids(self, ids: Sequence[Sequence[int]], *, max_new_tokens: int = 128, do_sample: bool = False,
                     temperature: float = 1.0, top_k: int = 0, num_return_sequences: int = 1, seed: int | None = None,
                     batch_size: int | None = None, on_batch: Callable[[list[int], float], None] | None = None,
                     **engine) -> list[list[str]]:
        """:meth:`generate` on prompts already tokenised (by :meth:`tokenize_prompts`), through the
        engine of :mod:`tinythinker.decoding` (``engine``: its ``memory_budget`` and ``plain``).

        A causal student with a position table (:attr:`position_limit`) keeps the end of each prompt and
        generates at most what the table leaves room for: a longer sequence would index past it."""
        limit = self.position_limit
        if limit is not None and not self.is_seq2seq:
            if max_new_tokens >= limit:
                max_new_tokens = limit // 2
            room = limit - max_new_tokens
            ids = [row[-room:] if len(row) > room else row for row in ids]
        elif limit is not None:  # seq2seq: encoder and decoder each have their own table
            max_new_tokens = min(max_new_tokens, limit - 1)
            ids = [row[-limit:] if len(row) > limit else row for row in ids]
        return _decode(self, ids, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                       top_k=top_k, num_return_sequences=num_return_sequences, seed=seed, batch_size=batch_size,
                       on_batch=on_batch, **engine)



# --- tiny students for tests, demos and benchmarks -----------------------------------------------

# named model shapes; "tiny" trains in seconds on a CPU, "t5-small" is google-t5/t5-small's shape
SHAPES = {
    "tiny": dict(d_model=64, layers=2, heads=4, d_ff=128, vocab_size=None),  # vocab None: the tokenizer's size
    "t5-small": dict(d_model=512, layers=6, heads=8, d_ff=2048, vocab_size=32128),
    "t5-base": dict(d_model=768, layers=12, heads=12, d_ff=3072, vocab_size=32128),
}
KINDS = ("seq2seq", "causal")
TINY_TOKENIZER_VOCAB = 2048  # most BPE tokens a tiny student's tokenizer learns (a world's invented names stay whole)


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, seq2seq: bool):
    """A byte-level BPE tokenizer trained on ``texts`` (exact round trip of any text), wrapped as a
    transformers fast tokenizer. Option markers ``(A)``..``(J)`` stay whole; ``:`` and ``.`` are
    their own tokens. Special tokens: ``<pad>`` 0, ``</s>`` 1 (eos), ``<unk>`` 2. A seq2seq
    tokenizer appends eos to every text, as T5's does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # GPT-2's word split, with option markers as words and every punctuation mark on its own
    words = Regex(r"'s|'t|'re|'ve|'m|'ll|'d| ?\([A-J]\)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]|\s+(?!\S)|\s+")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(words, behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    if seq2seq:
        tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                                 special_tokens=[(EOS, tokenizer.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)


def tiny_config(kind: str, vocab_size: int, *, d_model: int, layers: int, heads: int, d_ff: int, pad_id: int, eos_id: int):
    """A T5 config (seq2seq) or a Llama-style config (causal) of the given shape."""
    from transformers import LlamaConfig, T5Config

    if kind == "seq2seq":
        # no dropout: a tiny student trained from scratch on a small world is data-starved, not
        # over-fitted (measured on the quickstart's world, 800 steps: 33% with T5's usual 0.1, 0.9+ without)
        return T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                        num_decoder_layers=layers, num_heads=heads, dropout_rate=0.0, pad_token_id=pad_id,
                        eos_token_id=eos_id, decoder_start_token_id=pad_id)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                       pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None, tie_word_embeddings=True)


def make_tiny_student(kind: str, texts, out, *, seed: int = 0, shape: str = "tiny", **size) -> Path:
    """Build a randomly initialised student with a tokenizer trained on ``texts``; save it to ``out``.

    ``kind``: "seq2seq" (T5) or "causal" (Llama-style). ``shape``: "tiny" or "t5-small"; ``size``
    overrides d_model, layers, heads, d_ff, vocab_size. The model's vocabulary is the tokenizer's
    ("tiny") or ``vocab_size`` rows (the t5-small shape keeps 32128 however few tokens the texts give)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if kind not in KINDS:
        raise TinyThinkerError(f"unknown student kind {kind!r}: choose one of {', '.join(KINDS)}")
    if shape not in SHAPES:
        raise TinyThinkerError(f"unknown student shape {shape!r}: choose one of {', '.join(SHAPES)}")
    unknown = set(size) - set(SHAPES[shape])
    if unknown:
        raise TypeError(f"unknown size arguments: {', '.join(sorted(unknown))}")
    dims = {**SHAPES[shape], **size}
    texts = [t for t in texts if t]
    if not texts:
        raise TinyThinkerError("no texts to train the student's tokenizer on; pass a data set with questions")
    tokenizer = train_tokenizer(texts, dims["vocab_size"] or TINY_TOKENIZER_VOCAB, seq2seq=kind == "seq2seq")
    if dims["vocab_size"] and len(tokenizer) < dims["vocab_size"]:
        # fill the rows the texts did not need with plain tokens, so that every id the model can emit
        # decodes to text (a random model's output re-tokenises to about as many tokens as it had)
        tokenizer.add_tokens([f"<unused_{i}>" for i in range(dims["vocab_size"] - len(tokenizer))])
    config = tiny_config(kind, max(len(tokenizer), dims["vocab_size"] or 0), d_model=dims["d_model"], layers=dims["layers"],
                         heads=dims["heads"], d_ff=dims["d_ff"], pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    out = Path(out)
    Student(model, tokenizer, device="cpu").save(out)
    return out
