"""The graph's nodes, one file each. A node reads the state, calls library modules, records what it did
in the journal and returns a partial state. Nodes may run again after a resume, so each is idempotent."""

from __future__ import annotations

from pathlib import Path

from langgraph.runtime import Runtime

from agent.journal import Journal
from agent.state import AgentState, RunContext


def run_dir(state: AgentState, runtime: Runtime[RunContext]) -> Path:
    return runtime.context.run_dir(state["run_id"])


def journal(state: AgentState, runtime: Runtime[RunContext]) -> Journal:
    return Journal(run_dir(state, runtime))
