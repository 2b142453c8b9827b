"""Artifact folders: written under a temporary name and renamed into place, never half-written.

Every artifact (data set folder, preference set, checkpoint, eval result) goes through
:func:`staged_folder`. Data set folders are laid out like a Hugging Face dataset repo:
``README.md`` (YAML ``configs`` + card) and ``data/<config>/<split>-00000-of-00001-<digest>.parquet``,
so ``datasets.load_dataset(folder, config)`` loads them offline and ``tinythinker push`` uploads
them as they are. Parquet files are byte-identical for identical rows.

``<digest>`` is the start of the file's SHA-256. ``datasets`` caches a local folder under its
basename, the config name and a hash of the card (the ``configs`` file paths, not the files'
contents), so with fixed file names a folder rebuilt in place, or another folder with the same
basename, would load the rows cached the first time. A name that changes with the content changes
that hash: new rows are never served from an old cache, and identical rows still share one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import yaml

from tinythinker.errors import TinyThinkerError, where

PARTIAL_MARK = ".partial-"
# in every folder this tool writes: --overwrite replaces only folders that carry it (never a user's own folder)
OWNER_MARK = ".tinythinker"
OWNER_TEXT = "Written by tinythinker: `--overwrite` may replace this folder.\n"


def check_output_folder(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, that exists (without ``overwrite``), or that this tool did not write."""
    if out.is_dir() and not overwrite:
        raise TinyThinkerError(f"{out}: output folder exists; pass --overwrite to replace it or choose another --out")
    check_replaceable(out)  # a file, or a folder this tool did not write


def check_replaceable(out: Path) -> None:
    """Refuse to replace ``out`` unless this tool wrote it (it carries OWNER_MARK) or it is empty."""
    if out.exists() and not out.is_dir():
        raise TinyThinkerError(f"{out}: is a file, not an output folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / OWNER_MARK).is_file():
        raise TinyThinkerError(f"{out}: --overwrite replaces only a folder that tinythinker wrote (it has no {OWNER_MARK} file); "
                               "remove it yourself or choose another --out")


_held_locks: dict[str, list] = {}  # lock file -> [open file, depth]: a process may lock its own output again


def _lock_holder(lock: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        holder = json.loads(lock.read_text(encoding="utf-8"))
        return f"pid {int(holder['pid'])}: {str(holder.get('command', ''))[:200]}"
    return "a process that has not yet said which"


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """One writer per output: an exclusive lock on ``.{name}.lock`` beside ``out`` (beside, not inside:
    staged writes rename whole folders into place, and ``out`` need not exist yet) for as long as the
    block runs. A second process gets one line naming the holder; a lock whose process died is free
    (the kernel drops a dead process's flock), so it is simply taken. Reentrant within a process."""
    import fcntl
    import sys

    out = Path(out).absolute()
    lock = out.parent / f".{out.name}.lock"
    key = str(lock)
    if key in _held_locks:
        _held_locks[key][1] += 1
        try:
            yield
        finally:
            _held_locks[key][1] -= 1
        return
    made = [parent for parent in [out.parent, *out.parent.parents] if not parent.exists()]  # removed again if left empty
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(lock, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise TinyThinkerError(f"{out} is being written by another tinythinker process ({_lock_holder(lock)}); "
                                       "wait for it to end, or choose another --out") from None
            # the lock is on the file this path names now, not on one a finishing holder just removed
            if lock.exists() and os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)}) + "\n")
        handle.flush()
    except OSError as error:
        raise TinyThinkerError(f"cannot write {out}: {error.strerror or error}"
                               + (f" ({error.filename})" if error.filename else "")) from None
    _held_locks[key] = [handle, 1]
    try:
        yield
    finally:
        del _held_locks[key]
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: a process that opened the old file sees it is gone and retries
        handle.close()
        for parent in made:  # the folders made for the lock, if the command wrote nothing into them
            with contextlib.suppress(OSError):
                parent.rmdir()


