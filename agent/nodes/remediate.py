"""remediate: the last trial failed in a way a playbook rule knows; queue the rule's next change as a new trial."""

from __future__ import annotations

import logging

from langgraph.runtime import Runtime

from agent.nodes import journal
from agent.remediation import derived_rung, next_fix
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)


def remediate(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    failed = state["trials"][-1]
    fix = next_fix(failed, state["playbook"]["remediation"])
    assert fix is not None  # the router only comes here with a fix
    rule, step = fix
    rung = derived_rung(failed, rule, step)
    logger.info(
        "trial %s %s; remediation '%s' %d/%d: %s",
        failed["name"],
        failed["verdict"],
        rule["name"],
        step + 1,
        len(rule["changes"]),
        rule["changes"][step],
    )
    journal(state, runtime).record(
        "remediation",
        key=f"remediation:{failed['name']}",
        trial=failed["name"],
        rule=rule["name"],
        attempt=step + 1,
        of=len(rule["changes"]),
        next=rung["name"],
        set=rung["set"],
    )
    return {"pending": [rung, *state.get("pending", [])]}
