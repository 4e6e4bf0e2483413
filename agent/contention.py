"""Is the GPU ours? Before a trial starts, NVML lists the processes holding GPU memory; figures measured
next to another process are not the machine's, so the agent waits (bounded) for the GPU to be free, then
refuses or, if the playbook allows, runs and flags every figure of that trial as measured on a shared GPU."""

from __future__ import annotations

import logging
import time

from agent.state import RunStopped
from agent.telemetry import Nvml

logger = logging.getLogger(__name__)


class GpuBusy(RunStopped):
    """Another process held the GPU past the playbook's wait."""


def describe(processes: list[dict]) -> str:
    return ", ".join(
        f"pid {p['pid']} ({p['name']}" + (f", {p['used_GiB']:.1f} GiB" if p.get("used_GiB") is not None else "") + ")"
        for p in processes
    )


def wait_for_gpu(
    gpu_index: int, wait_s: float, poll_s: float = 5.0, ours: frozenset[int] = frozenset()
) -> tuple[list[dict], str]:
    """Wait up to ``wait_s`` for no process but ``ours`` (the run's trial host) to hold GPU ``gpu_index``; return those
    still there, and what was seen."""
    nvml = Nvml(gpu_index)

    def others_now() -> list[dict] | None:
        found = nvml.processes()
        return None if found is None else [p for p in found if p["pid"] not in ours]

    others = others_now()
    if others is None:
        return [], f"not checked (NVML unavailable: {nvml.error})"
    deadline = time.monotonic() + wait_s
    if others:
        logger.warning("GPU %d is in use by %s: waiting up to %.0f s", gpu_index, describe(others), wait_s)
    while others and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
        others = others_now() or []
    return others, ("in use by " + describe(others)) if others else "no other process on the GPU"
