"""probe: what hardware is this? Writes run.json (hardware fingerprint, resolved playbook)."""

from __future__ import annotations

import logging
import time

from langgraph.runtime import Runtime

from agent import hardware
from agent.files import write_json_atomic
from agent.nodes import journal, run_dir
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)


def probe(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    info = hardware.probe()
    logger.info("hardware: %s", hardware.describe(info))
    write_json_atomic(
        run_dir(state, runtime) / "run.json",
        {
            "run_id": state["run_id"],
            "started_at": state["started_at"],
            "probed_at": time.time(),
            "hardware": info,
            "playbook": state["playbook"],
        },
    )
    journal(state, runtime).record("probe", key="probe", hardware=info, summary=hardware.describe(info))
    return {"hardware": info}
