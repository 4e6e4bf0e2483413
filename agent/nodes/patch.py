"""patch: make the baseline's attention run on this machine, and record which backend the trials use and why.

diffusers' WanPipeline dispatches attention to PyTorch SDPA ("native") unless told otherwise. A baseline that
asks for another backend (flash, FA3, sage, ...) whose package is missing or that needs a download would fail
every trial: it is patched to SDPA here (the state's ``attention.backend``, which plan runs the baseline on; the
playbook itself stays as written), and the journal says so. Whether a backend that imports also runs on
the trial's shape is probed by the worker before each use (agent/runtime/attention.py). The official ``wan22``
code, which hard-needs flash_attn, is patched in the process that runs it: each ``runtime: official`` trial detects a
missing or broken flash_attn, installs the SDPA stand-in and checks it at start-up (agent/runtime/official/), and its
journal section says what was missing, what replaced it and how far the check landed.
"""

from __future__ import annotations

import importlib.util
import logging

from langgraph.runtime import Runtime

from agent.nodes import journal
from agent.runtime.attention import requirement_problem
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)

FALLBACK = "native"  # PyTorch SDPA: on every machine torch runs on; it picks flash/cuDNN/math kernels itself


def patch(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    book = state["playbook"]
    requested = book["baseline"]["attention"]
    problem = None if requested == FALLBACK else requirement_problem(requested)
    flash = "installed" if importlib.util.find_spec("flash_attn") is not None else "not installed"
    attention = {"requested": requested, "backend": requested if problem is None else FALLBACK, "flash_attn": flash}
    if problem is not None:
        attention["reason"] = (
            f"the baseline asks for attention backend `{requested}`, which cannot run here ({problem}); patched to "
            f"`{FALLBACK}` (PyTorch SDPA), which every machine has. Rungs that set a backend are probed before use"
        )
        logger.warning("attention: %s", attention["reason"])
    elif requested == FALLBACK:
        attention["reason"] = (
            f"the baseline uses `{FALLBACK}` (PyTorch SDPA, diffusers' default dispatch; flash_attn {flash}): nothing to "
            "patch. Other backends are rungs, each probed on the trial's shape before use"
        )
    else:
        attention["reason"] = (
            f"the baseline uses attention backend `{requested}`: its package is present; the worker probes it on the "
            "trial's shape (runs, agrees with SDPA) before the first trial"
        )
    logger.info("attention: %s", attention["reason"])
    journal(state, runtime).record("patch", key="patch", attention=attention)
    return {"attention": attention}  # plan runs the baseline on attention["backend"]
