"""Builds a diffusers WanPipeline for one trial configuration.

Order matters (../shared/WAN-FACTS.md): the LoRA is loaded and fused before any FP8 cast or
quantization; the pipeline is loaded in the compute dtype so that only the modules diffusers keeps in
fp32 stay fp32; an attention backend is probed on the trial's own shape before it is used.
"""

from __future__ import annotations

import logging
import time

import torch

from agent.capabilities import FP4_COMPUTE_MIN_CAPABILITY, FP8_COMPUTE_MIN_CAPABILITY
from agent.runtime import attention, memory, parallel, parallel_decode
from agent.runtime.config import Knobs, TrialConfig
from agent.runtime.memory import UnsupportedOnHardware
from agent.runtime.official import support
from agent.runtime.vae_decode import tune_vae

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EXPERTS = ("transformer", "transformer_2")


class BackendUnavailable(RuntimeError):
    """The requested attention backend failed its probe (import, run on this shape, or agreement)."""


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UnsupportedOnHardware("device 'cuda' requested but torch sees no CUDA device")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def experts(pipe) -> list:
    return [m for m in (getattr(pipe, name, None) for name in EXPERTS) if m is not None]


def fuse_lightning(pipe, lora: dict) -> None:
    """Load the high-noise LoRA into `transformer`, the low-noise one into `transformer_2`, fuse both, unload."""
    pipe.load_lora_weights(lora["high_noise"], adapter_name="lightning")
    pipe.load_lora_weights(lora["low_noise"], adapter_name="lightning_2", load_into_transformer_2=True)
    # fuse_lora() alone fuses only `transformer`; both experts must be named.
    pipe.fuse_lora(components=list(EXPERTS), lora_scale=1.0)
    pipe.unload_lora_weights()


def apply_fp8(pipe, knobs: Knobs, device: torch.device) -> None:
    if knobs.fp8 == "layerwise":  # storage only: weights in float8, upcast per layer
        for expert in experts(pipe):
            expert.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=DTYPES[knobs.precision])
        return
    require_fp8_cores(knobs, device)
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_
    except ImportError as err:  # the playbook's fp8-compute rule falls back to layerwise storage on this message
        fix = "pip install -e '.[fp8]'"
        raise BackendUnavailable(f"fp8={knobs.fp8} needs torchao, which does not import ({err}): {fix}") from err

    granularity = PerRow() if knobs.fp8 == "torchao_row" else PerTensor()
    for expert in experts(pipe):
        config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity, set_inductor_config=knobs.inductor_tuning)
        quantize_(expert, config, filter_fn=fp8_compute_filter)


def require_fp8_cores(knobs: Knobs, device: torch.device) -> None:
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_COMPUTE_MIN_CAPABILITY:
        raise UnsupportedOnHardware(f"fp8={knobs.fp8} needs CUDA compute capability >= 8.9; this device is {device}")


def _apply_fp4(pipe, device: torch.device) -> None:
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP4_COMPUTE_MIN_CAPABILITY:
        raise UnsupportedOnHardware(f"fp4=nvfp4 needs CUDA compute capability >= 10.0; this device is {device}")
    from torchao.prototype.mx_formats.inference_workflow import NVFP4DynamicActivationNVFP4WeightConfig
    from torchao.quantization import quantize_

    config = NVFP4DynamicActivationNVFP4WeightConfig(use_triton_kernel=False)  # the Triton path needs MSLK
    for expert in experts(pipe):
        quantize_(expert, config, filter_fn=fp8_compute_filter)


def fp8_compute_filter(module: torch.nn.Module, fqn: str) -> bool:
    """The linear layers FP8 compute applies to: those in the transformer blocks, in bf16/fp16. The
    time and text embedders stay in fp32 (diffusers keeps them so), and row-wise FP8 refuses fp32."""
    return (
        isinstance(module, torch.nn.Linear)
        and fqn.startswith("blocks.")
        and module.weight.dtype in (torch.bfloat16, torch.float16)
    )


def _set_attention(pipe, config: TrialConfig, dtype: torch.dtype, device: torch.device) -> dict:
    shape = attention.pipeline_shape(pipe, config.workload)
    report = attention.probe(config.knobs.attention, shape, dtype, device, fp8=config.knobs.attention_fp8)
    if not report["usable"]:
        label = f"{config.knobs.attention}{' in FP8' if config.knobs.attention_fp8 else ''}"
        raise BackendUnavailable(f"attention backend {label!r} skipped: {report['reason']}")
    for expert in experts(pipe):
        expert.set_attention_backend(config.knobs.attention)
    return report


