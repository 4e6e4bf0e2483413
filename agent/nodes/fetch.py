"""fetch: make the playbook's model available on disk (build, download and verify, or find it), and record where
it came from in the journal and run.json. A download that cannot be done stops the run before any trial."""

from __future__ import annotations

import logging

from langgraph.runtime import Runtime

from agent import sources
from agent.files import read_json, write_json_atomic
from agent.nodes import journal, run_dir
from agent.state import AgentState, RunContext, RunStopped

logger = logging.getLogger(__name__)


def fetch(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    spec = state["playbook"]["model"]
    try:
        files = sources.resolve(spec["source"], runtime.context.cache_dir, seed=spec["seed"])
    except sources.DownloadFailed as err:
        raise RunStopped(f"no trial was run: {err}") from None
    model = {
        "spec": files.spec,
        "path": files.path,
        "lora": files.lora,
        "lightning": files.lightning,
        "weights": files.weights,
        "downloads": files.downloads,
    }
    lora = "yes" if files.lightning else "no"
    logger.info("model %s at %s (%s weights; Lightning LoRA: %s)", files.spec, files.path, files.weights, lora)
    journal(state, runtime).record("fetch", key="fetch", model=model)
    run_json = run_dir(state, runtime) / "run.json"
    write_json_atomic(run_json, (read_json(run_json) or {}) | {"model": model})
    return {"model": model}
