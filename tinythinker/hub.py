"""The only module that talks to the Hugging Face Hub: push an artifact folder as a repo.

Any artifact folder goes up as it is: a data set folder (``README.md`` + ``data/``) or a preference
set becomes a dataset repo, a folder with ``config.json`` at its top (a checkpoint) a model repo.
The token comes from ``HF_TOKEN`` or the saved login (``hf auth login``); it is handed to
huggingface_hub and never written, printed or put in an error message. ``HF_ENDPOINT`` points the
client at another Hub (tests run a small one on 127.0.0.1).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import TinyThinkerError

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PushPlan:
    folder: Path
    repo_id: str
    repo_type: str  # "dataset" or "model"
    private: bool
    files: tuple[tuple[str, int], ...]  # (path in repo, size in bytes), in upload order

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


@dataclass(frozen=True)
class PushResult:
    plan: PushPlan
    url: str
    commit: str


def repo_type_of(folder: str | Path) -> str:
    """``model`` for a checkpoint folder (``config.json`` at its top), else ``dataset``."""
    return "model" if (Path(folder) / "config.json").is_file() else "dataset"


def plan_push(folder: str | Path, repo_id: str, *, private: bool = False) -> PushPlan:
    """What :func:`push_folder` would upload: the folder's files as huggingface_hub selects them."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    folder = Path(folder)
    if not _REPO_ID_RE.match(repo_id):
        raise TinyThinkerError(f"{repo_id!r} is not a Hub repo id; use ORG/NAME (letters, digits, '.', '_', '-')")
    if not folder.is_dir():
        raise TinyThinkerError(f"{folder}: no such folder; pass the folder `tinythinker build` (or train, reflect) wrote")
    paths = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    kept = list(filter_repo_objects(paths, ignore_patterns=DEFAULT_IGNORE_PATTERNS))
    if not kept:
        raise TinyThinkerError(f"{folder}: the folder is empty; nothing to push")
    return PushPlan(folder, repo_id, repo_type_of(folder), private, tuple((p, paths[p].stat().st_size) for p in kept))


def _scrub(text: str, token: str | None) -> str:
    text = " ".join(str(text).split())
    return text.replace(token, "***") if token else text


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
) -> PushResult:
    """Create the repo (if needed) and upload the folder in one commit; -> its URL and commit id."""
    import huggingface_hub
    from huggingface_hub import HfApi

    plan = plan_push(folder, repo_id, private=private)
    token = huggingface_hub.get_token()
    if not token:
        raise TinyThinkerError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        url = api.create_repo(repo_id, repo_type=plan.repo_type, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(plan.folder),
            repo_type=plan.repo_type,
            commit_message=commit_message or f"Upload {plan.folder.name} with tinythinker",
        )
    except Exception as error:  # noqa: BLE001 - HTTP/auth/network errors become one user-facing line
        raise TinyThinkerError(
            f"push to {repo_id} failed ({error.__class__.__name__}: {_scrub(error, token)[:300]}); "
            "check the repo id, your token's write access and your network"
        ) from None
    return PushResult(plan, str(url), commit.oid)
