"""patch: choose the attention implementation and record why.

diffusers' WanPipeline dispatches attention to PyTorch SDPA ("native") unless told otherwise, so a
missing FlashAttention needs no patch there; the record says which backend the trials use. The
official ``wan22`` code, which hard-needs flash_attn, is patched here when its runtime arrives.
"""

from __future__ import annotations

import importlib.util
import logging

from langgraph.runtime import Runtime

from agent.nodes import journal
from agent.state import AgentState, RunContext

logger = logging.getLogger(__name__)


def patch(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    has_flash = importlib.util.find_spec("flash_attn") is not None
    attention = {
        "backend": "native",
        "flash_attn_installed": has_flash,
        "reason": (
            "flash_attn is installed, but diffusers' default dispatch (PyTorch SDPA) is the baseline; "
            "other backends are rungs to measure"
            if has_flash
            else "flash_attn is not installed: diffusers falls back to PyTorch SDPA (native backend); nothing to patch"
        ),
    }
    logger.info("attention: %s", attention["reason"])
    journal(state, runtime).record("patch", key="patch", attention=attention)
    return {"attention": attention}
