"""One repo from the first hub that serves it: list, check the disk, download with progress, verify, record.

Hubs are tried in order (the Hugging Face Hub or its mirror first, ModelScope second); one that is down, times
out or lacks the repo is noted and the next is tried. A file that fails verification is fetched again once;
if it fails again the fetch stops (a hub serving bad bytes is not something to fall back from silently).
With ``HF_HUB_OFFLINE=1`` nothing is asked of any network: files verified by an earlier fetch are used as they are.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.sources import hub, modelscope, verify
from agent.sources.listing import HubUnreachable, Listing

logger = logging.getLogger(__name__)
HUBS = {hub.NAME: hub, modelscope.NAME: modelscope}
PROGRESS_EVERY_S = float(os.environ.get("WAN_AGENT_PROGRESS_S", 10))


class FetchError(ValueError):
    """A download that cannot go on; the message names what was tried and the ways on."""


@dataclass(frozen=True)
class Wanted:
    """One repo: where each hub publishes it, in the order to try, and which files of it."""

    label: str
    spec: str  # what `wan-agent fetch` takes to fetch it (named in messages)
    places: tuple[tuple[str, str, str], ...]  # (hub name, repo, revision)
    allow: tuple[str, ...]
    required: tuple[str, ...] = ()  # files the listing must hold (else it is not the repo we think)


@dataclass
class Fetched:
    root: Path
    listing: Listing
    fetched_bytes: int
    seconds: float
    tried: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """What the journal says of this download (never a token: the clients read those themselves)."""
        rate = self.fetched_bytes / self.seconds / 1e6 if self.seconds > 0 and self.fetched_bytes else None
        return {
            "hub": self.listing.hub,
            "endpoint": self.listing.endpoint,
            "repo": self.listing.repo,
            "revision": self.listing.revision,
            "files": len(self.listing.files),
            "size_bytes": self.listing.size,
            "fetched_bytes": self.fetched_bytes,
            "seconds": round(self.seconds, 2),
            "MB_per_s": round(rate, 1) if rate else None,
            # Files checked against a checksum; the rest (the hub gave none) by their size alone.
            "checksummed": sum(1 for f in self.listing.files if f.sha256 or f.git_sha1),
            "tried_before": self.tried,
            "root": str(self.root),
        }


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _verified_copy(wanted: Wanted, cache: Path) -> Fetched | None:
    for name, repo, revision in wanted.places:
        found = verify.verified_listing(cache, name, repo, revision, list(wanted.allow))
        if found:
            return Fetched(found[1], found[0], 0, 0.0)
    return None


def fetch(wanted: Wanted, cache: Path, ways_on: str) -> Fetched:
    if offline():
        if copy := _verified_copy(wanted, cache):
            logger.info("%s: offline, using the verified copy in %s", wanted.label, copy.root)
            copy.tried.append("offline (HF_HUB_OFFLINE=1): the verified cache")
            return copy
        raise FetchError(
            f"{wanted.label}: offline (HF_HUB_OFFLINE=1) and not complete in the cache {cache}; "
            f"fetch it once with a network (`wan-agent fetch {wanted.spec} --cache {cache}`){ways_on}"
        )
    tried: list[str] = []
    for name, repo, revision in wanted.places:
        module = HUBS[name]
        try:
            listing = module.list_files(repo, revision, list(wanted.allow))
            absent = [path for path in wanted.required if path not in {f.path for f in listing.files}]
            if not listing.files or absent:
                raise HubUnreachable(f"{name} ({listing.endpoint}): {repo}@{revision} lists no {absent or list(wanted.allow)}")
            return _fetch_from(module, listing, cache, revision, ways_on, tried)
        except HubUnreachable as err:
            logger.warning("%s: %s; trying the next source", wanted.label, err)
            tried.append(str(err))
    if copy := _verified_copy(wanted, cache):  # no hub answers, but the files are here and were verified
        logger.warning("%s: no source reachable; using the copy verified earlier in %s", wanted.label, copy.root)
        copy.tried.extend([*tried, "no source reachable: the verified cache"])
        return copy
    raise FetchError(
        f"{wanted.label}: no source could serve it. Tried:\n  " + "\n  ".join(tried) + "\nWays on: a mirror (HF_ENDPOINT=...), "
        f"`modelscope:REPO`, files already on disk (`local:PATH`), or no download at all (--synthetic){ways_on}"
    )


def _fetch_from(module, listing: Listing, cache: Path, asked: str, ways_on: str, tried: list[str]) -> Fetched:
    with _locked(cache, f"{listing.hub}-{listing.repo.replace('/', '--')}"):
        snapshot = module.snapshot(cache, listing)
        if verify.all_verified(snapshot, listing, cache):  # as verified before: no request, no hashing
            return Fetched(snapshot, listing, 0, 0.0, tried)
        for partial in module.partials(cache, listing.repo):
            logger.info("removing %s, left by a download that was killed", partial)
            partial.unlink(missing_ok=True)
        try:
            needed = verify.check_space(listing, snapshot, module.cache_root(cache), ways_on)
        except verify.NoSpace as err:
            raise FetchError(str(err)) from None
        logger.info(
            "%s@%s from %s: %d files, %.2f GB, %.2f GB to fetch",
            listing.repo, listing.revision[:12], listing.endpoint, len(listing.files), listing.size / 1e9, needed / 1e9,
        )  # fmt: skip
        start = time.monotonic()
        with _progress(module.repo_folder(cache, listing.repo), listing.repo, needed):
            root = module.download(listing, cache)
            problems = verify.verify(root, listing, cache, asked)
            if problems:
                for path, problem in problems.items():
                    logger.warning("%s/%s failed verification (%s); fetching it again", listing.repo, path, problem)
                    verify.forget(root, path)
                root = module.download(listing, cache)
                problems = verify.verify(root, listing, cache, asked)
        if problems:
            for path in problems:
                verify.forget(root, path)
            raise FetchError(
                f"{listing.repo}: corrupted twice from {listing.endpoint} (deleted, never used): "
                + "; ".join(f"{path}: {problem}" for path, problem in problems.items())
                + ". A proxy or the hub serves bad bytes: try another endpoint (HF_ENDPOINT=..., modelscope:REPO)"
            )
        return Fetched(root, listing, needed, time.monotonic() - start, tried)


@contextmanager
def _locked(cache: Path, name: str) -> Iterator[None]:
    """One download of a repo at a time: a second waits, then finds the files there."""
    locks = cache / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _bytes_under(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                try:
                    total += os.path.getsize(path)
                except OSError:
                    pass  # renamed or removed meanwhile
    return total


@contextmanager
def _progress(folder: Path, label: str, total: int) -> Iterator[None]:
    """Log the whole download's bytes, rate and ETA every few seconds (the clients draw a bar per file)."""
    done = threading.Event()
    start_bytes, start = _bytes_under(folder), time.monotonic()

    def report() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            got = max(0, _bytes_under(folder) - start_bytes)
            rate = got / max(time.monotonic() - start, 1e-6)
            eta = int((total - got) / rate) if rate > 0 and total > got else 0
            logger.info(
                "%s: %.2f / %.2f GB (%.0f %%), %.1f MB/s, ETA %d:%02d:%02d",
                label, got / 1e9, total / 1e9, 100 * got / max(total, 1), rate / 1e6, eta // 3600, eta // 60 % 60, eta % 60,
            )  # fmt: skip

    thread = threading.Thread(target=report, daemon=True)
    if total:
        thread.start()
    try:
        yield
    finally:
        done.set()
