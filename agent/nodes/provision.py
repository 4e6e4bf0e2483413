"""provision: check the packages a trial needs are importable, that the environment fits the hardware (agent/provision),
and record every version, the lock they came from, the full package list and what does not fit.

Trials run with this interpreter (start_wan.sh made and pinned its venv), but for a runtime with an environment of its
own (agent/provision/runtimes.py: the official Wan2.2 code), made here when a rung may run it on this hardware.
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
from agent.provision import fit, official_code, runtimes
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
    here = run_dir(state, runtime)
    write_text_atomic(here / "environment.txt", _freeze())
    envs = _runtime_environments(state, runtime.context.cache_dir / "envs", here)
    run_json = here / "run.json"
    record = {"versions": versions, "lock": lock, "fit_problems": problems, "freeze": "environment.txt", "runtimes": envs}
    write_json_atomic(run_json, (read_json(run_json) or {}) | record)
    logger.info("environment: %s", ", ".join(f"{k} {v}" for k, v in versions.items()))
    for problem in problems:
        logger.warning("environment: %s", problem)
    log = journal(state, runtime)
    log.record("provision", key="provision", versions=versions, lock=lock, fit_problems=problems, runtimes=envs)
    return {"environment": versions, "runtimes": envs}


def _runtime_environments(state: AgentState, root: Path, here: Path) -> dict:
    """The official runtime's environment, when a rung may run it here; its pip freeze copied beside the run."""
    if not runtimes.wanted(state["playbook"], state["hardware"]):
        return {}
    env = runtimes.official(root) | official_code.resolve(root.parent / "official-code")
    if env.get("code_error"):
        logger.warning("runtime official: no checkout of the official code (%s); using %s", env["code_error"], env["code_from"])
    if "error" in env:
        logger.warning("runtime official: %s", env["error"])
        return {"official": env}
    write_text_atomic(here / "environment-official.txt", (Path(env["path"]) / "freeze.txt").read_text())
    logger.info("runtime official: environment %s (%s)", env["path"], "reused" if env["reused"] else "made")
    return {"official": env | {"freeze": "environment-official.txt"}}
