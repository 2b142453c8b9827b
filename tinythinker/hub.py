"""Where tinythinker meets the Hugging Face Hub: push an artifact folder as a repo, pin what is read.

Any artifact folder goes up as it is: a data set folder (``README.md`` + ``data/``) or a preference
set becomes a dataset repo, a folder with ``config.json`` at its top (a checkpoint) a model repo.
Reading goes through ``datasets`` and ``transformers``; before it, :func:`pin` turns the revision a
user names (a branch, a tag, a commit id; default ``main``) into the commit id it points at, so a
run reads one commit throughout and its card or summary names it. Every Hub failure becomes one
:class:`TinyThinkerError` line naming the repo and the fix (:func:`hub_error`).

The token comes from ``HF_TOKEN`` or the saved login (``hf auth login``); it is handed to
huggingface_hub and never written, printed or put in an error message. ``HF_ENDPOINT`` points the
client at another Hub (tests run a small one on 127.0.0.1).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tinythinker.artifacts import OWNER_MARK
from tinythinker.errors import TinyThinkerError

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_READ_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")  # "gpt2" is one too
# Files of the repo's previous version that a push removes unless the folder has them again: a data
# set's parquet files (named by their content, so a rebuild renames them) and a checkpoint's weights
# (a stale model.safetensors would load in place of new shards). Other files (a picture added to the
# card on the Hub) stay.
STALE_PATTERNS = {"dataset": ["data/**"], "model": ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json"]}


@dataclass(frozen=True)
class PushPlan:
    folder: Path
    repo_id: str
    repo_type: str  # "dataset" or "model"
    private: bool
    files: tuple[tuple[str, int], ...]  # (path in repo, size in bytes), in upload order
    skipped: tuple[str, ...] = ()  # links that point outside the folder: never uploaded (they would upload their target)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


@dataclass(frozen=True)
class PushResult:
    plan: PushPlan
    url: str
    commit: str
    changed: bool = True  # False: the repo already held exactly these files (no commit was made)


def repo_type_of(folder: str | Path) -> str:
    """``model`` for a checkpoint folder (``config.json`` at its top), else ``dataset``."""
    return "model" if (Path(folder) / "config.json").is_file() else "dataset"


def plan_push(folder: str | Path, repo_id: str, *, private: bool = False) -> PushPlan:
    """What :func:`push_folder` would upload: the folder's files as huggingface_hub selects them."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    try:  # the Hub's own rules (no '--' or '..', no leading '-' or '.', at most 96 characters, ...), before anything is sent
        validate_repo_id(repo_id)
        valid = bool(_REPO_ID_RE.match(repo_id))
    except HFValidationError as error:
        valid, why = False, f" ({' '.join(str(error).split())})"
    if not valid:
        raise TinyThinkerError(f"{repo_id!r} is not a Hub repo id{why if '/' in repo_id else ''}; use ORG/NAME (letters, digits, "
                               "'.', '_', '-'; no '--' or '..')")
    if not folder.is_dir():
        raise TinyThinkerError(f"{folder}: no such folder; pass the folder `tinythinker build` (or train, reflect) wrote")
    inside = folder.resolve()
    paths, outside = {}, []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            outside.append(name)
        elif path.is_file() and not any(part in outside for part in _parents(name)):
            paths[name] = path
    kept = [p for p in filter_repo_objects(paths, ignore_patterns=DEFAULT_IGNORE_PATTERNS) if p.split("/")[-1] != OWNER_MARK]
    if not kept:
        raise TinyThinkerError(f"{folder}: the folder is empty; nothing to push")
    return PushPlan(folder, repo_id, repo_type_of(folder), private, tuple((p, paths[p].stat().st_size) for p in kept),
                    tuple(outside))


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _scrub(text: str, token: str | None) -> str:
    text = " ".join(str(text).split())
    return text.replace(token, "***") if token else text


def endpoint() -> str:
    """The Hub the client talks to (``HF_ENDPOINT``, else huggingface.co)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_hub_id(source, repo_type: str = "dataset") -> bool:
    """True for ``ORG/NAME`` that is not a local path (for a model also a bare ``NAME`` such as gpt2)."""
    text = str(source)
    pattern = _READ_ID_RE if repo_type == "model" else _REPO_ID_RE
    return bool(pattern.match(text)) and not Path(text).exists()


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _is_network_error(error: BaseException) -> bool:
    """A connection refused, a timeout, a DNS failure: in huggingface_hub's HTTP library or below it."""
    from huggingface_hub.utils import OfflineModeIsEnabled

    for item in _chain(error):
        if isinstance(item, (ConnectionError, TimeoutError, OfflineModeIsEnabled)):
            return True
        names = " ".join(cls.__name__ for cls in type(item).__mro__)
        if any(word in names for word in ("ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError",
                                          "ConnectionError", "LocalEntryNotFoundError")):
            return True
    return False


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of the first response in ``error``'s chain, None when no response came."""
    for item in _chain(error):
        status = getattr(getattr(item, "response", None), "status_code", None)
        if status is not None:
            return status
    return None


