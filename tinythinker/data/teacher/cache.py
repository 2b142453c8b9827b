"""What the teacher has already answered, on disk: a content-addressed cache and the output file.

Never pay twice, never lose an answer:

- :class:`ResponseCache` keeps every answered request under the sha256 of its full body
  (``request_hash``), each written in its own committed SQLite transaction, so a killed run loses
  at most the requests in flight and any later run (any output file, any round) reuses what was
  paid for.
- :class:`ResponsesFile` is the output: OpenAI Batch API *output* lines, one per answered request,
  appended as whole lines (one ``write``; ``fsync`` in groups), never twice for the same request.
  A line torn by a kill is cut off when the file is opened again, and a lock keeps two runs from
  writing the same file.

An output line::

    {"id": "batch_req_<hash[:24]>", "custom_id": "<question id>",
     "response": {"status_code": 200, "request_id": "...", "body": <chat.completion, all choices>},
     "error": null, "round": 1, "request_hash": "<sha256 hex of the request body>", "max_tokens": 256,
     "split_seed": 42}

(``round``, ``request_hash``, ``max_tokens`` and ``split_seed`` are ours; readers of Batch output ignore
them. ``split_seed`` is the ``--seed`` whose splits the question was asked from: ``build`` refuses another.)

The API key is never part of a request body, so it never reaches either file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from tinythinker.artifacts import atomic_write_text
from tinythinker.errors import TinyThinkerError, where

try:  # advisory lock on the output file (POSIX); elsewhere runs are simply not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

DEFAULT_CACHE_ENV = "TINYTHINKER_CACHE_DIR"


def canonical_json(body: Mapping) -> bytes:
    """A request body as canonical JSON (sorted keys, no spaces, UTF-8): what is hashed, and what
    the client sends (so a server can recognise a request by the sha256 of the bytes it received)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def body_hash(body: Mapping) -> str:
    """sha256 (hex) of a request body in canonical JSON."""
    return hashlib.sha256(canonical_json(body)).hexdigest()


def request_hash(request: Mapping) -> str:
    """The cache and resume key of a Batch-API-shaped request line: the hash of its full body."""
    return body_hash(request["body"])


