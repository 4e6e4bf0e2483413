"""The Wan2.2 variants the agent knows (``playbooks/variants.yaml``): where each is published, what it needs,
and which one fits this machine.

The registry is data: a new checkpoint is a new entry, not new code. Loading validates it like a playbook
(a ``VariantError`` names each bad field). ``fit`` answers "which variant runs here, and how", with the reason
for each one passed over, so that the journal can say why the agent chose what it chose.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from agent.runtime.config import Strict

REGISTRY = Path(os.environ.get("WAN_AGENT_VARIANTS", Path(__file__).resolve().parent.parent / "playbooks" / "variants.yaml"))
REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"
GB = 1e9


class VariantError(ValueError):
    """The registry is invalid, or a name is not in it; the message says what to do."""


class Repo(Strict):
    repo: str = Field(pattern=REPO_ID)
    revision: str = Field(min_length=1)  # the Hub: a commit sha (pinned); ModelScope: a branch or tag

    @property
    def spec(self) -> str:
        return f"{self.repo}@{self.revision}"


class Lightning(Strict):
    """The Lightning 4-step LoRA pair that distils this variant (lightx2v layout)."""

    hub: Repo
    modelscope: Repo | None = None
    subfolder: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    files: dict[Literal["high_noise", "low_noise"], str] = Field(min_length=1)

    @property
    def allow(self) -> list[str]:
        return [f"{self.subfolder}/{name}" for name in self.files.values()]


class Memory(Strict):
    resident_GB: float = Field(gt=0)  # every weight on the GPU, bf16, at the variant's default size
    offload_GB: float = Field(gt=0)  # with weights offloaded to host memory (model CPU offload)


class Variant(Strict):
    name: str = ""  # filled from the registry key
    task: Literal["t2v", "ti2v", "i2v"]
    description: str = Field(min_length=1)
    layout: Literal["diffusers", "original"]
    hub: Repo
    modelscope: Repo | None = None
    files: list[str] = Field(min_length=1)  # allow patterns (fnmatch, as `hf download --include`)
    size_GB: float = Field(gt=0)  # on disk, the files above (the hub's listing is what a download checks)
    gpu_memory: Memory
    min_compute_capability: float = Field(ge=3.0)
    lightning: Lightning | None = None
    playbook: str | None = None  # the playbook that searches this variant
    synthetic: str | None = None  # the synthetic preset with its architecture (benchmark without downloading)
    # Set when no runtime here can run it yet: the reason, recorded wherever the variant is passed over.
    unsupported: str | None = None

    @field_validator("files")
    @classmethod
    def _relative(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise ValueError(f"{pattern!r}: allow patterns are relative to the repo and never leave it")
        return patterns


class Registry(Strict):
    variants: dict[str, Variant] = Field(min_length=1)


@cache
def load(path: Path = REGISTRY) -> dict[str, Variant]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        registry = Registry.model_validate(data)
    except (OSError, yaml.YAMLError) as err:
        raise VariantError(f"variant registry {path}: {err}") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise VariantError(f"variant registry {path} is invalid: {problems}") from None
    for name, variant in registry.variants.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
            raise VariantError(f"variant registry {path}: {name!r}: names are lower-case letters, digits, '.' and '-'")
        variant.name = name
    return registry.variants


def get(name: str) -> Variant:
    variants = load()
    if name not in variants:
        raise VariantError(f"unknown variant {name!r}; known: {', '.join(variants)}")
    return variants[name]


def of_repo(repo: str) -> Variant | None:
    """The variant published as ``repo`` (on either hub), for the Lightning LoRA that goes with it."""
    for variant in load().values():
        if repo in (variant.hub.repo, variant.modelscope.repo if variant.modelscope else None):
            return variant
    return None


def gpu_GB(gpu: dict) -> float:
    return gpu["memory_GiB"] * 2**30 / GB


def _passed_over(variant: Variant, gpu: dict, host_GB: float) -> str | None:
    """Why ``variant`` cannot run on ``gpu`` (None: it can)."""
    if variant.unsupported:
        return variant.unsupported
    capability = float(gpu["compute_capability"])
    if capability < variant.min_compute_capability:
        return f"needs compute capability {variant.min_compute_capability}, the GPU has {capability}"
    if gpu_GB(gpu) < variant.gpu_memory.offload_GB:
        return f"needs {variant.gpu_memory.offload_GB:.0f} GB of GPU memory even offloaded; the GPU has {gpu_GB(gpu):.1f} GB"
    if gpu_GB(gpu) < variant.gpu_memory.resident_GB and host_GB < variant.size_GB:
        return f"offloading it needs {variant.size_GB:.0f} GB of host memory; this machine has {host_GB:.0f} GB"
    return None


def fit(hardware: dict, task: str = "t2v") -> tuple[Variant | None, list[str]]:
    """The first variant (in registry order) of ``task``, or TI2V (which also does text-to-video), that runs on
    this machine's first GPU without offload; else the first that runs offloaded. Also why each other was passed
    over. Without a GPU: (None, reasons)."""
    if not hardware.get("gpus"):
        return None, ["no CUDA GPU: real variants need one"]
    gpu = hardware["gpus"][0]
    host_GB = hardware.get("ram_GiB", 0) * 2**30 / GB
    candidates = [v for v in load().values() if v.task == task or (task == "t2v" and v.task == "ti2v")]
    reasons, runnable = [], []
    for variant in candidates:
        why = _passed_over(variant, gpu, host_GB)
        if why:
            reasons.append(f"{variant.name}: {why}")
        else:
            runnable.append(variant)
    resident = [v for v in runnable if gpu_GB(gpu) >= v.gpu_memory.resident_GB]
    # Below the memory every weight needs, the smallest model offloaded beats a large one offloaded further.
    chosen = resident[0] if resident else min(runnable, key=lambda v: v.gpu_memory.resident_GB, default=None)
    for variant in runnable:
        if variant is not chosen:
            where = "fits too" if variant in resident else f"would need offload on {gpu_GB(gpu):.0f} GB"
            reasons.append(f"{variant.name}: {where}; {chosen.name if chosen else '?'} is preferred")
    return chosen, reasons
