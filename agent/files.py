"""Small file helpers: every file the agent writes appears whole or not at all, and a disk that takes no
more writes (full, over quota, read-only) is named as such instead of failing whatever touched it last."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.state import RunStopped

STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
STORAGE_MESSAGES = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "disk is full",
    "readonly database",
)


class StorageError(RunStopped):
    """The runs directory takes no more writes."""


def storage_problem(err: BaseException | None) -> str | None:
    """What the disk refused, if ``err`` (or an exception behind it) is a full, over-quota or read-only disk."""
    while err is not None:
        if isinstance(err, StorageError):
            return str(err)
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return f"{err.strerror}" + (f" ({err.filename})" if err.filename else "")
        if isinstance(err, sqlite3.OperationalError) and any(m in str(err) for m in STORAGE_MESSAGES):
            return f"SQLite: {err}"
        err = err.__cause__ or err.__context__
    return None


def check_room(directory: Path, need_bytes: int) -> None:
    """Raise StorageError unless ``directory`` has ``need_bytes`` free and takes a write (a read-only mount has space)."""
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise StorageError(f"{directory} has {free / 2**20:.1f} MiB free; a trial writes up to {need_bytes / 2**20:.1f} MiB")
    probe = Path(directory) / ".write-check"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        if err.errno in STORAGE_ERRNOS:
            raise StorageError(f"{directory}: {err.strerror}") from err
        raise


def _writer() -> str:
    """A temporary name of this writer's own: two processes or threads writing one file never share a temporary."""
    return f"{os.getpid()}-{threading.get_ident() % 10**6}-{secrets.token_hex(2)}"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (same suffix, for writers that pick a format by it); once the block
    ends it is fsynced and renamed over ``path``, so a reader sees the whole file or none; on an error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{_writer()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, then rename it over ``path``."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file is absent."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