def default_cache_dir() -> Path:
    """``$TINYTHINKER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tinythinker/teacher`` (``~/.cache/...``)."""
    if os.environ.get(DEFAULT_CACHE_ENV):
        return Path(os.environ[DEFAULT_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinythinker" / "teacher"


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def normalise_response(response: Mapping) -> dict:
    """``{"status_code", "request_id", "body"}``: the response part of an output line and a cache entry."""
    return {"status_code": int(response.get("status_code", 200)), "request_id": response.get("request_id"), "body": response["body"]}


def _line_ends(request: Mapping, round_index: int, digest: str, split_seed: int | None) -> tuple[dict, dict]:
    head = {"id": f"batch_req_{digest[:24]}", "custom_id": request["custom_id"]}
    tail = {"error": None, "round": round_index, "request_hash": digest, "max_tokens": request["body"].get("max_tokens")}
    if split_seed is not None:
        tail["split_seed"] = split_seed
    return head, tail


def output_line(request: Mapping, response: Mapping, *, round_index: int, digest: str | None = None,
                split_seed: int | None = None) -> dict:
    """The Batch-API-output line for one answered request (``split_seed``: see the module docstring;
    None where it is not known)."""
    head, tail = _line_ends(request, round_index, digest or request_hash(request), split_seed)
    return {**head, "response": normalise_response(response), **tail}


def output_line_text(request: Mapping, encoded_response: str, *, round_index: int, digest: str,
                     split_seed: int | None = None) -> str:
    """:func:`output_line` as a JSON text line around an already encoded (normalised) response:
    an answer is written twice (cache and output) but encoded once."""
    head, tail = _line_ends(request, round_index, digest, split_seed)
    return _dumps(head)[:-1] + ',"response":' + encoded_response + "," + _dumps(tail)[1:] + "\n"


def encode_response(response: Mapping) -> str:
    return _dumps(normalise_response(response))


class ResponseCache:
    """Content-addressed answers: ``request_hash`` -> ``{"status_code", "request_id", "body"}``.

    One SQLite file, ``{root}/answers.sqlite3``, in WAL mode: every ``put`` is its own committed
    transaction (a kill keeps whole entries only, never a torn one), a ``put`` costs one append to
    the log instead of a file created and renamed per answer, and several runs may share one cache.
    Nothing is created until the first ``put`` (a dry run leaves no trace)."""

    FILE = "answers.sqlite3"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / self.FILE
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the writer thread and the main thread share the connection

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            if not create and not self.path.exists():
                return None
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a kill loses nothing committed
                db.execute("CREATE TABLE IF NOT EXISTS answers (request_hash TEXT PRIMARY KEY, response TEXT NOT NULL)")
            except (sqlite3.Error, OSError) as error:
                raise TinyThinkerError(f"{self.path}: cannot use the answer cache ({error}); move it away or pass another --cache-dir") from None
            self._db = db
        return self._db

    def get(self, digest: str) -> dict | None:
        """The cached response, or None (a damaged entry counts as missing: it is asked again)."""
        with self._lock:
            db = self._connect(create=False)
            if db is None:
                return None
            try:
                row = db.execute("SELECT response FROM answers WHERE request_hash = ?", (digest,)).fetchone()
            except sqlite3.Error as error:
                raise TinyThinkerError(f"{self.path}: cannot read the answer cache ({error}); move it away or pass another --cache-dir") from None
        if row is None:
            return None
        try:
            response = json.loads(row[0])
        except ValueError:
            return None
        return response if isinstance(response, dict) and isinstance(response.get("body"), dict) else None

    def __contains__(self, digest: str) -> bool:
        return self.get(digest) is not None

    def put(self, digest: str, response: Mapping) -> None:
        self.put_encoded([(digest, encode_response(response))])

    def put_encoded(self, items: Iterable[tuple[str, str]]) -> None:
        """Store several (hash, :func:`encode_response` text) answers in one transaction (all or none)."""
        rows = list(items)
        if not rows:
            return
        with self._lock:
            db = self._connect(create=True)
            with db:  # one committed transaction
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO answers (request_hash, response) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            db = self._connect(create=False)
            return 0 if db is None else db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_output_lines(path: str | Path) -> Iterator[dict]:
    """Complete lines of an output file, streamed (a torn last line, from a kill mid-write, is ignored)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():
        raise TinyThinkerError(f"{path}: not a file; --out names the JSONL file the answers go to")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.endswith(b"\n"):
                return  # torn tail
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                raise TinyThinkerError(f"{where(path, number)}: not a JSON line; this is not a teacher output file (choose another --out)") from None
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str) or not isinstance(line.get("response"), dict):
                raise TinyThinkerError(f"{where(path, number)}: not an OpenAI Batch output line (custom_id, response); choose another --out")
            yield line


def round_of(line: Mapping) -> int:
    """The teacher round of an output line (1 for Batch output lines that do not say)."""
    value = line.get("round")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


class ResponsesFile:
    """The output JSONL, opened for appending answered requests (use as a context manager).

    ``done`` maps the ``(custom_id, request_hash)`` pairs already in the file to their round: a
    request is written at most once. Appends are single ``os.write`` calls of whole lines; ``fsync``
    runs at most every ``sync_every`` seconds and at close (a kill keeps every written line; the
    sync guards against the machine going down)."""

    def __init__(self, path: str | Path, *, sync_every: float = 0.5, readonly: bool = False):
        self.path = Path(path)
        self.sync_every = sync_every
        self.readonly = readonly  # only read what is there (dry runs): no file made, no lock, no repair
        self._fd: int | None = None
        self._dirty = False
        self._last_sync = 0.0
        self._lock = threading.Lock()
        self.done: dict[tuple[str, str], int] = {}

    def __enter__(self) -> "ResponsesFile":
        if self.readonly:
            for line in iter_output_lines(self.path):
                self.done[(line["custom_id"], line.get("request_hash") or "")] = round_of(line)
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as error:
            raise TinyThinkerError(f"{self.path}: cannot open the output file ({error.strerror or error.__class__.__name__}); choose another --out") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise TinyThinkerError(f"{self.path}: another `tinythinker teach` is writing this file; wait for it or choose another --out") from None
        self._fd = fd
        try:
            self._cut_torn_tail()
            for line in iter_output_lines(self.path):
                self.done[(line["custom_id"], line.get("request_hash") or "")] = round_of(line)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _cut_torn_tail(self) -> None:
        """Cut a last line without its newline (a write the kill interrupted)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        keep, chunk = size, 1 << 16
        while keep > 0:
            start = max(0, keep - chunk)
            data = os.pread(self._fd, keep - start, start)
            newline = data.rfind(b"\n")
            if newline != -1:
                keep = start + newline + 1
                break
            keep = start
        if keep != size:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)

    def has(self, custom_id: str, digest: str) -> bool:
        return (custom_id, digest) in self.done

    def append(self, line: Mapping) -> bool:
        """Write one answered request; False (nothing written) when it is already in the file."""
        return self.append_many([line]) == 1

    def append_many(self, lines: Iterable[Mapping]) -> int:
        """Write the lines not yet in the file (whole lines, one ``write``); returns how many."""
        return self.append_texts((line["custom_id"], line.get("request_hash") or "", round_of(line), _dumps(line) + "\n") for line in lines)

    def append_texts(self, entries: Iterable[tuple[str, str, int, str]]) -> int:
        """Like :meth:`append_many` for lines already encoded: (custom_id, request_hash, round, text)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not open for writing")
        chunks: list[str] = []
        new: dict[tuple[str, str], int] = {}
        for custom_id, digest, round_index, text in entries:
            key = (custom_id, digest)
            if key in self.done or key in new:
                continue
            new[key] = round_index
            chunks.append(text)
        if not chunks:
            return 0
        data = memoryview("".join(chunks).encode("utf-8"))
        with self._lock:
            while data:
                data = data[os.write(self._fd, data):]
            self._dirty = True
        self.done.update(new)
        if time.monotonic() - self._last_sync >= self.sync_every:
            self.sync()
        return len(new)

    def sync(self) -> None:
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.sync()
        os.close(self._fd)  # closing releases the lock
        self._fd = None


def write_jsonl(path: str | Path, rows: Iterable[Mapping]) -> int:
    """Write rows as JSONL atomically; returns the number of rows."""
    rows = list(rows)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows))
    return len(rows)
