"""Generates one clip with a prepared pipeline, timing text encoding, every denoising step and the VAE decode.

CFG per expert: diffusers decides CFG for every step from the first guidance scale (WAN-FACTS), so an
expert at guidance 1.0 would still run its unconditional forward and then weight it by zero. We flip
the pipeline's ``_guidance_scale`` at the expert switch so that such an expert skips that forward.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from agent.runtime import parallel
from agent.runtime.config import TrialConfig
from agent.runtime.pipeline import synchronize

OnStep = Callable[[int, int, str, float], None]
# Wan2.2's text context: prompts padded to 512 tokens, as WanPipeline.__call__ and the official code (text_len) do.
# encode_prompt's own default is 226: the experts then cross-attend over another context (other outputs, less work).
TEXT_LEN = 512


@dataclass
class Generation:
    """One generated clip and where its time went."""

    frames: np.ndarray  # (frames, height, width, 3), uint8
    text_encode_s: float
    nonfinite: int = 0  # NaN/inf values the VAE produced (lost in the 8-bit frames, so counted before)
    step_s: list[float] = field(default_factory=list)
    step_expert: list[str] = field(default_factory=list)
    vae_decode_s: float = 0.0
    # From the last step's end to the pipeline's return: offloading experts before the decode (the official code's
    # offload_model moved both to host memory there: ~20 s on an H100), hooks freed. Part of denoising.
    after_steps_s: float = 0.0

    @property
    def denoise_s(self) -> float:
        return sum(self.step_s) + self.after_steps_s

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
            "after_steps_s": self.after_steps_s,
            "step_expert": self.step_expert,
        }


def boundary_timestep(pipe) -> float:
    """Where the low-noise expert takes over; 0 for a single-expert model (the 5B), whose one expert takes all."""
    return (pipe.config.boundary_ratio or 0.0) * pipe.scheduler.config.num_train_timesteps


def expert_for(pipe, timestep) -> str:
    return "transformer" if float(timestep) >= boundary_timestep(pipe) else "transformer_2"


def two_experts(pipe) -> bool:
    return pipe.config.boundary_ratio is not None


def encode(pipe, config: TrialConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Prompt (and, if either expert runs CFG, negative prompt) embeddings on ``device``, and the seconds it took."""
    knobs, work = config.knobs, config.workload
    cfg = max(knobs.guidance_scale, knobs.guidance_scale_2 if two_experts(pipe) else 0.0) > 1.0
    text_device = torch.device("cpu") if knobs.text_encoder_on_cpu else device
    t0 = time.perf_counter()
    with torch.inference_mode():
        positive, negative = pipe.encode_prompt(
            prompt=work.prompt,
            negative_prompt=work.negative_prompt,
            do_classifier_free_guidance=cfg,
            device=text_device,
            max_sequence_length=TEXT_LEN,
        )
    positive = positive.to(device)
    negative = negative.to(device) if negative is not None else None
    synchronize(device)
    parallel.remember_negative(pipe, negative)  # CFG parallelism's second rank computes the unconditional branch
    return positive, negative, time.perf_counter() - t0


def generate(pipe, config: TrialConfig, device: torch.device, on_step: OnStep) -> Generation:
    """Generate one clip; ``on_step(index, total, expert, seconds)`` is called after every denoising step."""
    knobs = config.knobs
    positive, negative, text_s = encode(pipe, config, device)
    gen = Generation(frames=np.empty(0), text_encode_s=text_s)
    switch = guidance_switch(knobs)
    last = [time.perf_counter()]

    def step_end(pipeline, index, timestep, kwargs):
        synchronize(device)
        now = time.perf_counter()
        expert = expert_for(pipeline, timestep)
        gen.step_s.append(now - last[0])
        gen.step_expert.append(expert)
        on_step(index, knobs.steps, expert, now - last[0])
        switch(pipeline, index, timestep, kwargs)
        last[0] = time.perf_counter()
        return kwargs

    latents = denoise(pipe, config, positive, negative, knobs.steps, config.workload.seed, step_end)
    synchronize(device)
    gen.after_steps_s = time.perf_counter() - last[0]
    t0 = time.perf_counter()
    gen.frames, gen.nonfinite = decode(pipe, latents)
    synchronize(device)
    gen.vae_decode_s = time.perf_counter() - t0
    return gen


