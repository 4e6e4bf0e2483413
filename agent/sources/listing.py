"""What a hub says a repo holds at one revision: the files, their sizes and checksums, and who said it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "files"} | {"files": [f.to_dict() for f in self.files]}

    @classmethod
    def from_dict(cls, data: dict) -> Listing:
        files = tuple(RemoteFile(**f) for f in data["files"])
        return cls(**{k: data[k] for k in ("hub", "endpoint", "repo", "revision")}, files=files)


class HubUnreachable(RuntimeError):
    """A hub could not list or serve a repo (down, timed out, refused, not found there); try the next one."""
