"""trial: run the planned trial in its tmux session while telemetry is sampled; read back the outcome."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

from langgraph.runtime import Runtime

from agent import contention, gpu_map, trial_host, trials
from agent.decision import failure_reason
from agent.files import STORAGE_MESSAGES, StorageError, check_room, storage_problem
from agent.nodes import journal
from agent.runtime import parallel
from agent.runtime.config import Knobs
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)


def trial(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    candidate, timeouts = state["candidate"], state["playbook"]["timeouts"]
    assert candidate is not None  # the router only comes here with a candidate
    trial_dir = Path(candidate["dir"])
    ranks = parallel.world_size(Knobs.model_validate(candidate["knobs"]))
    index = gpu_map.for_ranks(state["hardware"], ranks)
    for attempt in (1, 2):
        gpu = _check_gpus(state, trial_dir, index) if trials.will_start(state["run_id"], trial_dir) else None
        try:
            outcome = trials.execute(
                state["run_id"],
                trial_dir,
                timeouts["deadline_s"],
                timeouts["idle_timeout_s"],
                runtime.context.poll_s,
                runtime.context.telemetry_interval_s,
                index,
                python=trials.interpreter(state.get("runtimes"), candidate["knobs"]["runtime"]),
                runtime_vars=trials.runtime_env(state.get("runtimes"), candidate["knobs"]["runtime"]),
            )
        except OSError as err:
            problem = storage_problem(err)
            if problem is None:
                raise
            _stop(trial_dir, problem)
        _stop_if_the_disk_failed_it(trial_dir, outcome)
        during = _shared_during(outcome)
        if during is None:
            break
        gpu = (gpu or {}) | {"shared": True, "during": during}
        if state["playbook"]["busy_gpu"]["then"] == "flag":
            break
        if attempt == 2:
            raise contention.GpuBusy(
                f"trial {trial_dir.name} was measured next to another process twice ({during}); such figures would "
                "not be this machine's. Free the GPU, or set `busy_gpu: {then: flag}` to keep them flagged"
            )
        logger.warning("trial %s shared the GPU (%s): measuring it again once the GPU is free", trial_dir.name, during)
        trials.set_aside(trial_dir, "shared")
    journal(state, runtime).record(
        "trial_finished",
        key=f"finished:{candidate['name']}",
        trial=candidate["name"],
        session=outcome["session"],
        reattached=outcome["reattached"],
    )
    return {"candidate": candidate | {"outcome": outcome, "gpu_check": gpu}}


def _shared_during(outcome: dict) -> str | None:
    """Whether another process held the GPU while the trial ran: from the agent's samples (the part it watched)
    and from the worker's own record (the whole trial, even while the agent was down)."""
    seen = []
    watched = (outcome.get("telemetry") or {}).get("max_gpu_other_processes")
    if watched:
        seen.append(f"{watched} other process(es) on the GPU while the agent watched")
    others = ((outcome.get("result") or {}).get("gpu_sharing") or {}).get("others")
    if others:
        seen.append(f"the worker saw {contention.describe(others)}")
    return "; ".join(seen) or None


def _check_gpus(state: AgentState, trial_dir: Path, index: int | list[int] | None) -> dict | None:
    """Before a trial on a GPU (NVML index ``index``, or each rank's): wait for other processes to leave it; refuse
    or flag if they do not."""
    if index is None or state["playbook"]["device"] == "cpu":
        return None
    checks = [_check_gpu(state, trial_dir, i) for i in (index if isinstance(index, list) else [index])]
    return {"shared": any(c["shared"] for c in checks), "before": "; ".join(c["before"] for c in checks)}


def _check_gpu(state: AgentState, trial_dir: Path, index: int) -> dict:
    rule = state["playbook"]["busy_gpu"]
    others, seen = contention.wait_for_gpu(index, rule["wait_s"], ours=frozenset(trial_host.pids(state["run_id"])))
    if others and rule["then"] == "refuse":
        raise contention.GpuBusy(
            f"GPU {index} is {seen} (waited {rule['wait_s']:.0f} s before trial {trial_dir.name}); figures measured next to it "
            "would not be this machine's. Free the GPU, or set `busy_gpu: {then: flag}` in the playbook to measure "
            "anyway with the figures flagged"
        )
    return {"shared": bool(others), "before": seen}


def _stop_if_the_disk_failed_it(trial_dir: Path, outcome: dict) -> None:
    """A trial that failed because the runs directory took no more writes says nothing about its rung: stop the
    run (resume runs the trial again) instead of judging it."""
    failed = failure_reason(outcome)
    if failed is None:
        return
    error = ((outcome.get("result") or {}).get("error") or {}).get("message", "")
    said = next((m for m in STORAGE_MESSAGES if m in f"{error}\n{outcome.get('log_tail', '')}"), None)
    try:
        check_room(trial_dir, 0)
    except StorageError as err:
        said = said or str(err)
    if said is not None:
        _stop(trial_dir, said)


def _stop(trial_dir: Path, why: str) -> NoReturn:
    logger.error("trial %s failed on a disk that takes no more writes: %s", trial_dir.name, why)
    try:
        trials.forget(trial_dir)  # so that resume runs the trial again rather than reading this attempt back
    except OSError:  # read-only: the next attempt's start removes them
        pass
    raise StorageError(f"trial {trial_dir.name} failed writing to {trial_dir}: {why}")
