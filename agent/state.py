"""The agent's state and run-time context. State is plain data (it is checkpointed to SQLite);
the context holds what is not state: where things live and how often to look."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict


class AgentState(TypedDict, total=False):
    run_id: str
    """Name of the run and of its directory under the runs dir; also the checkpoint thread id."""
    playbook: dict
    """The playbook as validated and resolved (prompt override applied), as a plain dict."""
    hardware: dict
    """probe's findings: CPU, RAM, GPUs, NVML availability, fingerprint."""
    environment: dict
    """provision's findings: Python and package versions the trials run with."""
    runtimes: dict
    """provision's environments per runtime that has one: {"official": {"python", "path", "lock_sha256", ...} or {"error"}}."""
    model: dict
    """fetch's findings: {"spec", "path", "lora": {"high_noise", "low_noise"} | None}."""
    attention: dict
    """patch's findings: the attention backend in use and why."""
    pending: list[dict]
    """Ladder rungs not yet tried, in order (each {"name", "hypothesis", "set"})."""
    candidate: dict | None
    """The trial being run: plan fills {"index", "name", "rung", "hypothesis", "knobs", "dir"}; trial adds "outcome"."""
    trials: list[dict]
    """One record per finished trial: knobs, figures, verdict (agent.decision.Verdict), reason."""
    best: dict | None
    """The record of the current best trial (the baseline, or the last rung kept)."""
    started_at: float
    """Unix time the run started, for time-to-converge."""
    status: str
    """running | converged | failed."""
    unresolved: list[str]
    """Trials whose verdict the host's noise left open (inconclusive) or whose prediction did not hold (unconfirmed)."""


class RunStopped(RuntimeError):
    """The run stopped on something outside it (a full or read-only disk, a GPU another process holds); the
    message says what to do, and `wan-agent resume` continues from where it stopped."""


@dataclass(frozen=True)
class RunContext:
    runs_dir: Path
    cache_dir: Path  # built or downloaded models, shared by runs
    poll_s: float = 0.5  # how often a waiting trial is checked
    telemetry_interval_s: float = 0.5

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id