def umask_mode(mode: int) -> int:
    """``mode`` under the process umask: mkdtemp/mkstemp make private (0700/0600) entries, but an
    artifact should get the permissions an ordinary mkdir/open would give it."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


_interrupted = False


def _interrupt(signum, frame):
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def watch_interrupts() -> None:
    """Remember a Ctrl-C as well as raising it, so that :func:`staged_folder` never commits an interrupted write.

    A library that checks for signals inside native code (parquet and data frame writers do) can swallow
    the KeyboardInterrupt; the write would then go on and be renamed into place as if nothing happened.
    Installed by the CLI; a process that ignores SIGINT keeps ignoring it."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)


def ignore_interrupts() -> None:
    """On the way out after a Ctrl-C: a second one (or a first still pending in the interpreter) must not
    turn the exit with its resume hint and status 130 into a traceback or a death by SIGINT."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored for the block (main thread; elsewhere signals do not arrive anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, then raise it: pyarrow's parquet writer aborts the whole process
    (a failed C++ check, no cleanup) when a KeyboardInterrupt is raised inside one of its writes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and previous is not signal.SIG_IGN:
        global _interrupted
        _interrupted = True
        raise KeyboardInterrupt


def _stale_partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}{PARTIAL_MARK}*")) if out.parent.exists() else []


@contextlib.contextmanager
def staged_folder(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    Refuses an existing ``out`` unless ``overwrite``. On an exception (Ctrl-C included) the
    temporary folder is removed; a leftover from a killed process is removed by the next call."""
    out = Path(out)
    check_output_folder(out, overwrite=overwrite)
    tmp = None
    try:
        # a Ctrl-C while the folder is made is raised once it is known, so that it is removed below
        with interrupts_deferred():
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                for stale in _stale_partials(out):
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_MARK}", dir=out.parent))
            except OSError as error:
                raise TinyThinkerError(f"{out}: cannot create the output folder ({error.strerror or error}); "
                                       "choose another --out") from None
        yield tmp
        if _interrupted:  # a Ctrl-C that some library swallowed: the write is not finished work
            raise KeyboardInterrupt
        (tmp / OWNER_MARK).write_text(OWNER_TEXT, encoding="utf-8")
    except BaseException:
        if tmp is not None:
            with _interrupts_ignored():  # a second Ctrl-C (or one a library re-raises) must not stop the clean-up
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(umask_mode(0o777))
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
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


DIGEST_CHARS = 16  # hex characters of the SHA-256 in a parquet file's name


def split_file(config: str, split: str, digest: str) -> str:
    """Relative path of one split's parquet file inside a data set folder; ``digest`` is
    :func:`file_digest` of its bytes (see the module docstring for why)."""
    return f"data/{config}/{split}-00000-of-00001-{digest}.parquet"


def file_digest(path: str | Path) -> str:
    """The first :data:`DIGEST_CHARS` hex characters of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:DIGEST_CHARS]


def _split_files(directory: Path, split: str) -> list[Path]:
    pattern = re.compile(rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}(-[0-9a-f]+)?\.parquet")
    return sorted(p for p in directory.glob("*.parquet") if pattern.fullmatch(p.name))


def place_split(file: str | Path, folder: str | Path, config: str, split: str) -> Path:
    """Move a finished parquet file to its content-named place in ``folder`` (replacing the
    split's earlier file, whatever its name); -> the new path."""
    target = Path(folder) / split_file(config, split, file_digest(file))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(file), target)
    for earlier in _split_files(target.parent, split):
        if earlier != target:
            earlier.unlink()
    return target


def split_path(folder: str | Path, config: str, split: str) -> Path:
    """The parquet file of ``config``/``split`` in ``folder`` (content-named, or the fixed
    ``<split>-00000-of-00001.parquet`` of folders written before names carried a digest)."""
    directory = Path(folder) / "data" / config
    found = _split_files(directory, split)
    if len(found) != 1:
        what = "no parquet file" if not found else f"{len(found)} parquet files ({', '.join(p.name for p in found)})"
        raise TinyThinkerError(f"{directory}: {what} for split {split!r}; rebuild the folder")
    return found[0]


