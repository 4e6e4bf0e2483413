"""The official Wan2.2 repository checked out at the pinned commit, for the official runtime's trials, where the
server can reach it; else the wan22 package of the runtime's environment (the same files at that pin).

Fetched once per commit into the runs' cache (that commit alone, depth 1, no prompt for credentials, a time limit),
checked (HEAD is the pinned commit, wan/modules/model.py is there), moved into place whole, and reused after. What
went wrong (no git, no network, a remote without that commit) is recorded, and the trials use the package.
``WAN_AGENT_OFFICIAL_CODE`` names a checkout of one's own instead; ``WAN_AGENT_OFFICIAL_REPO`` another remote (a
mirror), or ``none`` to use the package without trying; ``WAN_AGENT_OFFICIAL_COMMIT`` another commit (the journal
then says it is not the pinned one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from agent.runtime.official.support import CHECKOUT_ENV, OFFICIAL_COMMIT, OFFICIAL_REPO

REPO_ENV = "WAN_AGENT_OFFICIAL_REPO"
COMMIT_ENV = "WAN_AGENT_OFFICIAL_COMMIT"
TIMEOUT_ENV = "WAN_AGENT_GIT_TIMEOUT_S"
MODEL_FILE = Path("wan") / "modules" / "model.py"


class CheckoutFailed(RuntimeError):
    pass


def _git(cwd: Path, *args: str, timeout_s: float) -> str:
    env = os.environ | {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}  # never wait on a password prompt
    # A stalled transfer (below 1 kB/s for 20 s) ends before the time limit does.
    argv = ["git", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=20", *args]
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise CheckoutFailed("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise CheckoutFailed(f"`git {args[0]}` took longer than {timeout_s:.0f} s (set {TIMEOUT_ENV})") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["?"]
        said = next((line for line in lines if line.startswith("fatal:")), lines[-1])  # git's reason, not its advice
        raise CheckoutFailed(f"`git {args[0]}` failed: {said[:300]}")
    return done.stdout.strip()


def _head(folder: Path) -> str | None:
    try:
        return _git(folder, "rev-parse", "HEAD", timeout_s=30) if (folder / ".git").exists() else None
    except CheckoutFailed:
        return None


def checkout(cache: Path, repo: str, commit: str, timeout_s: float) -> tuple[Path, bool]:
    """``repo`` at ``commit`` under ``cache`` (fetched, or reused when there), and whether it was reused."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise CheckoutFailed(f"commit {commit!r} is not a full 40-hex-digit id")
    if repo.startswith("-"):
        raise CheckoutFailed(f"{REPO_ENV}={repo!r} is not a repository address")
    target = cache / f"wan2.2-{commit[:12]}"
    if _head(target) == commit and (target / MODEL_FILE).is_file():
        return target, True
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".wan2.2-", dir=cache))
    try:
        _git(scratch, "init", "-q", timeout_s=30)
        _git(scratch, "fetch", "-q", "--depth", "1", repo, commit, timeout_s=timeout_s)
        _git(scratch, "checkout", "-q", "FETCH_HEAD", timeout_s=timeout_s)
        if _head(scratch) != commit:
            raise CheckoutFailed(f"{repo} gave {_head(scratch)} for {commit}")
        if not (scratch / MODEL_FILE).is_file():
            raise CheckoutFailed(f"{repo} at {commit[:12]} has no {MODEL_FILE}: not the Wan2.2 repository")
        shutil.rmtree(target, ignore_errors=True)  # a half-made or other checkout under the name
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target, False


def resolve(cache: Path) -> dict:
    """Where the official runtime's code comes from, for run.json and the journal: ``code`` (a checkout for the
    trials) when there is one, ``code_from`` always, ``code_error`` when the checkout was tried and failed."""
    given = os.environ.get(CHECKOUT_ENV)
    if given:
        return {"code": given, "code_from": f"{CHECKOUT_ENV} (a checkout of one's own)"}
    repo = os.environ.get(REPO_ENV, OFFICIAL_REPO)
    if repo == "none":
        return {"code_from": f"the wan22 package ({REPO_ENV}=none)"}
    commit = os.environ.get(COMMIT_ENV, OFFICIAL_COMMIT)
    try:
        path, reused = checkout(cache, repo, commit, float(os.environ.get(TIMEOUT_ENV, "120")))
    except CheckoutFailed as err:
        return {"code_from": "the wan22 package", "code_error": f"{repo} at {commit[:12]}: {err}"}
    return {"code": str(path), "code_from": f"{repo} at {commit[:12]} ({'reused' if reused else 'fetched'})"}
