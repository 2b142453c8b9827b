"""A small Hugging Face Hub on 127.0.0.1 that speaks the HTTP calls huggingface_hub 2.x (and through it
``datasets`` and ``transformers``) makes to publish and to read repos; tests point ``HF_ENDPOINT`` at it.

Routes (as huggingface_hub's hf_api.py, _commit_api.py, lfs.py and file_download.py call them; a
revision or path segment may be %-quoted, e.g. ``refs%2Fpr%2F1``):

  POST /api/repos/create                              {name, organization, type?, private?} -> repo with an
                                                      initial commit holding the Hub's default .gitattributes
  POST /api/validate-yaml                             README metadata check before an upload
  GET  /api/{type}s/{id}[/revision/{rev}]             repo info: sha, private, cardData, siblings (?blobs=1: sizes, lfs)
  GET  /api/{type}s/{id}/tree/{rev}[/{path}]          listing (?recursive=1, ?expand=1 adds lastCommit); one page
  POST /api/{type}s/{id}/paths-info/{rev}             form (or JSON) ``paths``, ``expand``: the entries that exist
  GET  /api/{type}s/{id}/refs | /commits/{rev}        branches and tags | history, newest first
  POST /api/{type}s/{id}/branch/{name} | /tag/{rev}   create a branch (startingPoint) | a tag {tag}
  POST /api/{type}s/{id}/preupload/{rev}              "lfs" for files the .gitattributes put in LFS, binary
                                                      samples and files of 10 MB or more, else "regular";
                                                      ``oid`` of the file already at that path (unchanged files
                                                      are then left out of the commit by the client)
  POST /{datasets/}{id}.git/info/lfs/objects/batch    LFS batch API (basic transfer): an upload href on the
                                                      storage server per object not stored yet, and a verify href
  POST /{datasets/}{id}.git/info/lfs/objects/verify   {oid, size}: 200 when stored with that size
  POST /api/{type}s/{id}/commit/{rev}                 NDJSON: header, then file (base64) / lfsFile (oid must be
                                                      stored) / deletedFile / deletedFolder; a binary regular
                                                      file is refused as the Hub refuses it
  HEAD|GET /{datasets/}{id}/resolve/{rev}/{path}      regular file: 200, ETag (git blob id), X-Repo-Commit,
                                                      Content-Length, Range; LFS file: 302 to the storage server
                                                      with X-Linked-Etag (sha256), X-Linked-Size, X-Repo-Commit

The storage server (``LocalHub.storage``, another port: another host to the client, which therefore
never sends it the token, as with the Hub's CDN and S3) answers PUT /upload/{sha256} (content checked
against the sha256) and HEAD|GET /lfs/{sha256} with Range.

Auth as on the Hub: writes need a bearer token (any, or one of ``tokens`` when given; a wrong one gets
401 "Invalid credentials in Authorization header"; one of ``read_only_tokens`` reads, and its writes get
the Hub's 403 "You don't have the rights to create a ... under the namespace ..."); a private repo reads only with a valid token; a
missing or hidden repo is 401 without a token and 404 with one, both with ``X-Error-Code: RepoNotFound``;
an unknown revision is 404 ``RevisionNotFound``, an unknown file 404 ``EntryNotFound``. Xet storage is
not served (no xet-write-token route, no X-Xet-Hash header): a client with hf_xet installed must be told
``HF_HUB_DISABLE_XET=1`` to upload LFS files here. Every request is recorded (method, path,
Authorization header) in ``state.requests`` (``storage.requests`` for the storage server).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# What a new repo's .gitattributes puts in LFS on the Hub (its default file, abridged to the patterns).
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.lz4",
    "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar",
    "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
LFS_SIZE = 10 * 1024 * 1024  # files this large go to LFS whatever their name
_SHA = re.compile(r"^[0-9a-f]{40}$")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class Blob:
    size: int
    oid: str  # git blob id (of the pointer file for an LFS file)
    data: bytes | None = None  # a regular file's content
    sha256: str | None = None  # an LFS file's content address

    @classmethod
    def regular(cls, data: bytes) -> "Blob":
        return cls(len(data), git_blob_id(data), data=data)

    @classmethod
    def lfs(cls, sha256: str, size: int) -> "Blob":
        return cls(size, git_blob_id(lfs_pointer(sha256, size)), sha256=sha256)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    visibility: str  # "public" or "private"
    storage: dict[str, bytes]  # the hub's LFS store (shared by all repos), to read LFS files back
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    history: dict[str, Commit] = field(default_factory=dict)  # oid -> commit, in creation order

    @property
    def commits(self) -> list[str]:
        """Every commit's oid, oldest first (the first is the initial .gitattributes commit)."""
        return list(self.history)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision) or (revision if _SHA.match(revision) else None)
        return self.history.get(oid) if oid else None

    def contents(self, revision: str = "main") -> dict[str, bytes]:
        """{path: bytes} of a revision, LFS files read back from the store."""
        commit = self.resolve(revision)
        return {path: blob.data if blob.sha256 is None else self.storage[blob.sha256] for path, blob in commit.files.items()}

    @property
    def files(self) -> dict[str, bytes]:
        """The main branch's files, without the .gitattributes every Hub repo starts with."""
        return {path: data for path, data in self.contents().items() if path != ".gitattributes"}

    def lfs_files(self, revision: str = "main") -> set[str]:
        return {path for path, blob in self.resolve(revision).files.items() if blob.sha256 is not None}

    def add_commit(self, branch: str, title: str, files: dict[str, Blob]) -> Commit:
        parent = self.branches.get(branch)
        seed = json.dumps([parent, title, time.time_ns(), sorted((p, b.oid) for p, b in files.items())]).encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), parent, title, _now(), files)
        self.history[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit


@dataclass
class HubState:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (type, "org/name") -> repo
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, auth header
    tokens: set[str] = field(default_factory=set)  # when set, only these tokens are accepted
    read_only_tokens: set[str] = field(default_factory=set)  # valid for reading; writes get the Hub's 403
    storage: dict[str, bytes] = field(default_factory=dict)  # LFS objects by sha256
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_repo(self, repo_type: str, repo_id: str, *, private: bool = False) -> Repo:
        repo = Repo(repo_type, repo_id, "private" if private else "public", self.storage)
        repo.add_commit("main", "initial commit", {".gitattributes": Blob.regular(GITATTRIBUTES.encode())})
        self.repos[(repo_type, repo_id)] = repo
        return repo


class _Reply(Exception):
    """An HTTP error reply: status, JSON body and headers (X-Error-Code and such)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/([a-z-]+)(?:/(.*))?)?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")
_LFS = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+?)\.git/info/lfs/objects/(batch|verify)$")
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def _split_revision(rest: str | None) -> tuple[str, str]:
    """``rev/some%2Fpath`` or ``rev/some/path`` -> (rev, path), each unquoted."""
    revision, _, path = (rest or "").partition("/")
    return unquote(revision), unquote(path).strip("/")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a ``Range: bytes=a-b`` header; None for the whole body; _Reply 416 when unsatisfiable."""
    if not header:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        first, last = max(0, size - int(last)), size - 1
    else:
        first, last = int(first), min(int(last), size - 1) if last else size - 1
    if first >= size or first > last:
        raise _Reply(416, "Requested range not satisfiable", {"Content-Range": f"bytes */{size}"})
    return first, last


class _BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every reply has a Content-Length
    record: list

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, payload=None, headers: dict | None = None, *, body: bytes | None = None,
              content_type: str = "application/json") -> None:
        if body is None:
            body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send_bytes(self, data: bytes, headers: dict) -> None:
        """200 with the whole body, or 206 with the asked Range."""
        span = _byte_range(self.headers.get("Range"), len(data))
        headers = {"Accept-Ranges": "bytes", **headers}
        if span is None:
            return self._send(200, headers=headers, body=data, content_type="application/octet-stream")
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        self._send(206, headers=headers, body=data[first : last + 1], content_type="application/octet-stream")

    def _dispatch(self) -> None:
        self.record.append((self.command, self.path, self.headers.get("Authorization")))
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            self.route(urlsplit(self.path), body)
        except _Reply as reply:
            headers = dict(reply.headers)
            if reply.status >= 400:
                headers.setdefault("X-Error-Message", reply.message)
            self._send(reply.status, {"error": reply.message}, headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def route(self, url, body: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class _StorageHandler(_BaseHandler):
    """The LFS object store: what the Hub's presigned upload URLs and CDN download URLs point at."""

    state: HubState

    def route(self, url, body: bytes) -> None:
        match = re.fullmatch(r"/(upload|lfs)/([0-9a-f]{64})", url.path)
        if not match:
            raise _Reply(404, f"no route {self.command} {url.path}")
        kind, sha256 = match.groups()
        if kind == "upload" and self.command == "PUT":
            if hashlib.sha256(body).hexdigest() != sha256:
                raise _Reply(400, "the uploaded content does not match its sha256")
            with self.state.lock:
                self.state.storage[sha256] = body
            return self._send(200, body=b"", headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
        if kind == "lfs" and self.command in ("GET", "HEAD"):
            data = self.state.storage.get(sha256)
            if data is None:
                raise _Reply(404, "no such object")
            return self._send_bytes(data, {"ETag": f'"{sha256}"'})
        raise _Reply(405, f"{self.command} not allowed on {url.path}")


class _HubHandler(_BaseHandler):
    state: HubState
    endpoint: str
    storage_url: str

    # .. auth ..

    def _token(self) -> str | None:
        """The bearer token, None without one; _Reply 401 for one this Hub does not know."""
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return None
        token = auth[7:]
        if self.state.tokens and token not in self.state.tokens | self.state.read_only_tokens:
            raise _Reply(401, "Invalid credentials in Authorization header")
        return token

    def _writer_token(self, namespace: str, repo_type: str) -> str:
        """The bearer token of a write: 401 without one, the Hub's 403 for a read-only one."""
        token = self._token()
        if token is None:
            raise _Reply(401, "You must be authenticated to access this resource")
        if token in self.state.read_only_tokens:
            raise _Reply(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')
        return token

    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        token = self._writer_token(repo_id.split("/")[0], repo_type) if write else self._token()
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.visibility == "private" and token is None):
            # the Hub does not tell a missing repo from a hidden one
            raise _Reply(401 if token is None else 404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _Reply(404, f"Invalid rev id: {revision}", {"X-Error-Code": "RevisionNotFound"})
        return commit

    # .. routing ..

    def route(self, url, body: bytes) -> None:
        path, query = url.path, parse_qs(url.query)
        with self.state.lock:
            if path == "/api/repos/create" and self.command == "POST":
                return self._create(json.loads(body or b"{}"))
            if path == "/api/validate-yaml" and self.command == "POST":
                if self._token() is None:
                    raise _Reply(401, "You must be authenticated to access this resource")
                return self._send(200, {"errors": [], "warnings": []})
            if match := _API.match(path):
                plural, org, name, action, rest = match.groups()
                return self._api(plural[:-1], f"{org}/{name}", action, rest, query, body)
            if (match := _RESOLVE.match(path)) and self.command in ("GET", "HEAD"):
                plural, org, name, revision, file_path = match.groups()
                return self._resolve((plural or "models")[:-1], f"{org}/{name}", unquote(revision), unquote(file_path))
            if (match := _LFS.match(path)) and self.command == "POST":
                plural, org, name, action = match.groups()
                return self._lfs((plural or "models")[:-1], f"{org}/{name}", action, json.loads(body or b"{}"))
        raise _Reply(404, f"no route {self.command} {path}")

    def _api(self, repo_type: str, repo_id: str, action: str | None, rest: str | None, query: dict, body: bytes) -> None:
        write = self.command == "POST" and action in ("preupload", "commit", "branch", "tag")
        repo = self._repo(repo_type, repo_id, write=write)
        if action is None and self.command == "GET":
            return self._info(repo, self._commit_of(repo, "main"), query)
        if action == "revision" and self.command == "GET":
            return self._info(repo, self._commit_of(repo, _split_revision(rest)[0]), query)
        if action == "tree" and self.command == "GET":
            revision, folder = _split_revision(rest)
            return self._tree(repo, self._commit_of(repo, revision), folder, query)
        if action == "paths-info" and self.command == "POST":
            commit = self._commit_of(repo, _split_revision(rest)[0])
            if body.lstrip().startswith(b"{"):
                form = json.loads(body)
                paths, expand = form.get("paths") or [], bool(form.get("expand"))
            else:
                form = parse_qs(body.decode())
                paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() in ("1", "true")
            return self._paths_info(repo, commit, paths, expand)
        if action == "refs" and self.command == "GET":
            ref = lambda kind, name, oid: {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}  # noqa: E731
            return self._send(200, {"branches": [ref("heads", n, o) for n, o in repo.branches.items()],
                                    "tags": [ref("tags", n, o) for n, o in repo.tags.items()], "converts": []})
        if action == "commits" and self.command == "GET":
            commit, entries = self._commit_of(repo, _split_revision(rest)[0]), []
            while commit is not None:
                entries.append({"id": commit.oid, "title": commit.title, "message": "", "authors": [], "date": commit.date})
                commit = repo.history.get(commit.parent) if commit.parent else None
            return self._send(200, entries)
        if action == "branch" and self.command == "POST":
            branch, payload = _split_revision(rest)[0], json.loads(body or b"{}")
            if branch in repo.branches:
                raise _Reply(409, f"Branch {branch} already exists")
            repo.branches[branch] = self._commit_of(repo, payload.get("startingPoint") or "main").oid
            return self._send(200, {})
        if action == "tag" and self.command == "POST":
            payload = json.loads(body or b"{}")
            if payload.get("tag") in repo.tags:
                raise _Reply(409, f"Tag {payload.get('tag')} already exists")
            repo.tags[payload["tag"]] = self._commit_of(repo, _split_revision(rest)[0]).oid
            return self._send(200, {})
        if action == "preupload" and self.command == "POST":
            return self._preupload(repo, self._commit_of(repo, _split_revision(rest)[0]), json.loads(body)["files"])
        if action == "commit" and self.command == "POST":
            return self._commit(repo, _split_revision(rest)[0], body)
        raise _Reply(404, f"no route {self.command} {self.path}")

    # .. writing ..

    def _create(self, payload: dict) -> None:
        repo_type = payload.get("type") or "model"
        self._writer_token(payload["organization"], repo_type)
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:  # the Hub's 409 carries the repo's url too
            return self._send(409, {"error": "You already created this repo", "url": url})
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        self.state.add_repo(repo_type, repo_id, private=private)
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _goes_to_lfs(self, commit: Commit, path: str, size: int, sample: bytes) -> bool:
        patterns = [line.split()[0] for line in self._gitattributes(commit) if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        matched = any(fnmatch.fnmatch(path, p) or ("/" not in p and fnmatch.fnmatch(name, p)) for p in patterns)
        return size > 0 and (matched or size >= LFS_SIZE or b"\0" in sample)

    def _gitattributes(self, commit: Commit) -> list[str]:
        blob = commit.files.get(".gitattributes")
        return (blob.data or b"").decode().splitlines() if blob is not None and blob.data is not None else []

    def _preupload(self, repo: Repo, commit: Commit, files: list[dict]) -> None:
        answers = []
        for entry in files:
            sample = base64.b64decode(entry.get("sample") or "")
            lfs = self._goes_to_lfs(commit, entry["path"], int(entry["size"]), sample)
            present = commit.files.get(entry["path"])
            oid = None if present is None else (present.sha256 or present.oid)
            answers.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": answers, "commitOid": commit.oid})

    def _lfs(self, repo_type: str, repo_id: str, action: str, payload: dict) -> None:
        self._repo(repo_type, repo_id, write=True)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        if action == "verify":
            stored = self.state.storage.get(payload.get("oid", ""))
            if stored is None or len(stored) != payload.get("size"):
                raise _Reply(404, f"object {payload.get('oid')} is not stored with size {payload.get('size')}")
            return self._send(200, {"message": "verified"}, headers)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise _Reply(422, "this Hub takes LFS uploads with the basic transfer only")
        objects = []
        for entry in payload.get("objects", []):
            oid, size = entry["oid"], int(entry["size"])
            answer = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.state.storage:  # stored objects get no actions: the client skips them
                verify = f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects/verify"
                answer["actions"] = {"upload": {"href": f"{self.storage_url}/upload/{oid}"},
                                     "verify": {"href": verify}}
            objects.append(answer)
        self._send(200, {"transfer": "basic", "objects": objects}, headers)

    def _commit(self, repo: Repo, branch: str, body: bytes) -> None:
        if branch not in repo.branches:
            raise _Reply(404, f"Invalid rev id: {branch}", {"X-Error-Code": "RevisionNotFound"})
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _Reply(400, "commit payload must start with a header")
        header = lines[0]["value"]
        head = repo.history[repo.branches[branch]]
        if header.get("parentCommit") and header["parentCommit"] != head.oid:
            raise _Reply(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                if b"\0" in data[:8000]:
                    raise _Reply(400, f"Your push was rejected because it contains binary files: {value['path']}; "
                                      "upload them through LFS")
                files[value["path"]] = Blob.regular(data)
            elif key == "lfsFile":
                stored = self.state.storage.get(value["oid"])
                if stored is None or ("size" in value and len(stored) != value["size"]):
                    raise _Reply(422, f"Your push was rejected because an LFS pointer pointed to a file that does not "
                                      f"exist: {value['path']}")
                files[value["path"]] = Blob.lfs(value["oid"], len(stored))
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _Reply(404, f"File not found: {value['path']}", {"X-Error-Code": "EntryNotFound"})
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            else:
                raise _Reply(400, f"unknown commit operation {key!r}")
        commit = repo.add_commit(branch, header.get("summary") or "", files)
        self._send(200, {"commitUrl": f"{self.endpoint}/{_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}",
                         "commitOid": commit.oid, "pullRequestUrl": None})

    # .. reading ..

    def _card_data(self, repo: Repo, commit: Commit) -> dict | None:
        import yaml

        blob = commit.files.get("README.md")
        text = (blob.data or b"").decode() if blob is not None and blob.data is not None else ""
        if not text.startswith("---\n") or "\n---" not in text[4:]:
            return None
        return yaml.safe_load(text[4 : text.index("\n---", 4)]) or None

    def _info(self, repo: Repo, commit: Commit, query: dict) -> None:
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.sha256:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": len(lfs_pointer(blob.sha256, blob.size))}
            siblings.append(sibling)
        first = next(iter(repo.history.values()))
        card = self._card_data(repo, commit)
        info = {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": commit.oid, "lastModified": commit.date,
                "createdAt": first.date, "private": repo.visibility == "private", "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": list((card or {}).get("tags") or []), "siblings": siblings,
                "usedStorage": sum(b.size for b in commit.files.values())}
        if card is not None:
            info["cardData"] = card
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, library_name=(card or {}).get("library_name"),
                        pipeline_tag=(card or {}).get("pipeline_tag"))
        self._send(200, info)

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        blob = commit.files.get(path)
        if blob is None:  # a folder
            inside = sorted((p, b.oid) for p, b in commit.files.items() if p.startswith(path + "/"))
            entry = {"type": "directory", "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(), "size": 0, "path": path}
        else:
            entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
            if blob.sha256:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(lfs_pointer(blob.sha256, blob.size))}
        if expand:
            last = self._last_commit(repo, commit, path)
            entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return entry

    def _last_commit(self, repo: Repo, commit: Commit, path: str) -> Commit:
        """The newest commit (from ``commit`` back) that changed ``path`` or anything under it."""
        def state(c: Commit):
            return sorted((p, b.oid) for p, b in c.files.items() if p == path or p.startswith(path + "/"))

        while commit.parent is not None and state(repo.history[commit.parent]) == state(commit):
            commit = repo.history[commit.parent]
        return commit

    def _folders(self, commit: Commit) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)}

    def _tree(self, repo: Repo, commit: Commit, folder: str, query: dict) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        folders = self._folders(commit)
        if folder and folder not in folders:
            raise _Reply(404, f"{folder} does not exist on {commit.oid}", {"X-Error-Code": "EntryNotFound"})
        prefix = folder + "/" if folder else ""
        names = [p for p in sorted(folders | set(commit.files)) if p.startswith(prefix)]
        if not recursive:
            names = [p for p in names if "/" not in p[len(prefix):]]
        # folders first, as the Hub lists them; everything on one page (no Link header)
        entries = [self._entry(repo, commit, p, expand) for p in names]
        self._send(200, sorted(entries, key=lambda e: (e["type"] != "directory", e["path"])))

    def _paths_info(self, repo: Repo, commit: Commit, paths: list[str], expand: bool) -> None:
        folders = self._folders(commit)
        known = [p.strip("/") for p in paths if p.strip("/") in commit.files or p.strip("/") in folders]
        self._send(200, [self._entry(repo, commit, p, expand) for p in known])

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit_of(repo, revision)
        blob = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.oid}
        if blob is None:
            raise _Reply(404, "Entry not found", {**headers, "X-Error-Code": "EntryNotFound"})
        if blob.sha256 is None:
            return self._send_bytes(blob.data, {**headers, "ETag": f'"{blob.oid}"'})
        # an LFS file: redirect to the storage host (another origin: the client drops its token)
        headers.update({"ETag": f'"{blob.oid}"', "X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size),
                        "Location": f"{self.storage_url}/lfs/{blob.sha256}"})
        self._send(302, body=b"", headers=headers)


class _Server:
    def __init__(self, handler: type, **attributes):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.requests: list = []
        self.server.RequestHandlerClass = type(handler.__name__, (handler,), {**attributes, "record": self.requests, "endpoint": self.url})
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def set(self, **attributes) -> None:
        for key, value in attributes.items():
            setattr(self.server.RequestHandlerClass, key, value)


class LocalHub:
    """``with LocalHub(tokens={"hf_x"}) as hub: ... hub.endpoint ... hub.state.repos ... hub.storage_requests``"""

    def __init__(self, tokens: set[str] | None = None, read_only_tokens: set[str] | None = None):
        self.state = HubState(tokens=set(tokens or ()), read_only_tokens=set(read_only_tokens or ()))
        self._storage = _Server(_StorageHandler, state=self.state)
        self._hub = _Server(_HubHandler, state=self.state)
        self._hub.set(storage_url=self._storage.url)
        self.state.requests = self._hub.requests
        self.endpoint = self._hub.url
        self.storage_url = self._storage.url

    @property
    def storage_requests(self) -> list[tuple[str, str, str | None]]:
        return self._storage.requests

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.state.repos[(repo_type, repo_id)]

    def __enter__(self) -> "LocalHub":
        self._storage.thread.start()
        self._hub.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for server in (self._hub, self._storage):
            server.server.shutdown()
            server.server.server_close()
