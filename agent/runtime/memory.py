"""Where the pipeline's weights live: all on the accelerator, or offloaded (model, group, sequential).

``offload: auto`` estimates what each mode needs from the components' sizes and the workload's
activations, and picks the cheapest mode that fits the accelerator memory this process may use.
The activation figures are scaled from measurements on an H100: one A14B forward at 32,760 tokens peaks 3.5 GiB
over its weights (../shared/PERF.md), and a bf16 decode of 81×480×832 peaks at 5.0 GiB untiled and 1.9 GiB tiled
(benchmarks/results/h100-2026-11-23/vae.json; diffusers decodes a few latent frames at a time). The whole A14B
pipeline, untiled and resident, peaked at 68.7 GiB there (benchmarks/results/h100-2026-11-26/official/).
"""

from __future__ import annotations

import logging

import torch

from agent.runtime import attention

logger = logging.getLogger(__name__)

COMPONENTS = ("text_encoder", "transformer", "transformer_2", "vae")
DIT_ACTIVATION_FACTOR = 11  # peak activation bytes ≈ factor × tokens × hidden size × element size
# The official DiT keeps its residual stream in float32 and applies RoPE in float64: on an H200 its A14B forward at
# 32,760 tokens peaked 14.2 GiB over its weights (benchmarks/results/h200-2026-11-26/official/), 4x diffusers'.
OFFICIAL_DIT_ACTIVATION_FACTOR = 46
VAE_BYTES_PER_PIXEL_FRAME = 170  # bf16 decode, untiled: 5.0 GiB over 32.3 M pixel-frames
VAE_TILED_SHARE = 0.4  # tiling keeps 1.9 of the 5.0 GiB
GROUP_OFFLOAD_RESIDENT = 2 * 2**30  # leaf-level group offload keeps a few layers resident
FIT_MARGIN = 0.9  # plan against 90 % of the budget: fragmentation, cuBLAS workspaces, CUDA graphs


class UnsupportedOnHardware(RuntimeError):
    """The configuration asks for something this device cannot run (e.g. FP8 compute below sm_89)."""


def module_bytes(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def budget_bytes(device: torch.device, fraction: float | None) -> int:
    """Accelerator memory this process may still use."""
    free, total = torch.cuda.mem_get_info(device)
    if fraction is not None:
        free = min(free, int(fraction * total) - torch.cuda.memory_reserved(device))
    return max(free, 0)


def needs(pipe, workload, vae_tiling: bool, fp8: bool, text_encoder_on_cpu: bool,
          activation_factor: int = DIT_ACTIVATION_FACTOR) -> dict[str, int]:  # fmt: skip
    """Bytes of accelerator memory each offload mode needs for this pipeline and workload."""
    cfg = pipe.transformer.config
    tokens = attention.pipeline_shape(pipe, workload)[1]
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    # The bulk of the weights' dtype: the first parameter may be one kept in float32 (twice the activations).
    element = max(pipe.transformer.parameters(), key=lambda t: t.numel()).element_size()
    dit_act = activation_factor * tokens * hidden * element
    pixel_frames = workload.frames * workload.height * workload.width
    vae_act = VAE_BYTES_PER_PIXEL_FRAME * pixel_frames * (VAE_TILED_SHARE if vae_tiling else 1)
    sizes = {name: module_bytes(getattr(pipe, name, None)) for name in COMPONENTS}
    if fp8:  # FP8 weights take one byte per parameter instead of two
        for name in ("transformer", "transformer_2"):
            sizes[name] //= 2
    if text_encoder_on_cpu:
        sizes["text_encoder"] = 0
    expert = max(sizes["transformer"], sizes["transformer_2"])
    return {
        "none": sum(sizes.values()) + int(max(dit_act, vae_act)),
        "model": int(max(expert + dit_act, sizes["vae"] + vae_act, sizes["text_encoder"])),
        "group": int(max(GROUP_OFFLOAD_RESIDENT + dit_act, sizes["vae"] + vae_act)),
        "sequential": int(max(dit_act, vae_act)),
    }


def choose(requested: str, pipe, config, device: torch.device) -> tuple[str, str]:
    """Resolve the offload mode; return (mode, why)."""
    if device.type != "cuda":
        if requested not in ("none", "auto"):
            raise UnsupportedOnHardware(f"offload={requested} needs an accelerator; this device is {device}")
        return "none", "no accelerator: everything stays in host memory"
    if config.knobs.fp8 == "torchao_static" and requested not in ("none", "auto"):  # fp8_static.py calibrates resident
        raise UnsupportedOnHardware(
            f"fp8=torchao_static calibrates with the experts on the GPU, and offload is {requested}: "
            "use fp8=torchao_row or torchao_tensor, whose scales need no calibration"
        )
    if requested != "auto":
        return requested, "asked for by the configuration"
    knobs = config.knobs
    factor = OFFICIAL_DIT_ACTIVATION_FACTOR if knobs.runtime == "official" else DIT_ACTIVATION_FACTOR
    # Static FP8 scales are calibrated with the experts still in their own precision (fp8_static.py): sized so.
    fp8_weights = knobs.fp8 not in ("none", "torchao_static")
    need = needs(pipe, config.workload, knobs.vae_tiling, fp8_weights, knobs.text_encoder_on_cpu, factor)
    budget = budget_bytes(device, config.gpu_memory_fraction)
    estimates = ", ".join(f"{m} {n / 2**30:.1f}" for m, n in need.items())
    # The official code swaps whole experts (WanT2V's offload_model) and nothing finer.
    modes = ("none", "model") if knobs.runtime == "official" else ("none", "model", "group", "sequential")
    if knobs.fp8 == "torchao_static" and need["none"] > FIT_MARGIN * budget:  # refused before any weight is loaded
        raise UnsupportedOnHardware(
            f"fp8=torchao_static calibrates with the experts resident in {knobs.precision} (~{need['none'] / 2**30:.1f} GiB "
            f"with the rest), more than {budget / 2**30:.1f} GiB free allow: use fp8=torchao_row or torchao_tensor"
        )
    for mode in modes:
        if need[mode] <= FIT_MARGIN * budget:
            return mode, f"needs ~{need[mode] / 2**30:.1f} GiB of {budget / 2**30:.1f} GiB free (GiB needed: {estimates})"
    return modes[-1], f"nothing fits {budget / 2**30:.1f} GiB free (GiB needed: {estimates}); trying {modes[-1]}"


def place(pipe, mode: str, device: torch.device, text_encoder_on_cpu: bool) -> None:
    """Move the pipeline's components where ``mode`` says."""
    keep_on_cpu = {"text_encoder"} if text_encoder_on_cpu else set()
    for name in keep_on_cpu:  # a model built on the device starts there
        getattr(pipe, name).to("cpu")
    if mode == "none":
        for name in COMPONENTS:
            module = getattr(pipe, name, None)
            if module is not None and name not in keep_on_cpu:
                module.to(device)
    elif mode in ("model", "sequential"):
        pipe._exclude_from_cpu_offload = [*getattr(pipe, "_exclude_from_cpu_offload", []), *keep_on_cpu]
        if mode == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
    elif mode == "group":
        from diffusers.hooks import apply_group_offloading

        for name in ("transformer", "transformer_2", "text_encoder"):
            module = getattr(pipe, name, None)
            if module is not None and name not in keep_on_cpu:
                apply_group_offloading(
                    module, onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level", use_stream=True
                )
        pipe.vae.to(device)
    else:
        raise ValueError(f"unknown offload mode {mode!r}")
