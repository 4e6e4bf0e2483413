"""Runs one trial directory end to end: worker in tmux, telemetry alongside, outcome read back.

Idempotent, so that a resumed agent never runs a trial twice: a trial whose ``exit_code`` exists is
only read back; one whose session is still running is re-attached; only a trial with neither is
started (again). A worker killed from outside (a signal, a dead tmux server) is run once more, its
first log kept as ``stdout.attempt1.log``. The trial gets its configuration in ``trial.json``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import agent
from agent import gpu_map, telemetry, tmux, trial_host
from agent.files import read_json, write_json_atomic
from agent.runtime import parallel
from agent.runtime.config import TrialConfig
from agent.runtime.official.support import CHECKOUT_ENV

logger = logging.getLogger(__name__)

_WORKER_TIME = re.compile(r"^\d\d:\d\d:\d\d\s+")  # the worker's own timestamp; ours is printed anyway
PROJECT_ROOT = Path(agent.__file__).resolve().parent.parent
MAX_ATTEMPTS = 2  # a worker killed from outside is run once more, never again
STALE_OUTPUTS = ("result.json", "exit_code", "video.mp4", "frames.npy")


def prepare(trial_dir: Path, config: TrialConfig) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(trial_dir / "trial.json", config.model_dump())


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def forget(trial_dir: Path) -> None:
    """Remove what an attempt left, so that the trial is started afresh (not read back) next time."""
    for name in STALE_OUTPUTS:
        (trial_dir / name).unlink(missing_ok=True)


def set_aside(trial_dir: Path, label: str) -> None:
    """Forget an attempt, keeping its log and telemetry beside the next attempt's (``stdout.<label>.log``, then
    ``stdout.<label>-2.log``, ... when the same thing happens again)."""
    forget(trial_dir)
    records = (trial_dir / "stdout.log", trial_dir / "telemetry.csv")
    names = (label if n == 1 else f"{label}-{n}" for n in range(1, 1000))
    name = next(n for n in names if not any(r.with_name(f"{r.stem}.{n}{r.suffix}").exists() for r in records))
    for record in records:
        if record.exists():
            record.replace(record.with_name(f"{record.stem}.{name}{record.suffix}"))


def will_start(run_id: str, trial_dir: Path) -> bool:
    """Whether ``execute`` would start a worker (the trial neither finished nor still running)."""
    finished = tmux.read_exit_code(trial_dir / "exit_code") is not None
    own_session = tmux.is_running(tmux.session_name(run_id, trial_dir.name))
    return not finished and not own_session and not trial_host.running(run_id, _run_dir(trial_dir), trial_dir)


def _run_dir(trial_dir: Path) -> Path:
    return trial_dir.parent.parent  # trial_dir sits in <run>/trials/ or <run>/generations/


def interpreter(environments: dict | None, runtime: str) -> str:
    """The Python a trial of ``runtime`` runs with: its own environment's (provision made it), else the agent's."""
    python = ((environments or {}).get(runtime) or {}).get("python")
    return python if python and Path(python).exists() else sys.executable


def runtime_env(environments: dict | None, runtime: str) -> dict[str, str]:
    """What a trial of ``runtime`` needs set from its environment's record: the official code's checkout, if any."""
    code = ((environments or {}).get(runtime) or {}).get("code")
    return {CHECKOUT_ENV: code} if code and Path(code).is_dir() else {}


def worker_env(run_dir: Path, runtime_vars: dict[str, str]) -> dict[str, str]:
    """What a worker process needs set (a trial's, or `wan-agent serve`'s): this project importable, CUDA's GPU order
    NVML's, and compiled kernels cached per run (unless TORCHINDUCTOR_CACHE_DIR said where when the agent started),
    not in shared /tmp."""
    pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    cache = agent.INDUCTOR_CACHE_AT_START or str(run_dir / "inductor-cache")
    return {"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_CACHE_DIR": cache, **gpu_map.DEVICE_ORDER,
            **runtime_vars}  # fmt: skip


def _start(session: str, trial_dir: Path, python: str, runtime_vars: dict[str, str]) -> None:
    forget(trial_dir)  # left by an attempt whose session was lost
    knobs = TrialConfig.model_validate_json((trial_dir / "trial.json").read_text()).knobs
    argv = [*parallel.launcher(python, knobs), str(trial_dir / "trial.json")]  # torchrun for a trial of several ranks
    env = worker_env(_run_dir(trial_dir), runtime_vars)
    tmux.start(session, argv, trial_dir, trial_dir / "stdout.log", trial_dir / "exit_code", extra_env=env)


def _died(result: tmux.SessionResult, trial_dir: Path) -> str | None:
    """Why the worker ended without finishing, if it was killed from outside (not a failure of the trial itself)."""
    if result.outcome == "lost":
        return "its tmux session vanished without an exit code (tmux server killed, or the machine restarted)"
    code = result.exit_code
    if result.outcome == "exited" and code is not None and code >= 128 and not (trial_dir / "result.json").exists():
        return f"the worker was killed by signal {code - 128} before writing its result"
    return None


def execute(
    run_id: str,
    trial_dir: Path,
    deadline_s: float,
    idle_timeout_s: float,
    poll_s: float = 0.5,
    telemetry_interval_s: float = 0.5,
    gpu: int | list[int] | None = 0,
    python: str = sys.executable,
    runtime_vars: dict[str, str] | None = None,
) -> dict:
    """Run (or re-attach to, or read back) the trial in ``trial_dir``; return its outcome as plain data. ``gpu`` is
    the NVML index of the GPU it computes on (gpu_map.trial_gpu), or of each rank's (gpu_map.rank_gpus), watched by
    the sampler; ``python`` runs the worker,
    with ``runtime_vars`` (runtime_env) set. Where the playbook lets trials share a process and this one can, the run's
    trial host runs it (agent/trial_host.py); before one that cannot, the host is stopped."""
    run_dir, (shares, hosted) = _run_dir(trial_dir), trial_host.asked(trial_dir, python)
    session = trial_host.session(run_id) if hosted else tmux.session_name(run_id, trial_dir.name)
    log, exit_file = trial_dir / "stdout.log", trial_dir / "exit_code"
    reattached, reruns, started = False, [], None
    exit_code = tmux.read_exit_code(exit_file)
    if exit_code is not None:
        logger.info("trial %s already finished (exit %d): reading its result", trial_dir.name, exit_code)
        result = tmux.SessionResult("exited", exit_code, 0.0)
        summary = read_json(trial_dir / "telemetry.json") or {"note": "trial finished while the agent was not watching"}
    else:
        reattached = trial_host.running(run_id, run_dir, trial_dir) if hosted else tmux.is_running(session)
        if reattached and hosted:  # its deadline counts from when the host began it
            started = trial_host.started_at(run_dir)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            sampler = telemetry.Sampler(trial_dir / "telemetry.csv", lambda: tmux.pane_pid(session), telemetry_interval_s, gpu)
            progress = _Progress(trial_dir.name, log)
            try:  # an interrupt from here on, even mid-start, stops the trial with the agent
                if reattached:
                    logger.info("trial %s is still running in tmux session %s: re-attaching", trial_dir.name, session)
                elif hosted:
                    forget(trial_dir)
                    trial_host.submit(run_id, run_dir, trial_dir, python, worker_env(run_dir, runtime_vars or {}))
                    started = time.time()
                else:
                    if shares:  # a run whose trials share a process, but not this one: it needs the GPU to itself
                        trial_host.stop(run_id, run_dir)
                    _start(session, trial_dir, python, runtime_vars or {})
                sampler.start()
                result = tmux.wait(
                    session, log, exit_file, deadline_s, idle_timeout_s, on_poll=progress.show, poll_s=poll_s, started=started
                )
            except KeyboardInterrupt:
                sampler.stop()  # before its CSV is set aside with the attempt
                _interrupted(session, trial_dir)
                raise
            finally:
                summary = sampler.stop()
            died = _died(result, trial_dir)
            if died is None or attempt == MAX_ATTEMPTS:
                break
            logger.warning("trial %s: %s; running it once more", trial_dir.name, died)
            reruns.append(died)
            set_aside(trial_dir, f"attempt{attempt}")
            reattached = False
        if reattached:
            summary["partial"] = "the agent restarted during this trial: telemetry covers only the part it watched"
    write_json_atomic(trial_dir / "telemetry.json", summary)
    outcome: dict[str, Any] = {
        "session": {"outcome": result.outcome, "exit_code": result.exit_code, "wall_s": result.wall_s},
        "result": read_json(trial_dir / "result.json"),
        "telemetry": summary,
        "reattached": reattached,
        "reruns": reruns,
    }
    if result.outcome != "exited" or result.exit_code != 0:
        outcome["log_tail"] = _log_tail(log)
        if hosted and result.exit_code is None:  # the host itself ended: what it said is in its own log
            outcome["log_tail"] += "\n" + _log_tail(run_dir / trial_host.QUEUE / "host.log")
    return outcome


def _interrupted(session: str, trial_dir: Path) -> None:
    """The agent is being stopped (Ctrl-C, SIGTERM, `wan-agent stop`): stop the trial with it, so that the GPU is
    free for the next run; resume starts the trial again (this attempt's log kept as ``stdout.interrupted.log``)."""
    if tmux.read_exit_code(trial_dir / "exit_code") is not None:
        return  # it finished: resume reads it back
    logger.warning("interrupted: stopping trial %s", trial_dir.name)
    tmux.kill(session)
    set_aside(trial_dir, "interrupted")


class _Progress:
    """Echoes the worker's latest line when it changes (looked at every few seconds), and once a minute when it does
    not, with how long it has stood, so a long trial shows it is alive without repeating itself."""

    def __init__(self, trial: str, log: Path, every_s: float = 5.0, quiet_s: float = 60.0):
        self.trial, self.log, self.every_s, self.quiet_s = trial, log, every_s, quiet_s
        self.last = self.shown_at = self.since = time.monotonic()
        self.shown = ""

    def show(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        tail = _WORKER_TIME.sub("", _log_tail(self.log, 1)).strip()
        if tail and tail != self.shown:
            logger.info("[%s] %s", self.trial, tail)
            self.shown, self.shown_at, self.since = tail, now, now
        elif tail and now - self.shown_at >= self.quiet_s:
            logger.info("[%s] still at: %s (%.0f s)", self.trial, tail, now - self.since)
            self.shown_at = now
