"""A small Hugging Face Hub on 127.0.0.1 that speaks the HTTP calls huggingface_hub 2.x makes to
create a repo and upload a folder (tests point ``HF_ENDPOINT`` at it).

Routes (as in huggingface_hub's hf_api.py / _commit_api.py):
  POST /api/repos/create                              {name, organization, type?, visibility?}
  POST /api/validate-yaml                             README metadata check before an upload
  POST /api/{type}s/{org}/{name}/preupload/{rev}      -> every file "regular" (base64 in the commit)
  POST /api/{type}s/{org}/{name}/commit/{rev}         NDJSON: header + one line per file
Large-file (LFS / Xet) storage is not served: the server never asks for it. Every request is
recorded (method, path, Authorization header) and any other route answers 404.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_REPO_ROUTE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)/(preupload|commit)/([^/?]+)")


@dataclass
class Repo:
    repo_type: str
    visibility: str | None
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


@dataclass
class HubState:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (type, "org/name") -> repo
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, auth header
    tokens: set[str] = field(default_factory=set)  # when set, only these tokens are accepted


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    endpoint: str

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        self.state.requests.append(("GET", self.path, self.headers.get("Authorization")))
        self._send(404, {"error": f"no route GET {self.path}"})

    def do_POST(self):
        self.state.requests.append(("POST", self.path, self.headers.get("Authorization")))
        body = self._body()
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or (self.state.tokens and auth[7:] not in self.state.tokens):
            return self._send(401, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/api/repos/create":
            return self._create(json.loads(body))
        if self.path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        match = _REPO_ROUTE.match(self.path)
        if not match:
            return self._send(404, {"error": f"no route POST {self.path}"})
        plural, org, name, action, _revision = match.groups()
        repo = self.state.repos.get((plural[:-1], f"{org}/{name}"))
        if repo is None:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._send(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
            ]})
        return self._commit(repo, plural, f"{org}/{name}", body)

    def _create(self, payload: dict) -> None:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.endpoint}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:  # the Hub's 409 carries the repo's url too
            return self._send(409, {"error": "You already created this repo", "url": url})
        self.state.repos[(repo_type, repo_id)] = Repo(repo_type, payload.get("visibility"))
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _commit(self, repo: Repo, plural: str, repo_id: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._send(400, {"error": "commit payload must start with a header"})
        for line in lines[1:]:
            if line["key"] != "file":
                return self._send(400, {"error": f"this test Hub only takes regular files, got {line['key']}"})
            repo.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = hashlib.sha1(body).hexdigest()
        repo.commits.append(oid)
        prefix = "" if plural == "models" else f"{plural}/"
        self._send(200, {"commitUrl": f"{self.endpoint}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})


class LocalHub:
    """``with LocalHub() as hub: ... hub.endpoint ... hub.state``"""

    def __init__(self, tokens: set[str] | None = None):
        self.state = HubState(tokens=set(tokens or ()))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._server.RequestHandlerClass = type("Handler", (_Handler,), {"state": self.state, "endpoint": self.endpoint})
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