def hub_error(error: BaseException, repo_id: str, *, repo_type: str = "dataset", revision: str | None = None,
              doing: str = "read") -> TinyThinkerError:
    """One line for a failed Hub call about ``repo_id``: what went wrong and what to do; never the token."""
    import huggingface_hub
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    token = huggingface_hub.get_token()
    kind = f"{repo_type} repo" if repo_type in ("dataset", "model") else "repo"
    where = endpoint()
    chain = list(_chain(error))
    names = {type(item).__name__ for item in chain}
    status = _http_status(error)
    message = " ".join(str(item) for item in chain)
    if any(isinstance(item, RevisionNotFoundError) for item in chain) or "RevisionNotFound" in message:
        return TinyThinkerError(f"{repo_id}: the {kind} has no revision {revision or 'main'!r} on {where}; pass an existing "
                                "branch, tag or commit id with --revision (or leave --revision out for main)")
    if any(isinstance(item, GatedRepoError) for item in chain):
        return TinyThinkerError(f"{repo_id}: the {kind} is gated on {where}; accept its conditions on its page with the "
                                "account of your token (HF_TOKEN or `hf auth login`)")
    if status == 401 and "Invalid credentials" in message:
        return TinyThinkerError(f"{repo_id}: {where} refused your token (401 invalid credentials); set HF_TOKEN to a valid "
                                "token or run `hf auth login`")
    not_found = any(isinstance(item, RepositoryNotFoundError) for item in chain) or "DatasetNotFoundError" in names
    if not_found or status in (401, 404) and doing == "read":
        if token:
            return TinyThinkerError(f"{repo_id}: no such {kind} on {where}, or your token cannot read it; check the id "
                                    "(ORG/NAME) and the token's access, or pass a local folder")
        return TinyThinkerError(f"{repo_id}: no such {kind} on {where}, or it is private and no token is set; check the "
                                "id (ORG/NAME), or set HF_TOKEN (or run `hf auth login`) with read access to it")
    if _offline():
        return TinyThinkerError(f"{repo_id}: no local folder of that name, and no Hub {kind} of that id in the local cache "
                                "(HF_HUB_OFFLINE=1 keeps the Hub out of reach); check the path, or run once with the Hub "
                                "reachable (HF_HUB_OFFLINE unset) to cache it")
    if _is_network_error(error):
        return TinyThinkerError(f"{repo_id}: cannot reach the Hub at {where} ({type(error).__name__}); check your network "
                                "and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use what is in the local cache")
    detail = _scrub(error, token)[:200]
    if isinstance(error, HfHubHTTPError) and status is not None:
        return TinyThinkerError(f"{repo_id}: {where} answered {status} to the {doing} ({detail})")
    return TinyThinkerError(f"{repo_id}: cannot {doing} the {kind} ({type(error).__name__}: {detail})")


def _cache_ref(repo_id: str, repo_type: str, revision: str) -> Path:
    """``refs/<revision>`` of a repo in the Hub cache: the file huggingface_hub keeps a branch's commit in."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "refs" / revision


def _cached_commit(repo_id: str, repo_type: str, revision: str) -> str | None:
    """The commit the local Hub cache last saw ``revision`` at, if any."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        commit = _cache_ref(repo_id, repo_type, revision).read_text().strip()
    except OSError:
        return None
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _remember_commit(repo_id: str, repo_type: str, revision: str, commit: str) -> None:
    """Write ``refs/<revision>`` as huggingface_hub does when it downloads by branch name (files read by
    commit id leave none), so that offline the same revision finds the same commit. Best effort."""
    if revision == commit:
        return
    ref = _cache_ref(repo_id, repo_type, revision)
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.exists() or ref.read_text().strip() != commit:
            ref.write_text(commit)
    except OSError:
        pass


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else bool(constants.HF_HUB_OFFLINE)


