"""The agent's side of the trial host (agent/runtime/host.py): one tmux session per run, ``wan-<run>-host``, running
the run's trials that can share a process, where the playbook asks for it (``measurement.share_process``).

It is started when the first such trial is asked for, and stopped before a trial that needs the GPU to itself in a
process of its own (torchrun, the official runtime's environment), when the run's graph stops for any reason, and by
`wan-agent stop`; after ``IDLE_S`` without a trial it stops by itself, so that an agent killed outright does not leave
it holding the GPU. Its queue, log and exit code are in ``<run>/host/``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from agent import telemetry, tmux
from agent.files import atomic_path
from agent.runtime import parallel
from agent.runtime.config import TrialConfig

logger = logging.getLogger(__name__)

QUEUE = "host"  # <run>/host
REQUEST, STOP, CURRENT = "next", "stop", "current"  # asked for, asked to stop, the trial it runs now


def refusal(config: TrialConfig, python: str = sys.executable) -> str | None:
    """Why this trial must run in a process of its own, or None where a host can run it as a new process would."""
    if parallel.world_size(config.knobs) > 1:
        return "it runs several ranks under torchrun"
    if config.knobs.runtime != "diffusers":
        return f"runtime {config.knobs.runtime} runs in an environment of its own"
    if config.host_memory_GiB is not None:
        return "its address-space cap (host_memory_GiB) would stay on the host"
    if python != sys.executable:
        return f"it runs with {python}, not the agent's Python"
    return None


def session(run_id: str) -> str:
    return tmux.session_name(run_id, "host")


def serves(trial_dir: Path, python: str) -> bool:
    """Whether the run's host runs this trial: its playbook asks for it, and nothing about the trial refuses it."""
    config = TrialConfig.model_validate_json((trial_dir / "trial.json").read_text())
    return config.measurement.share_process and refusal(config, python) is None


def running(run_id: str, run_dir: Path, trial_dir: Path) -> bool:
    """Whether the host is running this trial now (an agent that restarted re-attaches to it)."""
    current = run_dir / QUEUE / CURRENT
    try:
        return tmux.is_running(session(run_id)) and Path(current.read_text().strip()) == trial_dir / "trial.json"
    except FileNotFoundError:
        return False


def submit(run_id: str, run_dir: Path, trial_dir: Path, python: str, env: dict[str, str]) -> None:
    """Ask the run's host for the trial, starting the host first where none runs."""
    queue = run_dir / QUEUE
    if not tmux.is_running(session(run_id)) or (queue / STOP).exists():
        stop(run_id, run_dir)  # one that is stopping: let it end first
        queue.mkdir(parents=True, exist_ok=True)
        for name in (REQUEST, STOP, CURRENT, "exit_code"):
            (queue / name).unlink(missing_ok=True)
        argv = [python, "-m", "agent.runtime.host", str(queue)]
        tmux.start(session(run_id), argv, run_dir, queue / "host.log", queue / "exit_code", extra_env=env)
    with atomic_path(queue / REQUEST) as request:
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
