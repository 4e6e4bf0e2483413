"""The official Wan2.2 model code from the installed ``wan22`` package, loaded without ``import wan``, and made to
run where flash_attn cannot.

``import wan`` imports every pipeline of the package (decord, librosa, cv2, ...), and ``wan/modules/t5.py`` calls
``torch.cuda.current_device()`` at import, so it fails on a machine without CUDA. The DiT itself
(``wan/modules/model.py``) needs only torch and diffusers' config mixins: its folder is mounted as a package of its
own, without running ``wan/__init__.py``, and its modules are imported from there.

The code comes from the installed ``wan22`` package, or from a checkout of the official repository named by
``WAN_AGENT_OFFICIAL_CODE`` (pinned: ``OFFICIAL_COMMIT``, whose files used here are byte-identical to wan22 2.2.11's).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from agent.runtime.official import attention_patch
from agent.runtime.official.support import CHECKOUT_ENV, OFFICIAL_COMMIT, OFFICIAL_REPO

PACKAGE = "wan22_official"  # the official code's `wan` folder, under a name of its own, its __init__ never run


class OfficialCodeMissing(RuntimeError):
    pass


@cache
def code() -> tuple[Path, str]:
    """The official code's ``wan`` folder, and where it came from (the checkout's commit, or the package's version)."""
    checkout = os.environ.get(CHECKOUT_ENV)
    if checkout:
        folder = Path(checkout) / "wan"
        if not (folder / "modules" / "model.py").is_file():
            raise OfficialCodeMissing(f"{CHECKOUT_ENV}={checkout} has no wan/modules/model.py: clone {OFFICIAL_REPO} there")
        try:
            said = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True)
        except OSError:  # no git on this machine
            said = subprocess.CompletedProcess([], 1)
        commit = said.stdout.strip() if said.returncode == 0 else "an unknown commit (not a git checkout)"
        pinned = "" if commit == OFFICIAL_COMMIT else f"; pinned is {OFFICIAL_COMMIT[:12]}: `git checkout {OFFICIAL_COMMIT}`"
        return folder, f"{OFFICIAL_REPO} at {commit[:12]} ({checkout}{pinned})"
    try:
        folder = Path(str(importlib.metadata.distribution("wan22").locate_file("wan")))
    except importlib.metadata.PackageNotFoundError:
        raise OfficialCodeMissing("the official Wan2.2 code is not installed: `pip install --no-deps wan22==2.2.11`") from None
    return folder, f"wan22 {importlib.metadata.version('wan22')}"


@cache
def module(name: str) -> types.ModuleType:
    """``wan/modules/NAME.py`` of the official code (``model``, ``attention``, ``t5``, ``vae2_1``), or ``wan/NAME.py``
    for a dotted name (``utils.fm_solvers_unipc``, ``distributed.ulysses``)."""
    folder, _ = code()
    subpackages = ((f"{PACKAGE}.{sub}", folder / sub) for sub in ("modules", "utils", "distributed"))
    for package, path in ((PACKAGE, folder), *subpackages):
        if package not in sys.modules:  # a package whose __init__.py is not run: it imports every pipeline
            mounted = types.ModuleType(package)
            mounted.__path__ = [str(path)]
            sys.modules[package] = mounted
    dotted = name if "." in name else f"modules.{name}"
    try:
        with _cuda_default_argument():
            return importlib.import_module(f"{PACKAGE}.{dotted}")
    except ImportError as err:
        fix = "pip install ftfy einops regex (the official runtime's own needs besides torch, diffusers, transformers)"
        raise OfficialCodeMissing(f"wan/{dotted.replace('.', '/')}.py does not import: {err}; {fix}") from err


@contextmanager
def _cuda_default_argument() -> Iterator[None]:
    """``t5.py`` calls ``torch.cuda.current_device()`` for a default argument while it is imported, which raises
    without CUDA; that default (T5EncoderModel's device) is never used here, so 0 stands in while it imports."""
    if torch.cuda.is_available():
        yield
        return
    real = torch.cuda.current_device
    torch.cuda.current_device = lambda: 0
    try:
        yield
    finally:
        torch.cuda.current_device = real


def flash_attn_problem(device: torch.device) -> str | None:
    """Why the official ``flash_attention`` cannot run here, from a tiny real call of it; None when it can."""
    attention = module("attention")
    if not (attention.FLASH_ATTN_2_AVAILABLE or attention.FLASH_ATTN_3_AVAILABLE):
        return "flash_attn is not installed"
    if device.type != "cuda":
        return f"flash_attn needs CUDA; this runs on {device.type}"
    q = torch.randn(1, 16, 2, 64, device=device, dtype=torch.bfloat16)
    try:
        attention.flash_attention(q, q, q)
        torch.cuda.synchronize(device)
    except Exception as err:  # built for another architecture, a broken install: all mean "replace it"
        return f"flash_attn fails on this GPU: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return None


def patch_attention(device: torch.device) -> dict:
    """Make the official DiT attend through ``attention_patch.flash_attention`` where flash_attn cannot run; return
    what the journal says: what was missing, what replaced it, and its check against a reference at start-up."""
    problem = flash_attn_problem(device)
    if problem is None:
        return {"patched": False, "kernel": "flash_attn", "reason": "flash_attn runs here"}
    module("model").flash_attention = attention_patch.flash_attention  # type: ignore[attr-defined]  # the DiT imported this name
    return {
        "patched": True,
        "missing": problem,
        "replacement": "agent.runtime.official.attention_patch.flash_attention (PyTorch SDPA, padding masked)",
        "check": attention_patch.self_check(device),
    }
