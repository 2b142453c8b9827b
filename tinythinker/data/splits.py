"""Reading stage data sets: the questions (:class:`Item`) and teacher texts of a split, from a folder
made by `tinythinker build`, a Hub id, or the generated world (``world``, built once into the user cache).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tinythinker import protocol
from tinythinker.errors import TinyThinkerError
from tinythinker.hub import is_hub_id
from tinythinker.protocol import config_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One question to answer: its id, rendered question (REFERENCE 2), option letters, gold letter."""

    id: str
    question: str
    letters: str
    gold: str | None


def stage_configs(data, revision: str | None = None) -> dict[str, list[str]]:
    """{config: [split, ...]} of a stage data set folder (its README.md) or Hub id (at ``revision``)."""
    from tinythinker.artifacts import read_card_metadata

    source = str(data)
    local = Path(source)
    if local.exists():
        configs = {entry.get("config_name"): [f.get("split") for f in entry.get("data_files", [])]
                   for entry in read_card_metadata(local).get("configs", []) if isinstance(entry, dict)}
        if not configs:
            raise TinyThinkerError(f"{source}: not a data set folder (no configs in README.md); pass a folder made by `tinythinker build`")
        return configs
    if not is_hub_id(source):
        raise TinyThinkerError(f"{source}: no such data set folder; pass a folder made by `tinythinker build` or a Hub id (org/name)")
    import datasets

    try:
        return {config: list(datasets.get_dataset_split_names(source, config, revision=revision))
                for config in datasets.get_dataset_config_names(source, revision=revision)}
    except Exception as error:  # noqa: BLE001 - Hub/network errors become one user-facing line
        from tinythinker.hub import hub_error

        raise hub_error(error, source, revision=revision, doing="list the configs of") from None


def _hub_failure(error: BaseException) -> bool:
    """A missing/hidden repo, an unknown revision or no network (not a bad config or split name)."""
    from tinythinker.hub import _chain, _is_network_error

    names = {cls.__name__ for item in _chain(error) for cls in type(item).__mro__}
    return _is_network_error(error) or bool(names & {"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError",
                                                      "DatasetNotFoundError"})


def load_stage_split(data, config: str, split: str, revision: str | None = None):
    """One split of a stage data set (local folder, or Hub id at ``revision``: a branch, tag or commit id,
    default main) as a ``datasets.Dataset``; a missing config or split is a one-line error naming the choices."""
    import datasets

    source = str(data)
    if Path(source).exists():  # check locally first: clearer than the loader's errors
        if revision is not None:
            raise TinyThinkerError(f"--revision {revision} names a Hub commit, but {source} is a local folder; leave "
                                   "--revision out or pass a Hub id (ORG/NAME)")
        configs = stage_configs(source)
        if config not in configs:
            raise TinyThinkerError(f"{source}: no config {config!r}; choose one of {', '.join(sorted(configs))}")
        if split not in configs[config]:
            raise TinyThinkerError(f"{source}: config {config!r} has no split {split!r}; choose one of {', '.join(configs[config])}")
    elif not is_hub_id(source):
        raise TinyThinkerError(f"{source}: no such data set folder; pass a folder made by `tinythinker build` or a Hub id (org/name)")
    try:
        if Path(source).exists():
            # by file, the one the card lists: only this split is prepared (not the whole config), and
            # the cache key is the file's path and time (its name also carries its content's digest)
            from tinythinker.artifacts import card_data_files

            path = Path(source) / card_data_files(source)[config][split]
            return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
        return datasets.load_dataset(source, config, split=split, revision=revision)
    except Exception as error:  # noqa: BLE001 - Hub/network/format errors become one user-facing line
        if not Path(source).exists() and _hub_failure(error):
            from tinythinker.hub import hub_error

            raise hub_error(error, source, revision=revision) from None
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        at = f" at {revision}" if revision else ""
        raise TinyThinkerError(f"{source}{at}: cannot load config {config!r} split {split!r} ({error.__class__.__name__}: {message[:200]})") from None


def _items(rows) -> list[Item]:
    seen: dict[str, Item] = {}
    for row in rows:
        if row["id"] not in seen:
            seen[row["id"]] = Item(row["id"], row["question"], protocol.letters_for(len(row["choices"])), row["GT"] or None)
    return list(seen.values())


