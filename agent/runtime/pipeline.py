"""Builds a diffusers WanPipeline for one trial configuration and generates a clip, timing every stage.

Order matters (../shared/WAN-FACTS.md): the LoRA is loaded and fused before any FP8 cast or
quantization, and the pipeline is loaded in the compute dtype first so that no module stays fp32.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from agent.runtime.config import Knobs, TrialConfig

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP8_COMPUTE_MIN_CAPABILITY = (8, 9)


class UnsupportedOnHardware(RuntimeError):
    """The configuration asks for something this device cannot run (e.g. FP8 compute below sm_89)."""


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UnsupportedOnHardware("device 'cuda' requested but torch sees no CUDA device")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fuse_lightning(pipe, lora: dict[str, str]) -> None:
    pipe.load_lora_weights(lora["high_noise"], adapter_name="lightning")
    pipe.load_lora_weights(lora["low_noise"], adapter_name="lightning_2", load_into_transformer_2=True)
    # fuse_lora() alone fuses only `transformer`; both experts must be named.
    pipe.fuse_lora(components=["transformer", "transformer_2"], lora_scale=1.0)
    pipe.unload_lora_weights()


def _apply_fp8(pipe, knobs: Knobs, device: torch.device) -> None:
    experts = [pipe.transformer, pipe.transformer_2]
    if knobs.fp8 == "layerwise":
        for expert in experts:
            expert.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=DTYPES[knobs.precision])
        return
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_COMPUTE_MIN_CAPABILITY:
        raise UnsupportedOnHardware(f"fp8={knobs.fp8} needs CUDA compute capability >= 8.9; this device is {device}")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    granularity = PerRow() if knobs.fp8 == "torchao_row" else PerTensor()
    for expert in experts:
        quantize_(expert, Float8DynamicActivationFloat8WeightConfig(granularity=granularity))


def build(config: TrialConfig, device: torch.device) -> tuple[object, dict[str, float]]:
    """Load the pipeline for ``config``; return it with the seconds each set-up stage took."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    pipe = WanPipeline.from_pretrained(config.model_path, dtype=DTYPES[config.knobs.precision])
    stages["load_s"] = time.perf_counter() - t0
    if config.knobs.lightning:
        assert config.lora is not None  # TrialConfig guarantees it
        t0 = time.perf_counter()
        _fuse_lightning(pipe, config.lora.model_dump())
        stages["lora_fuse_s"] = time.perf_counter() - t0
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=config.knobs.flow_shift)
    t0 = time.perf_counter()
    if config.knobs.fp8 != "none":
        _apply_fp8(pipe, config.knobs, device)
    pipe.to(device)
    _synchronize(device)
    stages["to_device_s"] = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    return pipe, stages


@dataclass
class Generation:
    """One generated clip and where its time went."""

    frames: np.ndarray  # (frames, height, width, 3), float in [0, 1]
    text_encode_s: float
    step_s: list[float] = field(default_factory=list)
    step_expert: list[str] = field(default_factory=list)
    vae_decode_s: float = 0.0

    @property
    def denoise_s(self) -> float:
        return sum(self.step_s)

    @property
    def total_s(self) -> float:
        return self.text_encode_s + self.denoise_s + self.vae_decode_s

    def timings(self) -> dict:
        return {
            "text_encode_s": self.text_encode_s,
            "denoise_s": self.denoise_s,
            "vae_decode_s": self.vae_decode_s,
            "total_s": self.total_s,
            "step_s": self.step_s,
            "step_expert": self.step_expert,
        }


def generate(pipe, config: TrialConfig, device: torch.device, on_step: Callable[[int, int, str, float], None]) -> Generation:
    """Generate one clip; ``on_step(index, total, expert, seconds)`` is called after every denoising step."""
    knobs, work = config.knobs, config.workload
    cfg = knobs.guidance_scale > 1.0  # diffusers runs CFG for both experts whenever the first scale is > 1
    t0 = time.perf_counter()
    with torch.inference_mode():
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=work.prompt, negative_prompt=work.negative_prompt, do_classifier_free_guidance=cfg, device=device
        )
    _synchronize(device)
    gen = Generation(frames=np.empty(0), text_encode_s=time.perf_counter() - t0)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    last = [time.perf_counter()]

    def step_end(_pipe, index, timestep, kwargs):
        _synchronize(device)
        now = time.perf_counter()
        expert = "transformer" if float(timestep) >= boundary else "transformer_2"
        gen.step_s.append(now - last[0])
        gen.step_expert.append(expert)
        on_step(index, knobs.steps, expert, now - last[0])
        last[0] = now
        return kwargs

    latents = pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        height=work.height,
        width=work.width,
        num_frames=work.frames,
        num_inference_steps=knobs.steps,
        guidance_scale=knobs.guidance_scale,
        guidance_scale_2=knobs.guidance_scale_2,
        generator=torch.Generator(device="cpu").manual_seed(work.seed),
        output_type="latent",
        callback_on_step_end=step_end,
    ).frames
    t0 = time.perf_counter()
    gen.frames = decode(pipe, latents)
    _synchronize(device)
    gen.vae_decode_s = time.perf_counter() - t0
    return gen


def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Latents to frames in [0, 1], as WanPipeline does after its loop (un-normalise, VAE decode)."""
    vae = pipe.vae
    shape = (1, vae.config.z_dim, 1, 1, 1)
    latents = latents.to(vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents)
    with torch.inference_mode():
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video.float(), output_type="np")
    return frames[0]


def summarize(runs: list[Generation]) -> dict:
    """Median figures over the timed repeats, with their spread (max - min) as the measured noise."""
    totals = [g.total_s for g in runs]
    return {
        "generate_s": statistics.median(totals),
        "spread_s": max(totals) - min(totals),
        "text_encode_s": statistics.median(g.text_encode_s for g in runs),
        "denoise_s": statistics.median(g.denoise_s for g in runs),
        "vae_decode_s": statistics.median(g.vae_decode_s for g in runs),
        "step_s": statistics.median(s for g in runs for s in g.step_s),
        "repeats": len(runs),
    }
