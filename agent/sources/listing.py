"""What a hub says a repo holds at one revision: the files, their sizes and checksums, and who said it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the repo root
    size: int
    sha256: str | None  # LFS files on the Hub, every file on ModelScope
    git_sha1: str | None = None  # the Hub's blob id of a small (non-LFS) file

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Listing:
    hub: str  # "huggingface" | "modelscope"
    endpoint: str
    repo: str
    revision: str  # as resolved by the hub (a commit sha on the Hub)
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "files"} | {"files": [f.to_dict() for f in self.files]}

    @classmethod
    def from_dict(cls, data: dict) -> Listing:
        files = tuple(RemoteFile(**f) for f in data["files"])
        return cls(**{k: data[k] for k in ("hub", "endpoint", "repo", "revision")}, files=files)


class HubUnreachable(RuntimeError):
    """A hub could not list or serve a repo (down, timed out, refused, not found there); try the next one."""


def unsafe_paths(paths: list[str]) -> list[str]:
    """Paths a listing must never name: absolute, climbing out of the repo, or odd enough to mean something else."""
    return [p for p in paths if not p or p.startswith("/") or "\\" in p or "\0" in p or ".." in p.split("/")]


def public(url: str) -> str:
    """``url`` without credentials or query (a mirror's URL may carry a key): what journals and logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
