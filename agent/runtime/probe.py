"""Probe mode, and the same-function check.

Probe mode times a few transformer forwards of each expert (CFG included) on the trial's real shapes
instead of a whole clip, and predicts the clip's denoising time from how many steps each expert
takes. The check output is each expert's output on one fixed, seeded input: a same-function rung (FP8,
compile, attention) must reproduce the baseline's within a tolerance.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from agent.runtime.config import TrialConfig
from agent.runtime.generate import decode, expert_for
from agent.runtime.pipeline import experts

CHECK_TIMESTEPS = {"transformer": 999.0, "transformer_2": 500.0}  # one inside each expert's range


def _latents(pipe, config: TrialConfig, device: torch.device, seed: int) -> torch.Tensor:
    work = config.workload
    shape = (1, pipe.transformer.config.in_channels, (work.frames - 1) // 4 + 1, work.height // 8, work.width // 8)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, pipe.transformer.dtype)


def expert_steps(pipe, steps: int) -> dict[str, list[float]]:
    """The timesteps a clip of ``steps`` steps gives each expert."""
    pipe.scheduler.set_timesteps(steps)
    split: dict[str, list[float]] = {"transformer": [], "transformer_2": []}
    for t in pipe.scheduler.timesteps:
        split[expert_for(pipe, t)].append(float(t))
    return split


def timer(device: torch.device):
    """Seconds of work between two calls: CUDA events on a GPU, the host clock otherwise."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()

        def stop() -> float:
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000

        return stop
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def _step(model, latents, timestep, positive, negative, guidance: float) -> torch.Tensor:
    """One denoising step's transformer work: the conditional forward, and the unconditional one under CFG."""
    t = torch.tensor([timestep], device=latents.device)
    out = model(hidden_states=latents, timestep=t, encoder_hidden_states=positive, return_dict=False)[0]
    if guidance > 1.0:
        uncond = model(hidden_states=latents, timestep=t, encoder_hidden_states=negative, return_dict=False)[0]
        out = uncond + guidance * (out - uncond)
    return out


def probe(pipe, config: TrialConfig, device: torch.device, positive, negative, log) -> dict:
    """Warm up, then time ``probe_steps`` steps of each expert; predict the clip's denoising time."""
    knobs, measure = config.knobs, config.measurement
    split = expert_steps(pipe, knobs.steps)
    guidance = {"transformer": knobs.guidance_scale, "transformer_2": knobs.guidance_scale_2}
    latents = _latents(pipe, config, device, seed=config.workload.seed)
    warmup = max(measure.warmup, 1)  # at least one untimed step: first calls compile, autotune, allocate
    report: dict = {"steps": {name: len(ts) for name, ts in split.items()}, "step_s": {}, "first_step_s": {}}
    with torch.inference_mode():
        for name, model in zip(("transformer", "transformer_2"), experts(pipe), strict=False):
            if not split[name]:
                continue
            t = split[name][0]
            times = []
            for i in range(warmup + measure.probe_steps):
                stop = timer(device)
                _step(model, latents, t, positive, negative, guidance[name])
                times.append(stop())
                log(f"  probe {name} step {i + 1}/{warmup + measure.probe_steps} {times[-1]:.3f} s")
            timed = times[warmup:]
            report["first_step_s"][name] = times[0]
            report["step_s"][name] = statistics.median(timed)
            report["spread_s"] = report.get("spread_s", 0.0) + len(split[name]) * (max(timed) - min(timed))
    report["predicted_denoise_s"] = sum(report["steps"][n] * s for n, s in report["step_s"].items())
    # The VAE decode of a clip-sized latent, timed once after a first decode (compile and autotuning land there).
    log("  VAE decode: a first call (cuDNN autotuning), then one timed")
    report["vae_first_decode_s"], report["vae_decode_s"] = _timed_decodes(pipe, latents, device, 2)
    return report


def _timed_decodes(pipe, latents: torch.Tensor, device: torch.device, count: int) -> list[float]:
    times = []
    for _ in range(count):
        stop = timer(device)
        decode(pipe, latents)
        times.append(stop())
    return times


def warm_decoder(pipe, config: TrialConfig, device: torch.device) -> list[float]:
    """Two decodes of a clip-sized latent, timed: a compiled decoder compiles in the first (74 s on an H100 at
    480p, 81 frames) and recompiled part of itself in the second (15 s), so a clip decoded after these two
    finds it warm (1.4 s there). Called only for ``vae_decode: compiled``."""
    return _timed_decodes(pipe, _latents(pipe, config, device, seed=0), device, 2)


def check_decode(pipe, config: TrialConfig, device: torch.device) -> np.ndarray:
    """The VAE's decode of one fixed latent frame, as 8-bit pixels (1, H, W, 3): what the VAE rungs (tiling,
    layout, compile) change, which the experts' check outputs cannot show."""
    latents = _latents(pipe, config, device, seed=4321)[:, :, :1]
    return decode(pipe, latents)[0]


def check_outputs(pipe, config: TrialConfig, device: torch.device, positive) -> dict[str, np.ndarray]:
    """Each expert's output on one fixed input (seeded latents, a fixed timestep in its range, the prompt):
    the same-function rungs are compared on these against the baseline's."""
    latents = _latents(pipe, config, device, seed=1234)
    outputs = {}
    with torch.inference_mode():
        for name, model in zip(("transformer", "transformer_2"), experts(pipe), strict=False):
            out = _step(model, latents, CHECK_TIMESTEPS[name], positive, None, 1.0)
            outputs[name] = out.float().cpu().numpy()
    return outputs
