"""Which trials can share a process (the trial host, agent/runtime/host.py), and the files of the host's queue: what
the host and the agent's side of it (agent/trial_host.py) both need, without torch or tmux."""

from __future__ import annotations

import sys

from agent.runtime import parallel
from agent.runtime.config import Knobs, TrialConfig

REQUEST, STOP, CURRENT = "next", "stop", "current"  # asked for, asked to stop, the trial it runs now (and since when)


def refusal(config: TrialConfig, python: str = sys.executable) -> str | None:
    """Why this trial must run in a process of its own, or None where a host can run it as a new process would."""
    return refusal_of(config.knobs, config.host_memory_GiB, config.gpu_memory_fraction, python)


def refusal_of(knobs: Knobs, host_memory_GiB: float | None, gpu_memory_fraction: float | None, python: str) -> str | None:
    """``refusal`` for a trial of these knobs and limits, run with ``python``."""
    if parallel.world_size(knobs) > 1:
        return "it runs several ranks under torchrun"
    if knobs.runtime != "diffusers":
        return f"runtime {knobs.runtime} runs in an environment of its own"
    if host_memory_GiB is not None:
        return "its address-space cap (host_memory_GiB) would stay on the host"
    if gpu_memory_fraction is not None:
        return "its cap on the GPU's memory (gpu_memory_fraction) would stay on the host"
    if python != sys.executable:
        return f"it runs with {python}, not the agent's Python"
    return None
