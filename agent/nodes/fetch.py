"""fetch: make the playbook's model available on disk (build, download or find it)."""

from __future__ import annotations

import logging

from langgraph.runtime import Runtime

from agent import sources
from agent.nodes import journal
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)


def fetch(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    spec = state["playbook"]["model"]
    files = sources.resolve(spec["source"], runtime.context.cache_dir, seed=spec["seed"])
    model = {"spec": files.spec, "path": files.path, "lora": files.lora, "lightning": files.lightning}
    logger.info("model %s at %s (Lightning LoRA: %s)", files.spec, files.path, "yes" if files.lightning else "no")
    journal(state, runtime).record("fetch", key="fetch", model=model)
    return {"model": model}
