"""provision: check the packages a trial needs are importable, that the environment fits the hardware (agent/provision),
and record every version, the lock they came from, the full package list and what does not fit.

Trials run with this interpreter (start_wan.sh made and pinned its venv); separate environments per runtime come
with the official runtime (issue 13).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from importlib import metadata
from pathlib import Path

from langgraph.runtime import Runtime

from agent import hardware
from agent.files import read_json, write_json_atomic, write_text_atomic
from agent.nodes import journal, run_dir
from agent.provision import fit
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)

REQUIRED = ("torch", "diffusers", "transformers", "peft", "safetensors", "imageio_ffmpeg", "libtmux")
LOCK = Path(__file__).resolve().parent.parent.parent / "constraints.txt"


class ProvisionError(RuntimeError):
    pass


def _freeze() -> str:
    """Every installed distribution as `name==version` (pip freeze's format, without running pip)."""
    names = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return "\n".join(sorted(names, key=str.lower)) + "\n"


def provision(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise ProvisionError(f"missing Python packages: {', '.join(missing)}; run ./start_wan.sh --install-only")
    import torch

    versions = hardware.versions()
    arch_list = torch.cuda.get_arch_list() if torch.cuda.is_available() else []
    info = state["hardware"]
    problems = fit.problems(info, versions, arch_list, fit.skipped_installs()) + fit.kernel_problems(info)
    lock = {"path": str(LOCK), "sha256": hashlib.sha256(LOCK.read_bytes()).hexdigest()} if LOCK.is_file() else None
    write_text_atomic(run_dir(state, runtime) / "environment.txt", _freeze())
    run_json = run_dir(state, runtime) / "run.json"
    record = {"versions": versions, "lock": lock, "fit_problems": problems, "freeze": "environment.txt"}
    write_json_atomic(run_json, (read_json(run_json) or {}) | record)
    logger.info("environment: %s", ", ".join(f"{k} {v}" for k, v in versions.items()))
    for problem in problems:
        logger.warning("environment: %s", problem)
    journal(state, runtime).record("provision", key="provision", versions=versions, lock=lock, fit_problems=problems)
    return {"environment": versions}