def guidance_switch(knobs):
    """A step-end callback that turns CFG on or off for the expert that takes the next step (see the module's doc)."""
    guidance = {"transformer": knobs.guidance_scale, "transformer_2": knobs.guidance_scale_2}

    def switch(pipeline, index, timestep, kwargs):
        timesteps = pipeline.scheduler.timesteps
        if index + 1 < len(timesteps):
            pipeline._guidance_scale = guidance[expert_for(pipeline, timesteps[index + 1])]
        return kwargs

    return switch


def denoise(pipe, config: TrialConfig, positive, negative, steps: int, seed: int, step_end) -> torch.Tensor:
    """The denoising loop of ``config``'s workload in ``steps`` steps from ``seed``'s noise; the final latents."""
    knobs, work = config.knobs, config.workload
    return pipe(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=work.height,
        width=work.width,
        num_frames=work.frames,
        num_inference_steps=steps,
        guidance_scale=knobs.guidance_scale,
        # A one-expert model (the 5B) has no low-noise expert, and diffusers refuses a second scale for it.
        **({"guidance_scale_2": knobs.guidance_scale_2} if two_experts(pipe) else {}),
        generator=torch.Generator(device="cpu").manual_seed(seed),
        output_type="latent",
        callback_on_step_end=step_end,
    ).frames


def decode(pipe, latents: torch.Tensor) -> tuple[np.ndarray, int]:
    """Latents to 8-bit frames (frames, height, width, 3), and how many values came out NaN or inf.

    As WanPipeline does after its loop (un-normalise, VAE decode, [-1, 1] -> [0, 255]), except that the
    conversion runs on the accelerator: diffusers' postprocess copies a float32 clip (390 MB at 480p, 81
    frames) to host memory and converts it there, which is part of the clip's time. 8-bit frames come back
    (97 MB), through page-locked memory.
    """
    vae = pipe.vae
    shape = (1, vae.config.z_dim, 1, 1, 1)
    latents = latents.to(vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents)
    with torch.inference_mode():
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0][0]  # (3, frames, height, width)
        nonfinite = int((~torch.isfinite(video)).sum())
        pixels = ((video.float().nan_to_num(-1.0, 1.0, -1.0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        pixels = pixels.permute(1, 2, 3, 0)
        if not pixels.is_cuda:
            return pixels.numpy(), nonfinite
        # Into page-locked memory, which the frames then live in: straight to pageable memory the copy ran at ~1.4 GB/s,
        # 70 ms of an H200's 0.8 s decode (benchmarks/results/h200x2-2026-11-27/decode-compiled.md), and a fresh
        # pageable array faults in each of its pages on first touch. torch's caching host allocator hands the block
        # back for the next clip once these frames are dropped (worker.py keeps only the last clip's).
        frames = torch.empty(tuple(pixels.shape), dtype=torch.uint8, pin_memory=True)
        return frames.copy_(pixels).numpy(), nonfinite


def summarize(runs: list[Generation]) -> dict:
    """Median figures over the timed repeats, the repeats themselves (the verdicts' statistics use them) and their spread."""
    totals = [g.total_s for g in runs]
    return {
        "generate_s": statistics.median(totals),
        "samples_s": totals,
        "spread_s": max(totals) - min(totals),
        "text_encode_s": statistics.median(g.text_encode_s for g in runs),
        "denoise_s": statistics.median(g.denoise_s for g in runs),
        "vae_decode_s": statistics.median(g.vae_decode_s for g in runs),
        "step_s": statistics.median(s for g in runs for s in g.step_s),
        "repeats": len(runs),
    }
