"""Downloads from the Hugging Face Hub (or the mirror ``HF_ENDPOINT`` names) through ``huggingface_hub``.

Files land in the library's own cache layout (``models--ORG--NAME/blobs`` + ``snapshots/SHA``), so ``hf`` tools
see them. What the library does on a crash (huggingface_hub 2.4): a file is written to a process-unique
``*.incomplete`` name and renamed into place when whole, so a half file is never under a name a run trusts;
a killed download starts that file again from zero (finished files are kept). It does not check sha256:
``verify.py`` does.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from pathlib import Path

from agent.sources.listing import HubUnreachable, Listing, RemoteFile, public, unsafe_paths

NAME = "huggingface"
DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = float(os.environ.get("WAN_AGENT_HUB_TIMEOUT_S", 30))  # per API call, connect then each read


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def cache_root(cache_dir: Path) -> Path:
    """Where Hub downloads live: ``HF_HUB_CACHE`` when the user set one (files already fetched by `hf download`
    are reused), else under the agent's cache."""
    return Path(os.environ["HF_HUB_CACHE"]) if os.environ.get("HF_HUB_CACHE") else cache_dir / "huggingface"


def repo_folder(cache_dir: Path, repo: str) -> Path:
    return cache_root(cache_dir) / f"models--{repo.replace('/', '--')}"


def _errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return (HfHubHTTPError, LocalEntryNotFoundError, *_transport_errors(), OSError)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's own errors (connection refused, timed out), whichever httpx huggingface_hub is built on."""
    module = importlib.import_module(type(_client()).__module__.split(".")[0])
    return (module.HTTPError,)


@cache
def _client():
    """huggingface_hub's shared HTTP client, made to time out. Its calls pass ``timeout=None`` (model_info, the
    tree listing), which would let a hub that accepts a connection and never answers hang the run instead of
    falling back: a request hook gives every unset timeout ``TIMEOUT_S``."""
    from huggingface_hub import get_session, set_client_factory
    from huggingface_hub.utils import _http

    def bounded(request) -> None:
        asked = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: asked.get(k) or TIMEOUT_S for k in ("connect", "read", "write", "pool")}

    def with_timeouts():
        client = _http.default_client_factory()
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), bounded]}
        return client

    set_client_factory(with_timeouts)
    return get_session()


def _unreachable(err: BaseException) -> HubUnreachable:
    return HubUnreachable(f"{NAME} ({public(endpoint())}): {type(err).__name__}: {str(err).splitlines()[0][:300]}")


def list_files(repo: str, revision: str, allow: list[str]) -> Listing:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    _client()
    api = HfApi(endpoint=endpoint())
    try:
        commit = api.model_info(repo, revision=revision).sha or revision
        entries = [e for e in api.list_repo_tree(repo, revision=commit, recursive=True) if isinstance(e, RepoFile)]
    except _errors() as err:
        raise _unreachable(err) from err
    if bad := unsafe_paths([e.path for e in entries]):
        raise HubUnreachable(f"{NAME} ({public(endpoint())}): {repo} lists paths outside the repo, e.g. {bad[0]!r}")
    chosen = set(filter_repo_objects([e.path for e in entries], allow_patterns=allow))
    files = tuple(
        RemoteFile(path=e.path, size=e.size, sha256=e.lfs.sha256 if e.lfs else None, git_sha1=None if e.lfs else e.blob_id)
        for e in entries
        if e.path in chosen
    )
    return Listing(hub=NAME, endpoint=public(endpoint()), repo=repo, revision=commit, files=files)


def download(listing: Listing, cache_dir: Path) -> Path:
    """Fetch the listed files (those already in the cache are kept); return the snapshot folder."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            listing.repo,
            revision=listing.revision,
            cache_dir=cache_root(cache_dir),
            allow_patterns=[f.path for f in listing.files],
            endpoint=endpoint(),
            max_workers=4,
        )
    except _errors() as err:
        raise _unreachable(err) from err
    return Path(path)


def partials(cache_dir: Path, repo: str) -> list[Path]:
    """Files a killed download left behind (``ETAG.UNIQUE.incomplete``): never used again, only taking space. One
    whose etag's lock another process holds (an `hf download` sharing HF_HUB_CACHE) is still being written: kept."""
    from filelock import FileLock, Timeout

    stale = []
    locks = cache_root(cache_dir) / ".locks" / repo_folder(cache_dir, repo).name
    for partial in sorted((repo_folder(cache_dir, repo) / "blobs").glob("*.incomplete")):
        lock = FileLock(str(locks / f"{partial.name.split('.')[0]}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        lock.release()
        stale.append(partial)
    return stale


def snapshot(cache_dir: Path, listing: Listing) -> Path:
    return repo_folder(cache_dir, listing.repo) / "snapshots" / listing.revision