def pin(source, revision: str | None = None, *, repo_type: str = "dataset") -> str | None:
    """The commit id that ``revision`` (default: the main branch) of the Hub repo ``source`` points at.

    None for a local folder (a ``revision`` given with one is an error). The answer is kept in the Hub
    cache (``refs/<revision>``, as huggingface_hub keeps it): offline (``HF_HUB_OFFLINE=1``), or with the
    Hub unreachable, the commit the cache recorded is used (offline with none: the revision as given).
    Failures are one :class:`TinyThinkerError` line."""
    from huggingface_hub import HfApi

    text = str(source)
    if not is_hub_id(text, repo_type):
        if revision is not None:
            what = "a local folder" if Path(text).exists() else "not a Hub id"
            raise TinyThinkerError(f"--revision {revision} names a Hub commit, but {text} is {what}; leave "
                                   "--revision out or pass a Hub id (ORG/NAME)")
        return None
    wanted = revision or "main"
    if _offline():
        return _cached_commit(text, repo_type, wanted) or revision
    try:
        info = HfApi(endpoint=endpoint()).repo_info(text, repo_type=repo_type, revision=revision)
    except Exception as error:  # noqa: BLE001 - every Hub failure becomes one line
        cached = _cached_commit(text, repo_type, wanted) if _is_network_error(error) else None
        if cached:
            return cached
        raise hub_error(error, text, repo_type=repo_type, revision=revision) from None
    if not info.sha:
        raise TinyThinkerError(f"{text}: {endpoint()} did not say which commit {wanted!r} is; pass a commit id with --revision")
    _remember_commit(text, repo_type, wanted, info.sha)
    return info.sha


def _xet_in_use() -> bool:
    """Whether huggingface_hub uploads through Xet here: hf_xet installed and HF_HUB_DISABLE_XET unset."""
    try:
        from huggingface_hub.utils._runtime import is_xet_available
    except ImportError:  # a huggingface_hub before Xet
        return False
    return bool(is_xet_available())


def _xet_refused(api, repo_id: str, repo_type: str) -> bool:
    """True when hf_xet is in use and the Hub does not hand out Xet write tokens (a Hub-compatible
    server without Xet storage): the upload of any LFS file then fails with a 'network error'."""
    from huggingface_hub.utils import build_hf_headers, get_session

    if not _xet_in_use():
        return False
    url = f"{api.endpoint}/api/{repo_type}s/{repo_id}/xet-write-token/main"
    try:
        response = get_session().get(url, headers=build_hf_headers(token=api.token), timeout=10)
    except Exception:  # noqa: BLE001 - unreachable: not this diagnosis
        return False
    return response.status_code in (404, 405, 501)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
) -> PushResult:
    """Create the repo (if needed) and upload the folder in one commit that also deletes the files of
    the previous version it no longer has (:data:`STALE_PATTERNS`); -> its URL and commit id."""
    import huggingface_hub
    from huggingface_hub import HfApi
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    plan = plan_push(folder, repo_id, private=private)
    token = huggingface_hub.get_token()
    if not token:
        raise TinyThinkerError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    api = HfApi(endpoint=endpoint(), token=token)
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # the command shows its own status; an error stays the one line on stderr
    try:
        url = api.create_repo(repo_id, repo_type=plan.repo_type, private=private, exist_ok=True)
        head = api.repo_info(repo_id, repo_type=plan.repo_type).sha
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(plan.folder),
            repo_type=plan.repo_type,
            commit_message=commit_message or f"Upload {plan.folder.name} with tinythinker",
            # exactly the plan: the marker file, links out of the folder and what huggingface_hub skips stay home
            allow_patterns=[glob.escape(path) for path, _ in plan.files],
            delete_patterns=STALE_PATTERNS[plan.repo_type],
        )
    except Exception as error:  # noqa: BLE001 - HTTP/auth/network errors become one user-facing line
        if _xet_refused(api, repo_id, plan.repo_type):
            raise TinyThinkerError(
                f"push to {repo_id} failed: {api.endpoint} does not serve Xet storage, and hf_xet (installed here) "
                "uploads large and binary files only through Xet; set HF_HUB_DISABLE_XET=1 to upload them "
                "through LFS, then push again"
            ) from None
        status = _http_status(error)
        if status == 401:
            raise TinyThinkerError(
                f"push to {repo_id} failed: {api.endpoint} refused your token (401, not a valid token); set HF_TOKEN "
                "to a valid token with write access, or run `hf auth login`, then push again"
            ) from None
        if status == 403:
            namespace = repo_id.split("/")[0]
            raise TinyThinkerError(
                f"push to {repo_id} failed: your token may not write to {namespace!r} on {api.endpoint} (403, a "
                f"read-only token or another account's namespace); use a token with write access to {namespace!r} "
                "(a fine-grained one needs write access to that namespace's repos), or push to a namespace you own"
            ) from None
        raise TinyThinkerError(
            f"push to {repo_id} failed ({error.__class__.__name__}: {_scrub(error, token)[:300]}); "
            "check the repo id, your token's write access and your network"
        ) from None
    finally:
        if not bars_were_off:
            enable_progress_bars()
    return PushResult(plan, str(url), commit.oid, changed=commit.oid != head)
