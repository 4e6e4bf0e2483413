"""trial: run the planned trial in its tmux session while telemetry is sampled; read back the outcome."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

from langgraph.runtime import Runtime

from agent import trials
from agent.decision import failure_reason
from agent.files import STORAGE_MESSAGES, StorageError, check_room, storage_problem
from agent.nodes import journal
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)


def trial(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    candidate, timeouts = state["candidate"], state["playbook"]["timeouts"]
    assert candidate is not None  # the router only comes here with a candidate
    trial_dir = Path(candidate["dir"])
    try:
        outcome = trials.execute(
            state["run_id"],
            trial_dir,
            timeouts["deadline_s"],
            timeouts["idle_timeout_s"],
            runtime.context.poll_s,
            runtime.context.telemetry_interval_s,
        )
    except OSError as err:
        if storage_problem(err) is None:
            raise
        _stop(trial_dir, storage_problem(err))
    _stop_if_the_disk_failed_it(trial_dir, outcome)
    journal(state, runtime).record(
        "trial_finished",
        key=f"finished:{candidate['name']}",
        trial=candidate["name"],
        session=outcome["session"],
        reattached=outcome["reattached"],
    )
    return {"candidate": candidate | {"outcome": outcome}}


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


def _stop(trial_dir: Path, why: str | None) -> NoReturn:
    logger.error("trial %s failed on a disk that takes no more writes: %s", trial_dir.name, why)
    try:
        trials.forget(trial_dir)  # so that resume runs the trial again rather than reading this attempt back
    except OSError:  # read-only: the next attempt's start removes them
        pass
    raise StorageError(f"trial {trial_dir.name} failed writing to {trial_dir}: {why}")
