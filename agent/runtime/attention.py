"""Attention backends: which of diffusers' dispatch backends can run here, checked before a trial uses one.

A backend is usable only if (1) its package imports, (2) it runs on the trial's own shape, dtype and
device, and (3) it agrees with PyTorch SDPA (diffusers' ``native``) within ``TOLERANCE``. A backend that
fails any check is skipped with the reason, never silently swapped for another.
"""

from __future__ import annotations

import time

import torch

from agent.runtime import kernels

# Relative L2 error against SDPA. bf16 kernels land near 3e-3 at Wan's shape; INT8-QK kernels
# (SageAttention) near 1.3e-2 (../shared/PERF.md). Above 2e-2 the kernel computes something else.
TOLERANCE = 2e-2
# FP8 attention (e4m3 q/k/v, and FA3 rounds the softmax to e4m3 too) landed at 5.3e-2 on random data with one scale
# per tensor. This only tells a working kernel from a broken one (wrong scales land near 1); whether the trade is
# acceptable is the fidelity gate's call, on the model's output.
FP8_TOLERANCE = 1e-1
# Backends that fetch their kernel from the Hub at first use: nothing can be fetched on these servers.
OFFLINE_UNUSABLE_SUFFIX = "_hub"


def known_backends() -> list[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


def requirement_problem(name: str) -> str | None:
    """Why backend ``name`` cannot run here whatever the shape (unknown, needs a download, its package missing), or
    None when only a probe on the trial's shape can tell. Cheap: no kernel runs."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    if name not in known_backends():
        return f"unknown backend; diffusers offers: {', '.join(known_backends())}"
    if name.endswith(OFFLINE_UNUSABLE_SUFFIX):
        return "downloads its kernel from the Hub at first use; not possible offline"
    if name in kernels.FA3_BACKENDS and kernels.fa3_source() is None:
        return f"no FlashAttention-3 imports here: {kernels.problems()}"
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ImportError) as err:
        return str(err).splitlines()[0][:300]
    return None


def self_attention_shape(
    transformer_config: dict, height: int, width: int, frames: int, spatial: int = 8, temporal: int = 4
) -> tuple[int, int, int, int]:
    """(batch, tokens, heads, head_dim) of the DiT's self-attention for a clip of this size, through a VAE that
    compresses ``spatial`` x ``spatial`` x ``temporal`` (the Wan2.1 VAE of the A14B: 8 and 4; the 5B's: 16 and 4)."""
    t, h, w = transformer_config["patch_size"]
    latent_frames = (frames - 1) // temporal + 1
    tokens = (latent_frames // t) * (height // spatial // h) * (width // spatial // w)
    return 1, tokens, transformer_config["num_attention_heads"], transformer_config["attention_head_dim"]


def pipeline_shape(pipe, workload) -> tuple[int, int, int, int]:
    """``self_attention_shape`` of a diffusers Wan pipeline's experts for ``workload``'s clip."""
    vae = (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal)
    return self_attention_shape(dict(pipe.transformer.config), workload.height, workload.width, workload.frames, *vae)


def probe(name: str, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device, fp8: bool = False) -> dict:
    """Check backend ``name`` on ``shape`` (in FP8 where ``fp8``: kernels.set_fp8_attention); return {"usable",
    "reason", "relative_error", "ms", "kernel" (which FA3 served), ...}."""
    from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend, dispatch_attention_fn

    tolerance = FP8_TOLERANCE if fp8 else TOLERANCE
    report: dict = {"backend": name, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "tolerance": tolerance}
    problem = requirement_problem(name)
    if problem is not None:
        return report | {"usable": False, "reason": problem}
    if name in kernels.FA3_BACKENDS:
        report["kernel"] = kernels.fa3_source()
    if fp8 and name not in kernels.FP8_BACKENDS:
        return report | {"usable": False, "reason": f"no FP8 path for `{name}`; FP8 attention runs on {kernels.FP8_BACKENDS}"}
    if name in kernels.FP8_BACKENDS:
        kernels.set_fp8_attention(fp8)
    if fp8:
        report["fp8"] = "e4m3 q/k/v, one scale per head"
    # Made and compared where they compute: at Wan's shape q, k and v are 157 M values each, drawn and compared in
    # float64 on the host before, and the trials that probed a backend took 5-7 s longer from their first line to a
    # built pipeline than the two that did not (benchmarks/trial_walls.py on benchmarks/results/h100-2026-11-27d/agent-run-bare).
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(3))
    reference = dispatch_attention_fn(q, k, v, backend=AttentionBackendName.NATIVE)
    try:
        with attention_backend(name):
            out = dispatch_attention_fn(q, k, v)  # warm-up (and first-use compilation)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = dispatch_attention_fn(q, k, v)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ms = (time.perf_counter() - t0) * 1000
    except Exception as err:  # missing package, unsupported GPU or dtype, shape constraint: all mean "skip"
        return report | {"usable": False, "reason": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    error = _relative_error(out, reference)
    report |= {"relative_error": error, "ms": ms}
    if not error <= tolerance:  # also catches NaN
        return report | {"usable": False, "reason": f"disagrees with SDPA: relative error {error:.2e} > {tolerance:.0e}"}
    return report | {"usable": True, "reason": f"agrees with SDPA (relative error {error:.2e})"}


def _relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """agent.quality.relative_error on the device: the norms accumulate in float32 without a copy of either tensor."""
    difference = output.float() - reference.float() if output.device.type == "cpu" else output - reference
    norm = torch.linalg.vector_norm
    return float(norm(difference, dtype=torch.float32) / norm(reference, dtype=torch.float32))
