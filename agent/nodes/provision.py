"""provision: check the packages a trial needs are importable and record their versions in run.json.

Trials run with this interpreter (start_wan.sh made and pinned its venv); separate environments per
trial come later.
"""

from __future__ import annotations

import importlib.util
import logging

from langgraph.runtime import Runtime

from agent import hardware
from agent.files import read_json, write_json_atomic
from agent.nodes import journal, run_dir
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)

REQUIRED = ("torch", "diffusers", "transformers", "peft", "safetensors", "imageio_ffmpeg", "libtmux")


class ProvisionError(RuntimeError):
    pass


def provision(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise ProvisionError(f"missing Python packages: {', '.join(missing)}; run ./start_wan.sh --install-only")
    versions = hardware.versions()
    run_json = run_dir(state, runtime) / "run.json"
    write_json_atomic(run_json, (read_json(run_json) or {}) | {"versions": versions})
    logger.info("environment: %s", ", ".join(f"{k} {v}" for k, v in versions.items()))
    journal(state, runtime).record("provision", key="provision", versions=versions)
    return {"environment": versions}
