"""Which trial settings the official runtime honours: checked at planning (no torch) and again by the worker.

It runs the reference modules as published, with the reference code's own memory savers (``offload: model`` is
``WanT2V.generate``'s ``offload_model``: one expert on the GPU at a time; ``text_encoder_on_cpu`` is its ``t5_cpu``),
plus what applies to any torch module: the Lightning LoRA (fused before conversion), FP8 of the experts' linear
layers, compile of their blocks, an SDPA kernel for the attention stand-in, and cuDNN layout or Inductor for the VAE
decoder. What the reference code has no counterpart for (a tiled decode, group or sequential offloading, FP4) is
refused with the reason, never quietly dropped.
"""

from __future__ import annotations

from agent.runtime.config import Knobs

OFFICIAL_REPO = "https://github.com/Wan-Video/Wan2.2"
OFFICIAL_COMMIT = "42bf4cfaa384bc21833865abc2f9e6c0e67233dc"  # 2026-03-17; its wan/modules, wan/utils = wan22 2.2.11's
CHECKOUT_ENV = "WAN_AGENT_OFFICIAL_CODE"  # a checkout of it, for the trials (else the wan22 package)

# The SDPA kernels the attention stand-in can be held to (diffusers' names for them); "native" lets PyTorch choose.
SDPA_BACKENDS = {"native": None, "_native_cudnn": "CUDNN_ATTENTION", "_native_flash": "FLASH_ATTENTION",
                 "_native_efficient": "EFFICIENT_ATTENTION", "_native_math": "MATH"}  # fmt: skip


def refusal(knobs: Knobs, on_gpu: bool) -> str | None:
    """Why the official runtime cannot run ``knobs`` (on a GPU or not), or None."""
    if knobs.runtime != "official":
        return "fsdp is runtime official's (its --dit_fsdp); diffusers' runtime keeps whole experts" if knobs.fsdp else None
    if not on_gpu and knobs.precision != "fp32":
        return f"runtime official computes {knobs.precision} through CUDA autocast only; on the CPU it needs precision fp32"
    unsupported = {
        "vae_tiling": "the reference VAE decodes untiled (frame by frame in time)",
        "fp4": "no NVFP4 path for the reference modules yet",
    }
    if knobs.fp8 == "torchao_static":  # its bf16 experts, T5 and eager activations overfill an 80 GB card while observed
        return "runtime official does not take fp8=torchao_static: use torchao_row or torchao_tensor (dynamic scales)"
    for name, why in unsupported.items():
        if getattr(knobs, name) not in (False, "none"):
            return f"runtime official does not take {name}={getattr(knobs, name)}: {why}"
    if knobs.offload not in ("none", "auto", "model"):
        return f"runtime official does not take offload={knobs.offload}: the reference code moves whole experts (model)"
    if knobs.cfg_parallel or knobs.vae_parallel or knobs.ring > 1:
        return "runtime official splits a trial by its own sequence parallelism (ulysses): not cfg_parallel, vae_parallel, ring"
    if knobs.ulysses > 1 and knobs.offload == "model":
        return "runtime official with ulysses keeps every expert on every GPU (as its generate.py does): not offload=model"
    if knobs.fsdp and not on_gpu:
        return "runtime official with fsdp places each rank's shard of the experts on its GPU: it needs GPUs"
    if knobs.fsdp and knobs.ulysses == 1:
        return "fsdp shards the experts over the ranks of runtime official's sequence parallelism: set ulysses > 1"
    if knobs.fsdp and (knobs.fp8 != "none" or knobs.compile != "none"):
        return "runtime official with fsdp runs its bf16 experts as its generate.py does: not with fp8 or compile"
    if knobs.attention not in SDPA_BACKENDS:
        return f"runtime official attends through SDPA; attention={knobs.attention} is not one of {', '.join(SDPA_BACKENDS)}"
    return None
