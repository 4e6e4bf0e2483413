"""Trust in downloaded files: room on the disk before a byte is fetched, every file checked against the hub's
size and checksum before first use, and a record of that check so that later runs (offline ones too) need not
hash 100+ GB again unless a file changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.files import atomic_path
from agent.sources.listing import Listing, RemoteFile

GB = 1e9


def margin_bytes() -> int:
    """Room a download must leave free for the run itself (journals, videos, Inductor's cache)."""
    return int(float(os.environ.get("WAN_AGENT_DISK_MARGIN_GB", 2)) * GB)


class NoSpace(RuntimeError):
    pass


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds ``path`` (or would, once made)."""
    for parent in [path, *path.parents]:
        if parent.exists():
            return shutil.disk_usage(parent).free
    return 0


def _present(root: Path, remote: RemoteFile) -> bool:
    path = root / remote.path
    return path.is_file() and (not remote.size or path.stat().st_size == remote.size)  # a size of 0: the hub did not say


def missing(root: Path, listing: Listing) -> list[RemoteFile]:
    return [f for f in listing.files if not _present(root, f)]


def check_space(listing: Listing, root: Path, where: Path, ways_on: str) -> int:
    """Raise ``NoSpace`` unless the files not yet on disk fit on ``where``'s filesystem with the margin; return the
    bytes to fetch."""
    todo = missing(root, listing)
    needed, margin = sum(f.size or 0 for f in todo), margin_bytes()
    free = free_bytes(where)
    if todo and needed + margin > free:
        raise NoSpace(
            f"{listing.repo}: {len(todo)} files need {needed / GB:.2f} GB (+{margin / GB:.0f} GB kept free: "
            f"WAN_AGENT_DISK_MARGIN_GB), but only {free / GB:.1f} GB is free on the filesystem of {where}. Nothing was "
            f"downloaded. Fix: free space there, or point the cache at a bigger disk (--cache DIR or WAN_AGENT_CACHE; "
            f"HF_HUB_CACHE for the Hub's files){ways_on}"
        )
    return needed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_sha1(path: Path) -> str:
    data = path.read_bytes()  # only small (non-LFS) files have a git blob id
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _problem(root: Path, remote: RemoteFile) -> str | None:
    path = root / remote.path
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if remote.size and size != remote.size:
        return f"size {size} B, the hub says {remote.size} B"
    if remote.sha256:
        got = _sha256(path)
        return None if got == remote.sha256 else f"sha256 {got[:16]}…, the hub says {remote.sha256[:16]}…"
    if remote.git_sha1:
        got = _git_sha1(path)
        return None if got == remote.git_sha1 else f"git blob id {got[:12]}…, the hub says {remote.git_sha1[:12]}…"
    return None  # the hub gave no checksum: the size is all there is to check


def _record_path(cache: Path, listing: Listing) -> Path:
    revision = re.sub(r"[^A-Za-z0-9._-]", "_", listing.revision)  # a branch name may hold '/'
    return cache / "verified" / listing.hub / f"{listing.repo.replace('/', '--')}@{revision}.json"


def _stamp(path: Path, remote: RemoteFile) -> list:
    """What a verified file is remembered by: its size and mtime on disk, and the checksum it was verified against
    (so that a file the hub has since changed is checked again)."""
    stat = path.stat()  # follows the Hub cache's symlinks to the blob
    return [stat.st_size, stat.st_mtime_ns, remote.sha256 or remote.git_sha1]


def _still_verified(root: Path, remote: RemoteFile, checked: dict) -> bool:
    path = root / remote.path
    return path.is_file() and checked.get(remote.path) == _stamp(path, remote)


def recorded(cache: Path, listing: Listing) -> dict:
    """The record of earlier checks of this repo at this revision ({} when there is none or it is unreadable)."""
    try:
        record = json.loads(_record_path(cache, listing).read_text())
        Listing.from_dict(record["listing"])
        return record if isinstance(record.get("files"), dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def all_verified(root: Path, listing: Listing, cache: Path) -> bool:
    """Every listed file is on disk as it was when verified: nothing to fetch, nothing to hash."""
    checked = recorded(cache, listing).get("files", {})
    return all(_still_verified(root, f, checked) for f in listing.files)


def verify(root: Path, listing: Listing, cache: Path, asked_revision: str) -> dict[str, str]:
    """Check every listed file under ``root``; return {path: problem} for those that fail. Files verified before
    and unchanged since (same size and mtime) are not hashed again. The record is kept under ``cache/verified``,
    with where the files live and the revision the user asked for (offline runs look them up there)."""
    record = recorded(cache, listing)
    checked = record.get("files", {})
    todo = [f for f in listing.files if not _still_verified(root, f, checked)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL
        problems = dict(zip((f.path for f in todo), pool.map(lambda f: _problem(root, f), todo), strict=True))
    remote = {f.path: f for f in listing.files}
    for path, problem in problems.items():
        if problem is None:
            checked[path] = _stamp(root / path, remote[path])
        else:
            checked.pop(path, None)
    target = _record_path(cache, listing)
    target.parent.mkdir(parents=True, exist_ok=True)
    known = {f.path: f for f in (Listing.from_dict(record["listing"]).files if "listing" in record else ())}
    known |= {f.path: f for f in listing.files}  # a narrower fetch keeps what a wider one verified
    merged = Listing(listing.hub, listing.endpoint, listing.repo, listing.revision, tuple(known.values()))
    record = {"listing": merged.to_dict(), "root": str(root), "asked_revision": asked_revision, "files": checked}
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return {path: problem for path, problem in problems.items() if problem}


def verified_listing(cache: Path, hub: str, repo: str, revision: str, allow: list[str]) -> tuple[Listing, Path] | None:
    """For offline use: a listing recorded by an earlier verified download (``revision`` as the user gave it or
    as the hub resolved it) whose files all still stand as verified, with their folder; else None."""
    from huggingface_hub.utils import filter_repo_objects

    candidates = []
    for path in (cache / "verified" / hub).glob(f"{repo.replace('/', '--')}@*.json"):
        try:
            data = json.loads(path.read_text())
            listing = Listing.from_dict(data["listing"])
            root, checked = Path(data["root"]), dict(data["files"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        exact = revision in (listing.revision, data.get("asked_revision"))
        if exact or revision in ("main", "master"):  # a branch: the newest verified commit of it will do offline
            candidates.append((exact, path.stat().st_mtime, listing, root, checked))
    for _exact, _mtime, listing, root, checked in sorted(candidates, key=lambda c: (c[0], c[1]), reverse=True):
        wanted = set(filter_repo_objects([f.path for f in listing.files], allow_patterns=allow))
        files = tuple(f for f in listing.files if f.path in wanted)
        if files and all(_still_verified(root, f, checked) for f in files):
            return Listing(listing.hub, listing.endpoint, listing.repo, listing.revision, files), root
    return None


def forget(root: Path, path: str) -> None:
    """Remove one cached file (and, in the Hub's cache, the blob its link points to) so that it is fetched again.
    Nothing outside the repo's cache folder is touched, whatever the path or the link says."""
    link = root / path
    repo_folder = root.parent.parent.resolve()  # CACHE/models--ORG--NAME (Hub) or CACHE/models/ORG--NAME (ModelScope)
    if not link.parent.resolve().is_relative_to(root.resolve()):
        return
    blob = link.resolve() if link.is_symlink() else None
    link.unlink(missing_ok=True)
    if blob is not None and blob.is_relative_to(repo_folder):
        blob.unlink(missing_ok=True)
