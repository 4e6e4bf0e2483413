"""trial: run the planned trial in its tmux session while telemetry is sampled; read back the outcome."""

from __future__ import annotations

import logging
from pathlib import Path

from langgraph.runtime import Runtime

from agent import trials
from agent.nodes import journal
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)


def trial(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    candidate, timeouts = state["candidate"], state["playbook"]["timeouts"]
    assert candidate is not None  # the router only comes here with a candidate
    outcome = trials.execute(
        state["run_id"],
        Path(candidate["dir"]),
        timeouts["deadline_s"],
        timeouts["idle_timeout_s"],
        runtime.context.poll_s,
        runtime.context.telemetry_interval_s,
    )
    journal(state, runtime).record(
        "trial_finished",
        key=f"finished:{candidate['name']}",
        trial=candidate["name"],
        session=outcome["session"],
        reattached=outcome["reattached"],
    )
    return {"candidate": candidate | {"outcome": outcome}}
