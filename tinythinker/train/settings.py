"""The hyperparameters of each training phase and their defaults: the one place a default is stated.

The trainers take these dataclasses; the CLI options (``commands/train.py``, ``commands/reflect.py``)
and the recipe's defaults (``recipe.py``) read their defaults from the fields. Defaults are the
reference's (REFERENCE 7 for SFT, 9 for DPO; warm-up, optimizer and clipping are the Hugging Face
Trainer defaults the reference ran with). Light on purpose (no torch): the CLI builds its options from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from tinythinker.protocol import ANALYZE, RECALL, REFERENCE_MAX_LENGTH

SCHEDULES = ("blocks", "mixed")  # SFT's: one stage per block (REFERENCE 7), or every batch from all stages


@dataclass(frozen=True)
class LoopOptions:
    """How the training loop runs, not what it learns: the same settings give the same model whatever these are."""

    micro_batch_size: int | None = None  # records per forward pass on one process (None: the process's whole share)
    eval_batch_size: int = 64  # the validation pipeline's generation batch
    log_every: int = 10  # steps per train row of metrics.jsonl (and at the end of every block)


@dataclass(frozen=True)
class SFTSettings:
    """What an SFT run is. Rerunning with the same settings and ``out`` resumes it; other settings are refused.

    ``eval_limit``: validation questions per evaluation (None: all of them; 0: no validation, the
    final model becomes ``best``)."""

    data: str
    config: str
    student: str
    variant: str | None = None  # None: read from the config name, "{dataset}-{variant}"
    interval: int = 100
    schedule: str = "blocks"  # "blocks": REFERENCE 7; "mixed": every batch draws from all stages (a deviation, see docs/training.md)
    epochs: int = 10
    lr: float = 5e-4
    batch_size: int = 64
    max_length: int = REFERENCE_MAX_LENGTH  # target tokens
    max_input_length: int | None = None  # None: inputs are not cut (as the reference)
    seed: int = 42
    bf16: bool = False
    eval_limit: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    revision: str | None = None  # of a Hub data set: branch, tag or commit id (None: main); pinned to its commit
    max_steps: int | None = None  # a cap on optimizer steps that overrides epochs (the study: the same for every variant)
    eval_every: int | None = None  # validation every this many steps (None: after every schedule cycle)
    # stop once this many validations in a row have not beaten the best one (None: train to the end); the study's
    # convergence rule: a row ends when its validation accuracy has stopped rising, not when a schedule runs out
    patience: int | None = None
    student_revision: str | None = None  # of a Hub base model, likewise
    max_new_tokens: int | None = None  # validation's recall and analyze cap (None: the engine's)


@dataclass(frozen=True)
class DPOSettings:
    """How one self-reflection iteration trains (REFERENCE 9)."""

    beta: float = 0.5
    nll_weight: float = 0.5
    lr: float = 5e-6
    batch_size: int = 32
    cycles: int = 10  # validation points per iteration, each R + A steps (the reference's max_steps = 10 x (R + A))
    max_length: int = REFERENCE_MAX_LENGTH
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    bf16: bool = False
    variant: str = "full"  # the pipeline validation runs
    max_new_tokens: int | None = None  # validation's recall and analyze cap (None: the engine's)


@dataclass(frozen=True)
class ReflectSettings:
    """What a self-reflection run is (REFERENCE 9; its DPO defaults are :class:`DPOSettings`'). Rerunning
    with the same settings and output folder resumes it; only ``iterations`` may change (to extend a finished run)."""

    student: str
    data: str
    config: str
    iterations: int = 5
    stages: tuple[str, ...] = (RECALL, ANALYZE)
    samples: int = 10
    temperature: float = 0.7
    top_k: int = 0
    beta: float = DPOSettings.beta
    nll_weight: float = DPOSettings.nll_weight
    lr: float = DPOSettings.lr
    batch_size: int = DPOSettings.batch_size
    cycles: int = DPOSettings.cycles
    max_length: int = DPOSettings.max_length
    seed: int = 42
    bf16: bool = False
    eval_limit: int | None = None  # validation questions per evaluation (None: all; 0: no validation)
    max_new_tokens: int | None = None  # recall and analyze cap in sampling and validation (None: the engine's)
    train_limit: int | None = None  # training questions sampled (None: all)
    eval_batch_size: int = LoopOptions.eval_batch_size  # per generation batch (sampled texts depend on it: fixed per run)
    revision: str | None = None  # of a Hub data set: branch, tag or commit id (None: main); pinned to its commit

    def resolved(self) -> "ReflectSettings":
        """Local paths made absolute (a rerun from elsewhere matches); stages in pipeline order."""
        from tinythinker.data.preferences import PAIR_STAGES

        stages = tuple(stage for stage in PAIR_STAGES if stage in self.stages)
        return replace(self, student=absolute(self.student), data=absolute(self.data), stages=stages)

    def check(self) -> None:
        from tinythinker.errors import TinyThinkerError
        from tinythinker.data.preferences import PAIR_STAGES

        unknown = [s for s in self.stages if s not in PAIR_STAGES]
        if unknown or not self.stages:
            raise TinyThinkerError(f"--stages {','.join(self.stages) or '(none)'}: choose from {', '.join(PAIR_STAGES)} (comma-separated)")
        for name in ("iterations", "samples", "batch_size", "cycles", "max_length", "eval_batch_size", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TinyThinkerError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("beta", "lr", "temperature"):
            if not getattr(self, name) > 0:
                raise TinyThinkerError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.nll_weight < 0 or self.top_k < 0:
            raise TinyThinkerError(f"--nll-weight and --top-k must be 0 or more (got {self.nll_weight}, {self.top_k})")
        for name in ("eval_limit", "train_limit"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "eval_limit" else 1):
                raise TinyThinkerError(f"--{name.replace('_', '-')} must be {'0' if name == 'eval_limit' else '1'} or more, got {value}")


def absolute(path: str) -> str:
    """A local path made absolute (so a rerun from another folder matches the saved settings); a Hub id as it is."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def defaults(settings: type, *names: str) -> dict:
    """The defaults of some fields of a settings dataclass (for the recipe's defaults)."""
    return {name: getattr(settings, name) for name in names}


def first_change(saved: dict, settings, *, ignore: tuple[str, ...] = ()) -> str | None:
    """The first field of the settings dataclass ``settings`` whose value differs from the run's saved
    ``saved`` (as JSON), or None. A field the saved run lacks (added in a later version) counts as its
    default, so adding a setting never makes an old run refuse to resume. The one resume rule of every
    run folder (SFT, self-reflection, the study)."""
    import json
    from dataclasses import MISSING, asdict, fields

    wanted = json.loads(json.dumps(asdict(settings)))  # tuples as lists, as the saved JSON has them
    default = {f.name: json.loads(json.dumps(f.default)) for f in fields(settings) if f.default is not MISSING}
    return next((key for key in wanted if key not in ignore and saved.get(key, default.get(key)) != wanted[key]), None)