def items_from_dataset(data, config: str, split: str, revision: str | None = None) -> list[Item]:
    """One :class:`Item` per question id of a stage data set split, in file order."""
    return _items(load_stage_split(data, config, split, revision))


def oracles_from_dataset(data, config: str, split: str, revision: str | None = None) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The teacher's recall and analyses per question id of a validation/test split, where the
    data set has them (the ``given_recalls`` / ``given_analyses`` of oracle evaluation)."""
    rows = load_stage_split(data, config, split, revision)
    recalls: dict[str, str] = {}
    analyses: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.get("teacher_recall"):
            recalls.setdefault(row["id"], row["teacher_recall"])
        texts = row.get("teacher_analyses") or []
        if texts:
            analyses.setdefault(row["id"], dict(zip(protocol.letters_for(len(row["choices"])), texts)))
    return recalls, analyses



def tokenizer_texts(data, config: str | None = None, revision: str | None = None) -> list[str]:
    """The distinct inputs and targets of every split of ``config`` (None: of every config), in file order:
    what a tiny student's tokenizer is trained on."""
    configs = stage_configs(data, revision)
    if config is not None and config not in configs:
        raise TinyThinkerError(f"{data}: no config {config!r}; choose one of {', '.join(sorted(configs))}")
    texts: list[str] = []
    for name in [config] if config else sorted(configs):
        for split in configs[name]:
            rows = load_stage_split(data, name, split, revision)
            texts += [t for column in ("input", "target") for t in rows[column] if t]
    return list(dict.fromkeys(texts))


WORLD_SOURCE = "world"  # data=world: the generated world (world_folder); "demo" is a deprecated alias


@functools.lru_cache(maxsize=None)
def _world_digest(dataset: str, seed: int, questions: int) -> str:
    """A hash of the generated world's files (generating the default world takes seconds: once a process)."""
    import hashlib

    from tinythinker.data.world import world_files

    digest = hashlib.sha256()
    for path, text in sorted(world_files(dataset, seed=seed, questions=questions).items()):
        digest.update(path.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:12]


def world_folder(dataset: str, *, seed: int = 42, questions: int | None = None) -> Path:
    """The generated learnable world of ``dataset`` (``tinythinker world``: seed 42, the default size)
    built once into the user cache (``TINYTHINKER_CACHE``, default ``~/.cache/tinythinker``), under a
    name keyed by a hash of the generated files: a change of the generator builds it again."""
    import tempfile

    from tinythinker.data.build import build_dataset

    from tinythinker.data.world import DEFAULT_QUESTIONS, write_world

    questions = questions or DEFAULT_QUESTIONS
    cache = Path(os.environ.get("TINYTHINKER_CACHE") or Path.home() / ".cache" / "tinythinker")
    out = cache / "world" / f"{dataset}-{_world_digest(dataset, seed, questions)}"
    if not (out / "README.md").exists():
        log.warning("%s: building the generated world data into %s (once)", dataset, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dataset}-world-", dir=out.parent) as tmp:
            world = write_world(dataset, Path(tmp) / "world", seed=seed, questions=questions)
            try:
                build_dataset(dataset, world / "raw", [world / "teacher.jsonl"], out, seed=seed)
            except TinyThinkerError:
                if not (out / "README.md").exists():  # not merely another process finishing it first
                    raise
    return out


_warned_demo: list[bool] = []


def load_split(source: str, dataset: str, variant: str, split: str, revision: str | None = None):
    """One split of config ``{dataset}-{variant}`` of a data set folder, Hub id (at ``revision``), or ``world``."""
    from tinythinker.data.splits import load_stage_split  # the engine's loader: one set of checks and messages

    if source == "demo":  # the embedded demo data is gone; its keyword still works
        if not _warned_demo:
            _warned_demo.append(True)
            log.warning("data=demo is deprecated: reading data=world (the generated world data) instead")
        source = WORLD_SOURCE
    folder = world_folder(dataset) if source == WORLD_SOURCE else Path(source).expanduser()
    # datasets reads a relative folder such as "." as a Hub name: hand it an absolute path
    folder = folder.resolve() if folder.exists() else source
    return load_stage_split(folder, config_name(dataset, variant), split, revision)