def _compile(pipe, mode: str) -> None:
    for expert in experts(pipe):
        if mode == "regional":  # one block compiled once, reused by all 40: compile time stays short
            expert.compile_repeated_blocks(fullgraph=True)
        else:
            expert.compile()


def load(config: TrialConfig, dtype: torch.dtype, device: torch.device):
    """The pipeline, the offload mode chosen for it (and why), and its Lightning LoRA (paths or tensors)."""
    from diffusers import WanPipeline

    if config.model_path.startswith("synthetic:"):
        from agent.sources import synthetic

        name = config.model_path.split(":", 1)[1]
        skeleton = synthetic.build_pipeline(name, config.model_seed, device="meta", dtype=dtype)  # sizes, no memory
        mode, why = memory.choose(config.knobs.offload, skeleton, config, device)
        home = device if mode == "none" else torch.device("cpu")  # offloaded weights start in host memory
        pipe = synthetic.build_pipeline(name, config.model_seed, device=device, dtype=dtype, home=home)
        lora = None
        if config.knobs.lightning:  # made in memory, shaped like the real files' tensors
            lora = {}
            for offset, role in ((1, "high_noise"), (2, "low_noise")):
                tensors = synthetic.lightning_lora_state_dict(name, config.model_seed + offset, device=device, dtype=dtype)
                lora[role] = {key: t.to(home) for key, t in tensors.items()}
        return pipe, mode, why, lora
    pipe = WanPipeline.from_pretrained(config.model_path, dtype=dtype)
    mode, why = memory.choose(config.knobs.offload, pipe, config, device)
    return pipe, mode, why, config.lora.model_dump() if config.lora else None


def build(config: TrialConfig, device: torch.device) -> tuple[object, dict[str, float], dict]:
    """Load and prepare the pipeline; return it, the seconds each set-up stage took, and the choices made."""
    from diffusers import UniPCMultistepScheduler

    if config.knobs.runtime == "official":
        from agent.runtime.official import pipeline as official

        return official.build(config, device)

    knobs, dtype = config.knobs, DTYPES[config.knobs.precision]
    if (refused := support.refusal(knobs, on_gpu=device.type == "cuda")) is not None:  # planning asks it too
        raise UnsupportedOnHardware(refused)
    if config.gpu_memory_fraction is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, index)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    pipe, offload, offload_reason, lora = load(config, dtype, device)
    synchronize(device)
    stages["load_s"] = time.perf_counter() - t0
    setup: dict = {"offload": offload, "offload_reason": offload_reason}
    if knobs.lightning:
        t0 = time.perf_counter()
        assert lora is not None  # TrialConfig refuses lightning without LoRA files unless the model is synthetic
        fuse_lightning(pipe, lora)
        synchronize(device)
        stages["lora_fuse_s"] = time.perf_counter() - t0
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=knobs.flow_shift)
    if knobs.attention != "native":
        setup["attention_probe"] = _set_attention(pipe, config, dtype, device)
    t0 = time.perf_counter()
    if offload == "none":  # quantize where the weights will run; offloaded ones are quantized in host memory
        memory.place(pipe, offload, device, knobs.text_encoder_on_cpu)
    if knobs.fp8 == "torchao_static":
        from agent.runtime import fp8_static  # it runs the pipeline, whose generate module imports this one

        setup["fp8_calibration"] = fp8_static.quantize(pipe, config, device)
    elif knobs.fp8 != "none":
        apply_fp8(pipe, knobs, device)
    if knobs.fp4 != "none":
        _apply_fp4(pipe, device)
    if knobs.vae_decode != "eager":  # before offloading's hooks, which wrap the forwards it replaces
        tune_vae(pipe.vae, knobs.vae_decode)
    if offload != "none":
        memory.place(pipe, offload, device, knobs.text_encoder_on_cpu)
    if knobs.vae_tiling:
        pipe.vae.enable_tiling()
    ranks = parallel.mesh(knobs) if parallel.world_size(knobs) > 1 else None
    if knobs.ulysses > 1 or knobs.ring > 1:  # before compile: the plan's hooks go on the modules compile wraps
        if (problem := parallel.share_problem(pipe, knobs, config.workload)) is not None:
            raise ValueError(problem)
        setup |= parallel.split_attention(pipe, knobs, ranks)
    if knobs.cfg_parallel:
        setup |= parallel.split_cfg(pipe, ranks)
    if knobs.vae_parallel:
        setup |= parallel_decode.split_decode(pipe)
    if knobs.compile != "none":
        _compile(pipe, knobs.compile)
    synchronize(device)
    stages["prepare_s"] = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    return pipe, stages, setup
