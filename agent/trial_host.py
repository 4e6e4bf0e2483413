"""The agent's side of the trial host (agent/runtime/host.py): one tmux session per run, ``wan-<run>-host``, running
the run's trials that can share a process, where the playbook asks for it (``measurement.share_process``).

It is started as a run begins where the run's baseline can run there (its imports overlap provisioning), else when
the first such trial is asked for. It is stopped before a trial that needs the GPU to itself in a process of its own
(torchrun, the official runtime's environment), when the run's graph stops for any reason, and by `wan-agent stop`;
after ``IDLE_S`` without a trial it stops by itself, so that an agent killed outright does not leave it holding the
GPU (a long download before the first trial outlasts it: that trial starts another). Its queue, log and exit code are
in ``<run>/host/``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from agent import telemetry, tmux
from agent.files import atomic_path
from agent.playbook import Playbook
from agent.runtime.config import TrialConfig
from agent.runtime.sharing import CURRENT, REQUEST, STOP, refusal, refusal_of

logger = logging.getLogger(__name__)

QUEUE = "host"  # <run>/host


def session(run_id: str) -> str:
    return tmux.session_name(run_id, "host")


def asked(trial_dir: Path, python: str) -> tuple[bool, bool]:
    """Whether the trial's playbook asks for shared processes, and whether the run's host runs this trial (nothing
    about it refuses that)."""
    config = TrialConfig.model_validate_json((trial_dir / "trial.json").read_text())
    wanted = config.measurement.share_process
    return wanted, wanted and refusal(config, python) is None


def _names(queue: Path, name: str, trial_dir: Path) -> bool:
    try:
        return Path((queue / name).read_text().strip()) == trial_dir / "trial.json"
    except FileNotFoundError:
        return False


def running(run_id: str, run_dir: Path, trial_dir: Path) -> bool:
    """Whether the host is running this trial now, or has it asked for (an agent that restarted re-attaches to it)."""
    queue = run_dir / QUEUE
    return tmux.is_running(session(run_id)) and any(_names(queue, name, trial_dir) for name in (CURRENT, REQUEST))


def started_at(run_dir: Path) -> float:
    """When the host took its current trial (the deadline counts from there), or now if it has not yet."""
    try:
        return (run_dir / QUEUE / CURRENT).stat().st_mtime
    except FileNotFoundError:
        return time.time()


def start(run_id: str, run_dir: Path, python: str, env: dict[str, str]) -> None:
    """Start the run's host where none runs (or one is stopping); it waits for its first trial."""
    queue = run_dir / QUEUE
    if tmux.is_running(session(run_id)) and not (queue / STOP).exists():
        return
    stop(run_id, run_dir)  # one that is stopping: let it end first
    queue.mkdir(parents=True, exist_ok=True)
    for name in (REQUEST, STOP, CURRENT, "exit_code"):
        (queue / name).unlink(missing_ok=True)
    argv = [python, "-m", "agent.runtime.host", str(queue)]
    tmux.start(session(run_id), argv, run_dir, queue / "host.log", queue / "exit_code", extra_env=env)


def start_early(run_id: str, run_dir: Path, book: Playbook, python: str, env: dict[str, str]) -> bool:
    """Start the host as a run begins, where its baseline will run there: the host imports and starts up (12 s on an
    H100, benchmarks/results/h100-2026-11-27e) while the agent provisions and fetches. Whether it was started."""
    limits = book.limits
    if not book.measurement.share_process or refusal_of(
        book.baseline, limits.host_memory_GiB, limits.gpu_memory_fraction, python
    ):
        return False
    start(run_id, run_dir, python, env)
    return True


def submit(run_id: str, run_dir: Path, trial_dir: Path, python: str, env: dict[str, str]) -> None:
    """Ask the run's host for the trial, starting the host first where none runs (or one is stopping)."""
    if running(run_id, run_dir, trial_dir):  # asked for already (an agent that restarted between two steps)
        return
    start(run_id, run_dir, python, env)
    with atomic_path(run_dir / QUEUE / REQUEST) as request:
        request.write_text(str(trial_dir / "trial.json"))


def stop(run_id: str, run_dir: Path, wait_s: float = 30.0) -> bool:
    """Stop the run's host (between trials; killed past ``wait_s``); whether one was running."""
    name = session(run_id)
    if not tmux.is_running(name):
        return False
    (run_dir / QUEUE).mkdir(parents=True, exist_ok=True)
    (run_dir / QUEUE / STOP).touch()
    deadline = time.monotonic() + wait_s
    while tmux.is_running(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    if tmux.is_running(name):
        logger.warning("trial host %s did not stop within %.0f s: killing it", name, wait_s)
        tmux.kill(name)
    return True


def pids(run_id: str) -> set[int]:
    """The host's processes (its session's tree): on its GPU they are the run's own, not another's."""
    return {p.pid for p in telemetry.process_tree(tmux.pane_pid(session(run_id)))}
