"""Artifact folders: written under a temporary name and renamed into place, never half-written.

Every artifact (data set folder, preference set, checkpoint, eval result) goes through
:func:`staged_folder`. Data set folders are laid out like a Hugging Face dataset repo:
``README.md`` (YAML ``configs`` + card) and ``data/<config>/<split>-00000-of-00001.parquet``,
so ``datasets.load_dataset(folder, config)`` loads them offline and ``tinythinker push`` uploads
them as they are. Parquet files are byte-identical for identical rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import yaml

from .errors import TinyThinkerError, where

PARTIAL_MARK = ".partial-"


def _umask_mode(mode: int) -> int:
    """``mode`` under the process umask: mkdtemp/mkstemp make private (0700/0600) entries, but an
    artifact should get the permissions an ordinary mkdir/open would give it."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _stale_partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}{PARTIAL_MARK}*")) if out.parent.exists() else []


@contextlib.contextmanager
def staged_folder(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    Refuses an existing ``out`` unless ``overwrite``. On an exception (Ctrl-C included) the
    temporary folder is removed; a leftover from a killed process is removed by the next call."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise TinyThinkerError(f"{out}: output folder exists; pass --overwrite to replace it or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in _stale_partials(out):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_MARK}", dir=out.parent))
    except OSError as error:
        raise TinyThinkerError(f"{out}: cannot create the output folder ({error.strerror or error}); choose another --out") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(_umask_mode(0o777))
    if out.exists():
        trash = out.parent / f".{out.name}{PARTIAL_MARK}old-{os.getpid()}"
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temporary name and ``os.replace`` (readers never see a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def split_file(config: str, split: str) -> str:
    """Relative path of one split's parquet file inside a data set folder."""
    return f"data/{config}/{split}-00000-of-00001.parquet"


def write_split(folder: str | Path, config: str, split: str, rows: Sequence[Mapping], features) -> Path:
    """Write rows as one parquet file with the ``datasets`` Features in its schema (typed on load).

    Deterministic: same rows and features give the same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(folder) / split_file(config, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = features.arrow_schema
    columns = {name: [row[name] for row in rows] for name in schema.names}
    table = pa.Table.from_pydict(columns, schema=schema)
    pq.write_table(table, path, compression="zstd", write_statistics=False)
    return path


def configs_metadata(configs: Mapping[str, Sequence[str]], default: str | None = None) -> dict:
    """``{"configs": [...]}``: the card metadata that tells ``datasets`` which parquet files make
    which config/split."""
    entries = []
    for config, splits in configs.items():
        entry = {"config_name": config, "data_files": [{"split": s, "path": split_file(config, s)} for s in splits]}
        if config == default:
            entry["default"] = True
        entries.append(entry)
    return {"configs": entries}


def configs_yaml(configs: Mapping[str, Sequence[str]], default: str | None = None) -> str:
    """:func:`configs_metadata` as YAML front matter text."""
    return yaml.safe_dump(configs_metadata(configs, default), sort_keys=False, allow_unicode=True)


def write_card(folder: str | Path, front_matter: Mapping | str, body: str) -> Path:
    """README.md = YAML front matter (``configs`` and metadata) + markdown body."""
    header = front_matter if isinstance(front_matter, str) else yaml.safe_dump(dict(front_matter), sort_keys=False, allow_unicode=True)
    path = Path(folder) / "README.md"
    atomic_write_text(path, f"---\n{header.rstrip()}\n---\n\n{body.strip()}\n")
    return path


def read_card_metadata(folder: str | Path) -> dict:
    """The YAML front matter of a folder's README.md ({} when absent)."""
    path = Path(folder) / "README.md"
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    return yaml.safe_load(text[4:end]) or {} if end != -1 else {}


def iter_jsonl(path: str | Path, *, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of a JSONL file; clear errors otherwise."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise TinyThinkerError(f"{path}: {what} not found") from None
    except OSError as error:
        raise TinyThinkerError(f"{path}: cannot read {what} ({error.strerror or error.__class__.__name__})") from None
    with handle:
        try:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw)
                except ValueError as error:
                    raise TinyThinkerError(f"{where(path, number)}: not valid JSON ({error}); {what} must be JSONL, one object per line") from None
                if not isinstance(value, dict):
                    raise TinyThinkerError(f"{where(path, number)}: expected a JSON object per line in {what}")
                yield number, value
        except UnicodeDecodeError:
            raise TinyThinkerError(f"{path}: {what} is not UTF-8 text") from None