def write_split(folder: str | Path, config: str, split: str, rows: Sequence[Mapping], features) -> Path:
    """Write rows as one parquet file with the ``datasets`` Features in its schema (typed on load),
    named after its content (:func:`split_file`); -> its path.

    Deterministic: same rows and features give the same bytes (and the same name)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(folder) / "data" / config
    directory.mkdir(parents=True, exist_ok=True)
    schema = features.arrow_schema
    columns = {name: [row[name] for row in rows] for name in schema.names}
    table = pa.Table.from_pydict(columns, schema=schema)
    fd, tmp = tempfile.mkstemp(prefix=f".{split}.", suffix=".parquet", dir=directory)
    os.close(fd)
    try:
        with interrupts_deferred():
            pq.write_table(table, tmp, compression="zstd", write_statistics=False)
        os.chmod(tmp, umask_mode(0o666))
        return place_split(tmp, folder, config, split)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def configs_metadata(folder: str | Path, configs: Mapping[str, Sequence[str]], default: str | None = None) -> dict:
    """``{"configs": [...]}``: the card metadata that tells ``datasets`` which parquet files of
    ``folder`` make which config/split (the files must be written first: their names carry digests)."""
    entries = []
    for config, splits in configs.items():
        files = [{"split": s, "path": split_path(folder, config, s).relative_to(folder).as_posix()} for s in splits]
        entry = {"config_name": config, "data_files": files}
        if config == default:
            entry["default"] = True
        entries.append(entry)
    return {"configs": entries}


def card_data_files(folder: str | Path) -> dict[str, dict[str, str]]:
    """``{config: {split: path relative to folder}}`` as the folder's card lists them."""
    files: dict[str, dict[str, str]] = {}
    for entry in read_card_metadata(folder).get("configs") or []:
        if isinstance(entry, dict) and entry.get("config_name"):
            files[entry["config_name"]] = {f.get("split"): f.get("path") for f in entry.get("data_files") or [] if isinstance(f, dict)}
    return files


def write_card(folder: str | Path, front_matter: Mapping, body: str) -> Path:
    """README.md = YAML front matter (``configs`` and metadata) + markdown body."""
    header = yaml.safe_dump(dict(front_matter), sort_keys=False, allow_unicode=True)
    path = Path(folder) / "README.md"
    atomic_write_text(path, f"---\n{header.rstrip()}\n---\n\n{body.strip()}\n")
    return path


def open_parquet(path: str | Path):
    """``pyarrow.parquet.ParquetFile`` of ``path``; a damaged or truncated file is one line naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        detail = " ".join(str(error).split())[:160]
        raise TinyThinkerError(f"{path}: not a readable parquet file ({detail}); the file is damaged or incomplete: "
                               "rebuild the folder or copy it again") from None


def read_card_metadata(folder: str | Path) -> dict:
    """The YAML front matter of a folder's README.md ({} when absent)."""
    path = Path(folder) / "README.md"
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TinyThinkerError(f"{path}: the card is not UTF-8 text (byte {error.start}); write it again, or rebuild the folder") from None
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    if end == -1:
        return {}
    try:
        front = yaml.safe_load(text[4:end])
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f":{mark.line + 2}" if mark is not None else ""  # the front matter starts on the card's second line
        raise TinyThinkerError(f"{path}{at}: the card's YAML front matter does not parse "
                               f"({' '.join(str(getattr(error, 'problem', None) or error).split())}); fix it, or rebuild the folder") from None
    if front is not None and not isinstance(front, dict):
        raise TinyThinkerError(f"{path}: the card's YAML front matter is a {type(front).__name__}, not a mapping; fix it, or rebuild the folder")
    return front or {}


def checkpoint_provenance(student) -> dict:
    """The ``tinythinker`` section of a local checkpoint's card (how it was trained); {} for a Hub id,
    a folder without one, or a card that cannot be read (a missing record only loses a default)."""
    path = Path(str(student or ""))
    try:
        info = read_card_metadata(path).get("tinythinker") if student and path.is_dir() else None
    except Exception:  # noqa: BLE001 - any unreadable card counts as none
        info = None
    return info if isinstance(info, dict) else {}


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
