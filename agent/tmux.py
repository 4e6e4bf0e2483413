"""Trial sessions on tmux, through libtmux: start, wait with a deadline and an idle timeout, kill.

A trial runs as ``bash -c`` around the worker's argv (each argument quoted), its output teed into
``stdout.log`` and its exit status written to ``exit_code`` when it ends. Sessions live on their own
tmux socket (``WAN_AGENT_TMUX_SOCKET``, default ``wan-agent``) and outlive the agent, so a resumed
agent finds a trial still running, or finished, and does not start it again.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import libtmux

logger = logging.getLogger(__name__)

SOCKET_ENV = "WAN_AGENT_TMUX_SOCKET"
# Only these reach a trial (with what the agent adds: PYTHONPATH, the Inductor cache): the tmux server may have
# been started by another process with another environment, and secrets (HF_TOKEN, ...) have no business in a
# trial, its log or a command line. Prefixes cover the CUDA, NCCL, PyTorch and BLAS settings a GPU server needs.
PASSED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "WAN_AGENT_OFFICIAL_CODE",  # a checkout of the official Wan2.2 code (agent/runtime/official/modules.py)
)
PASSED_PREFIXES = ("CUDA_", "NCCL_", "NVIDIA_", "TORCH", "PYTORCH_", "TRITON_", "OMP_", "MKL_", "OPENBLAS_")
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")


def passed(variable: str) -> bool:
    """Whether ``variable`` may reach a trial: on the allow-list, and never one named like a secret."""
    if any(word in variable.upper() for word in SECRET_WORDS):
        return False
    return variable in PASSED_ENV or variable.startswith(PASSED_PREFIXES)


# $1 log, $2 exit-code file, then the argv. pipefail makes the status the worker's, not tee's.
_WRAPPER = 'set -o pipefail; log=$1; rc=$2; shift 2; "$@" 2>&1 | tee -a "$log"; echo $? > "$rc.tmp"; mv "$rc.tmp" "$rc"'

Outcome = Literal["exited", "timeout", "idle", "lost"]


@dataclass(frozen=True)
class SessionResult:
    outcome: Outcome  # exited: see exit_code; timeout/idle: killed by us; lost: session gone with no exit code
    exit_code: int | None
    wall_s: float


def server() -> libtmux.Server:
    return libtmux.Server(socket_name=os.environ.get(SOCKET_ENV, "wan-agent"))


def session_name(run_id: str, trial: str) -> str:
    """tmux forbids '.' and ':' in names; keep letters, digits, '-' and '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"wan-{run_id}-{trial}")


def _session(name: str) -> libtmux.Session | None:
    try:
        return server().sessions.get(session_name=name, default=None)
    except libtmux.exc.LibTmuxException:  # no server running
        return None


def is_running(name: str) -> bool:
    return _session(name) is not None


def start(name: str, argv: list[str], cwd: Path, log: Path, exit_file: Path, extra_env: dict[str, str] | None = None) -> None:
    """Start ``argv`` in a new detached session ``name``; its output goes to ``log``. Its environment is the
    allow-list and ``extra_env``, nothing else: ``env -i`` empties what tmux would hand down (the server's own
    environment, which is its first client's), and the server's global environment is scrubbed as well, so that
    a window a person opens in the session does not inherit a token either."""
    env = {key: value for key, value in os.environ.items() if passed(key)}
    env.update(extra_env or {})
    assignments = [f"{key}={value}" for key, value in env.items()]
    command = shlex.join(["env", "-i", *assignments, "bash", "-c", _WRAPPER, "trial", str(log), str(exit_file), *argv])
    srv = server()
    srv.new_session(session_name=name, window_command=command, start_directory=str(cwd), attach=False)
    scrub(srv)
    logger.info("trial session %s started (attach: tmux -L %s attach -t %s)", name, srv.socket_name, name)


def scrub(srv: libtmux.Server) -> None:
    """Remove every variable outside the allow-list from the tmux server's global environment."""
    for line in srv.cmd("show-environment", "-g").stdout:
        variable = line.removeprefix("-").split("=", 1)[0]
        if variable and not passed(variable):
            srv.cmd("set-environment", "-g", "-u", variable)


def pane_pid(name: str) -> int | None:
    session = _session(name)
    if session is None:
        return None
    try:
        pane = session.active_window.active_pane
    except libtmux.exc.LibTmuxException:  # the session ended between the two questions
        return None
    return int(pane.pane_pid) if pane is not None and pane.pane_pid else None


def _created_at(name: str) -> float:
    session = _session(name)
    return float(session.session_created) if session is not None and session.session_created else time.time()


def kill(name: str, grace_s: float = 5.0) -> None:
    """Stop the session's whole process group (TERM, then KILL after ``grace_s``), then the session."""
    pid = pane_pid(name)
    if pid is not None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _group_alive(pid):
                time.sleep(0.1)
            if not _group_alive(pid):
                break
    session = _session(name)
    if session is not None:
        session.kill()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def read_exit_code(exit_file: Path) -> int | None:
    try:
        return int(exit_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def wait(
    name: str,
    log: Path,
    exit_file: Path,
    deadline_s: float,
    idle_timeout_s: float,
    on_poll: Callable[[], None] | None = None,
    poll_s: float = 0.5,
    started: float | None = None,
) -> SessionResult:
    """Wait for the session to end, or for ``exit_file`` where the session runs on (a trial host). The deadline
    counts from ``started`` (default: the session's creation, so that it holds across an agent restart); the idle
    timeout counts from the last growth of ``log``."""
    started = _created_at(name) if started is None else started
    last_size, last_growth = -1, time.time()
    while True:
        code = read_exit_code(exit_file)
        if code is not None:
            return SessionResult("exited", code, time.time() - started)
        if not is_running(name):
            code = read_exit_code(exit_file)  # it may have ended between the two checks
            return SessionResult("exited" if code is not None else "lost", code, time.time() - started)
        now = time.time()
        size = log.stat().st_size if log.exists() else 0
        if size != last_size:
            last_size, last_growth = size, now
        if now - started > deadline_s:
            logger.warning("trial %s passed its %.0f s deadline: killing it", name, deadline_s)
            kill(name)
            return SessionResult("timeout", None, now - started)
        if now - last_growth > idle_timeout_s:
            logger.warning("trial %s printed nothing for %.0f s: killing it", name, idle_timeout_s)
            kill(name)
            return SessionResult("idle", None, now - started)
        if on_poll is not None:
            on_poll()
        time.sleep(poll_s)
