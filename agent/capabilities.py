"""What the probed hardware cannot run, known before a trial is spent on it.

Attention backends are judged here only by what the hardware and diffusers say of them (FA3 needs a GPU, FP8
attention FP8 tensor cores, a split over GPUs a backend with context parallelism): whether one imports, runs and
agrees is only known by probing it on the trial's own shape, which the worker does.
"""

from __future__ import annotations

from agent import gpu_map
from agent.runtime import kernels, parallel
from agent.runtime.config import Knobs
from agent.runtime.official import support

FP8_COMPUTE_MIN_CAPABILITY = (8, 9)  # Ada and Hopper: FP8 tensor cores
FP4_COMPUTE_MIN_CAPABILITY = (10, 0)  # Blackwell: FP4 tensor cores


def _capability(gpu: dict) -> tuple[int, int]:
    major, minor = gpu["compute_capability"].split(".")
    return int(major), int(minor)


def cannot_run(knobs: Knobs, hardware: dict, device: str) -> str | None:
    """Why ``knobs`` cannot run on ``hardware`` with the playbook's ``device`` setting, or None."""
    gpus = gpu_map.trial_gpus(hardware) if device != "cpu" else []  # CUDA_VISIBLE_DEVICES may pick an older GPU
    if device == "cuda" and not gpus:
        return "the playbook asks for a CUDA GPU and this machine has none"
    found = ", ".join(f"{g['name']} (sm {g['compute_capability']})" for g in gpus) or "no GPU"
    fp8_cores = any(_capability(g) >= FP8_COMPUTE_MIN_CAPABILITY for g in gpus)
    if knobs.fp8.startswith("torchao") and not fp8_cores:
        return f"fp8={knobs.fp8} needs a GPU of compute capability >= 8.9 (FP8 tensor cores); found {found}"
    if knobs.fp8 == "torchao_static" and knobs.offload in ("model", "group", "sequential"):
        return f"fp8=torchao_static calibrates with the experts on the GPU: not with offload={knobs.offload}"
    if knobs.fp4 != "none" and not any(_capability(g) >= FP4_COMPUTE_MIN_CAPABILITY for g in gpus):
        return f"fp4={knobs.fp4} needs a GPU of compute capability >= 10.0 (Blackwell FP4 tensor cores); found {found}"
    if (problem := _attention_problem(knobs, gpus, fp8_cores, found)) is not None:
        return problem
    ranks = parallel.world_size(knobs)
    splits = [f"{name}={getattr(knobs, name)}" for name in ("ulysses", "ring") if getattr(knobs, name) > 1]
    split = " with ".join(splits + ["cfg_parallel"] * knobs.cfg_parallel)
    if ranks > 1 and gpus and gpu_map.rank_gpus(hardware, ranks) is None:
        return f"{split} splits the work over {ranks} GPUs; this machine shows {len(gpu_map.visible(hardware) or [])} ({found})"
    if knobs.vae_parallel and ranks == 1:
        return "vae_parallel splits the decode over a parallel trial's ranks; this one runs in one process (no split)"
    if knobs.vae_parallel and knobs.vae_tiling:
        return "vae_parallel cuts the decode into one tile per rank itself: it runs with vae_tiling false"
    if ranks > 1 and knobs.offload not in ("none", "auto"):
        return f"{split} with offload={knobs.offload}: each rank keeps its whole model on its own GPU"
    if knobs.offload in ("model", "group", "sequential") and not gpus:
        return f"offload={knobs.offload} moves weights to a GPU, and there is none"
    return support.refusal(knobs, on_gpu=bool(gpus))


def _attention_problem(knobs: Knobs, gpus: list[dict], fp8_cores: bool, found: str) -> str | None:
    if knobs.attention in kernels.FA3_BACKENDS and not gpus:
        return f"attention={knobs.attention} (FlashAttention-3) runs on CUDA GPUs only; found {found}"
    if knobs.attention_fp8 and knobs.attention not in kernels.FP8_BACKENDS:
        on = kernels.FP8_BACKENDS[0]
        return f"attention_fp8 runs on FlashAttention-3 (attention: {on}); attention={knobs.attention} has no FP8 path"
    if knobs.attention_fp8 and not fp8_cores:
        return f"attention_fp8 needs a GPU of compute capability >= 8.9 (FP8 tensor cores); found {found}"
    if knobs.ring > 1 and (knobs.attention == "native" or knobs.attention_fp8):
        return (
            f"ring={knobs.ring} merges each rank's attention by its log-sum-exp, which attention={knobs.attention}"
            f"{' in FP8' if knobs.attention_fp8 else ''} does not return (_native_cudnn and _flash_3 in bf16 do)"
        )
    if knobs.ring > 1 and not parallel.supports_context_parallel(knobs.attention):
        return f"ring={knobs.ring} is diffusers' context parallelism, which attention={knobs.attention} does not support"
    if knobs.ulysses > 1 and knobs.runtime != "official" and not parallel.supports_context_parallel(knobs.attention):
        return (
            f"ulysses={knobs.ulysses} splits attention with diffusers' context parallelism, which attention={knobs.attention} "
            "does not support (native, _native_cudnn and _flash_3 do)"
        )
    return None
