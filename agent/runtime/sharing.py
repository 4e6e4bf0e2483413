"""Which trials can share a process (the trial host, agent/runtime/host.py), and the files of the host's queue: what
the host and the agent's side of it (agent/trial_host.py) both need, without torch or tmux."""

from __future__ import annotations

import sys

from agent.runtime import parallel
from agent.runtime.config import TrialConfig

REQUEST, STOP, CURRENT = "next", "stop", "current"  # asked for, asked to stop, the trial it runs now (and since when)


def refusal(config: TrialConfig, python: str = sys.executable) -> str | None:
    """Why this trial must run in a process of its own, or None where a host can run it as a new process would."""
    if parallel.world_size(config.knobs) > 1:
        return "it runs several ranks under torchrun"
    if config.knobs.runtime != "diffusers":
        return f"runtime {config.knobs.runtime} runs in an environment of its own"
    if config.host_memory_GiB is not None:
        return "its address-space cap (host_memory_GiB) would stay on the host"
    if config.gpu_memory_fraction is not None:
        return "its cap on the GPU's memory (gpu_memory_fraction) would stay on the host"
    if python != sys.executable:
        return f"it runs with {python}, not the agent's Python"
    return None
