"""Downloads from ModelScope (``MODELSCOPE_ENDPOINT``, else modelscope.cn) through the ``modelscope`` client.

What the library does on a crash (modelscope 1.40 / modelscope-hub 0.5): a file is written to
``<file>.incomplete`` and renamed when whole; a later download resumes from the bytes already there (HTTP
Range), and checks each file's sha256 (three tries, then ``FileIntegrityError``). ``verify.py`` checks again
and records it, as for every hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.sources.listing import HubUnreachable, Listing, RemoteFile, public, unsafe_paths

NAME = "modelscope"
DEFAULT_ENDPOINT = "https://www.modelscope.cn"


def endpoint() -> str:
    return os.environ.get("MODELSCOPE_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def cache_root(cache_dir: Path) -> Path:
    return cache_dir / "modelscope"


def repo_folder(cache_dir: Path, repo: str) -> Path:
    return cache_root(cache_dir) / "models" / repo.replace("/", "--")


def _environment() -> None:
    # Outside Alibaba Cloud the "intra-cloud" probe only costs a timeout; the log level must be a number.
    os.environ.setdefault("MODELSCOPE_DOWNLOAD_INTRA_CLOUD", "false")
    os.environ.setdefault("MODELSCOPE_LOG_LEVEL", "30")


def _errors() -> tuple[type[BaseException], ...]:
    import requests
    from modelscope_hub.errors import HubError

    return (HubError, requests.RequestException, OSError)


def _unreachable(err: BaseException) -> HubUnreachable:
    return HubUnreachable(f"{NAME} ({public(endpoint())}): {type(err).__name__}: {str(err).splitlines()[0][:300]}")


def _client():
    """The modelscope client's API module; a missing client is one more unreachable source, not a crash."""
    _environment()
    try:
        import modelscope  # noqa: F401  (snapshot_download)
        import modelscope_hub
    except ImportError as err:
        raise HubUnreachable(f"{NAME}: its client is not installed ({err}); `pip install modelscope`") from err
    return modelscope_hub


def list_files(repo: str, revision: str, allow: list[str]) -> Listing:
    modelscope_hub = _client()
    from huggingface_hub.utils import filter_repo_objects

    try:
        entries = modelscope_hub.HubApi(endpoint=endpoint()).list_repo_files(repo, "model", revision=revision, recursive=True)
    except _errors() as err:
        raise _unreachable(err) from err
    entries = [e for e in entries if not e.is_dir]
    if bad := unsafe_paths([e.path for e in entries]):
        raise HubUnreachable(f"{NAME} ({public(endpoint())}): {repo} lists paths outside the repo, e.g. {bad[0]!r}")
    chosen = set(filter_repo_objects([e.path for e in entries], allow_patterns=allow))
    files = tuple(RemoteFile(path=e.path, size=e.size, sha256=e.sha256) for e in entries if e.path in chosen)
    return Listing(hub=NAME, endpoint=public(endpoint()), repo=repo, revision=revision, files=files)


def download(listing: Listing, cache_dir: Path) -> Path:
    _client()
    from modelscope import snapshot_download

    try:
        path = snapshot_download(
            listing.repo,
            revision=listing.revision,
            cache_dir=str(cache_root(cache_dir)),
            allow_patterns=[f.path for f in listing.files],
            endpoint=endpoint(),
        )
    except _errors() as err:
        raise _unreachable(err) from err
    return Path(path)


def partials(cache_dir: Path, repo: str) -> list[Path]:
    return []  # ModelScope resumes its own *.incomplete files: keep them


def snapshot(cache_dir: Path, listing: Listing) -> Path:
    return repo_folder(cache_dir, listing.repo) / "snapshots" / listing.revision
