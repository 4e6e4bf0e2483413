"""Environments of their own, for runtimes that pin other packages than the agent's (the official Wan2.2 code):
a venv built from a lock file (``name==version`` lines, complete: installed with ``--no-deps``), from a wheelhouse
when one is given (``--no-index --find-links DIR``: no network at all), recorded (``freeze.txt``, what pip
installed) and reused for as long as the lock is unchanged.

An environment counts as made only once its ``freeze.txt`` is written, last: one cut short (a crash, a failed
install) is removed and made again, never used half-built. Builders of the same lock take turns (a file lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.files import write_text_atomic

logger = logging.getLogger(__name__)


class EnvironmentFailed(RuntimeError):
    """An environment that could not be made; the message names the lock and what pip said."""


@dataclass(frozen=True)
class Environment:
    path: Path
    lock_sha256: str
    reused: bool

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def freeze(self) -> list[str]:
        return (self.path / "freeze.txt").read_text().splitlines()


def ensure(lock: Path, root: Path, wheelhouse: Path | None = None, extends: Path | None = None) -> Environment:
    """The environment for ``lock`` under ``root``, made if it is not there yet. With ``extends`` (another environment's
    site-packages folder) it sees that environment's packages behind its own, so the lock lists only what it adds or
    pins otherwise: a runtime's extra packages without a second copy of torch."""
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    # The same lock over another base is another environment.
    key = digest[:16] if extends is None else hashlib.sha256(f"{digest} {extends}".encode()).hexdigest()[:16]
    target = root / f"env-{key}"
    if (target / "freeze.txt").is_file():
        return Environment(target, digest, reused=True)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".env-{key}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if (target / "freeze.txt").is_file():  # made by whoever held the lock before us
            return Environment(target, digest, reused=True)
        if target.exists():
            logger.info("removing %s, an environment left half-made", target)
            shutil.rmtree(target)
        try:
            _make(target, lock, wheelhouse, extends)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return Environment(target, digest, reused=False)


def _run(command: list[str], lock: Path) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise EnvironmentFailed(f"making the environment for {lock} failed: {' '.join(command[2:5])} ...:\n  {tail}")
    return done.stdout


def _make(target: Path, lock: Path, wheelhouse: Path | None, extends: Path | None) -> None:
    logger.info("making an environment from %s in %s%s", lock, target, f" (wheelhouse {wheelhouse})" if wheelhouse else "")
    _run([sys.executable, "-m", "venv", str(target)], lock)
    python = str(target / "bin" / "python")
    if extends is not None:  # that folder joins sys.path after the environment's own, its .pth files run (editable installs)
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], lock).strip()
        (Path(site) / "wan-agent-extends.pth").write_text(f"import site; site.addsitedir({str(extends)!r})\n")
    source = ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse else []
    install = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", *source, "-r", str(lock)]
    _run(install, lock)
    freeze = _run([python, "-m", "pip", "freeze", "--disable-pip-version-check"], lock)
    write_text_atomic(target / "freeze.txt", freeze)  # last: the mark of an environment made whole
