"""The LangGraph graph: probe → provision → fetch → patch → plan → trial → evaluate → (remediate | plan | report);
remediate → plan (the failed rung again, with a playbook rule's next change).

Checkpointed with SqliteSaver after every node (durability "sync"), so a killed agent resumes from
the last finished node; the nodes themselves make re-running the interrupted one safe.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from agent.nodes.evaluate import evaluate
from agent.nodes.fetch import fetch
from agent.nodes.patch import patch
from agent.nodes.plan import needs_confirmation, plan
from agent.nodes.probe import probe
from agent.nodes.provision import provision
from agent.nodes.remediate import remediate
from agent.nodes.report import report
from agent.nodes.trial import trial
from agent.remediation import next_fix
from agent.state import AgentState, RunContext


def after_plan(state: AgentState) -> Literal["trial", "report"]:
    return "trial" if state.get("candidate") else "report"


def after_evaluate(state: AgentState) -> Literal["remediate", "plan", "report"]:
    if next_fix(state["trials"][-1], state["playbook"].get("remediation", [])):
        return "remediate"
    if not state.get("best"):  # no baseline and no rule left to get one: nothing to compare rungs against
        return "report"
    return "plan" if state.get("pending") or needs_confirmation(state) else "report"


def build_graph() -> StateGraph[AgentState, RunContext, AgentState, AgentState]:
    graph = StateGraph(AgentState, context_schema=RunContext)
    for name, node in (
        ("probe", probe),
        ("provision", provision),
        ("fetch", fetch),
        ("patch", patch),
        ("plan", plan),
        ("trial", trial),
        ("evaluate", evaluate),
        ("remediate", remediate),
        ("report", report),
    ):
        graph.add_node(name, node)
    graph.add_edge(START, "probe")
    graph.add_edge("probe", "provision")
    graph.add_edge("provision", "fetch")
    graph.add_edge("fetch", "patch")
    graph.add_edge("patch", "plan")
    graph.add_conditional_edges("plan", after_plan)
    graph.add_edge("trial", "evaluate")
    graph.add_conditional_edges("evaluate", after_evaluate)
    graph.add_edge("remediate", "plan")
    graph.add_edge("report", END)
    return graph


@contextmanager
def compiled(run_dir: Path):
    """The graph compiled with its SQLite checkpointer in ``run_dir/checkpoint.sqlite``."""
    conn = sqlite3.connect(run_dir / "checkpoint.sqlite", check_same_thread=False)
    try:
        yield build_graph().compile(checkpointer=SqliteSaver(conn))
    finally:
        conn.close()
