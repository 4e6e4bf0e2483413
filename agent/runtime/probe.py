"""Probe mode, and the same-function check.

Probe mode times a few transformer forwards of each expert (CFG included) on the trial's real shapes
instead of a whole clip, and predicts the clip's denoising time from how many steps each expert
takes. The check output is each expert's output on one fixed, seeded input: a same-function rung (FP8,
compile, attention) must reproduce the baseline's within a tolerance. Where the experts stay on the GPU, the probe's
timed steps run at the check timesteps on the check input and give the check outputs too (``checked_steps``): on an
H100 that took 4 expert forwards out of a Lightning trial (benchmarks/results/h100-2026-11-27d).
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch

from agent import stats
from agent.runtime.config import CarriedSteps, TrialConfig
from agent.runtime.generate import boundary_timestep, decode, encode, expert_for
from agent.runtime.pipeline import experts

CHECK_SEED = 1234  # the check outputs' input latents
# The second expert runs the first's code on the same shapes: its first step is a timed sample only where it is no
# slower than the fastest of the expert's others by more than this; else it may have been a first call (a recompile, an
# autotune, a swap onto the GPU) and is untimed, with one more step after it. Against the fastest: a warm first sample
# dropped costs one step, a cold one kept would bias the median, and with two others one noisy sample can hide a cold
# first from the slowest or the median (on an H100 a tiled decode ran 5.19-6.31 s in one trial,
# h100-2026-11-27e/agent-run-bare-2; a tiny trial's on a loaded 2-core machine, far wider). In the A14B
# searches of benchmarks/results/h100-2026-11-27b, -27d and -27e the second expert's first step was within 0.51 % of
# its fastest other (one step a trial saved, 1.8-6.8 s); offloaded, it was 3.7x them (h100-2026-11-26/official-baseline).
# A clip's decode likewise: the baseline's tiled first decode was faster than its next three (h100-2026-11-27e,
# agent-run-bare), the check frames' decodes having warmed its kernels; a channels-last one, tuning cuDNN, was 1.6x them.
COLD_MARGIN = 0.01


def _maybe_cold(samples: list[float]) -> bool:
    """Whether the first of ``samples`` may have been a first call: slower than the fastest other by more than
    ``COLD_MARGIN``."""
    return samples[0] > min(samples[1:]) * (1 + COLD_MARGIN)


def _latents(pipe, config: TrialConfig, device: torch.device, seed: int) -> torch.Tensor:
    work = config.workload
    t, s = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial  # 4 and 8 (Wan2.1 VAE) or 16 (Wan2.2 VAE)
    shape = (1, pipe.transformer.config.in_channels, (work.frames - 1) // t + 1, work.height // s, work.width // s)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, pipe.transformer.dtype)


def expert_steps(pipe, steps: int) -> dict[str, list[float]]:
    """The timesteps a clip of ``steps`` steps gives each expert."""
    pipe.scheduler.set_timesteps(steps)
    split: dict[str, list[float]] = {"transformer": [], "transformer_2": []}
    for t in pipe.scheduler.timesteps:
        split[expert_for(pipe, t)].append(float(t))
    return split


def _scheduler_at(pipe, steps: int, timestep: float):
    """A copy of the pipeline's scheduler set for a clip of ``steps``, ready to take its step at ``timestep``."""
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps, device=pipe._execution_device)
    scheduler._step_index = int((scheduler.timesteps == timestep).nonzero()[0])
    return scheduler


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


def _step(model, latents, timestep, positive, negative, guidance: float, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoising step's transformer work: the conditional forward, and the unconditional one under CFG. With
    ``per_token`` (the 5B's ``expand_timesteps``) the timestep goes in once per latent token, as the pipeline passes
    it (text-to-video: the same value everywhere), so the model computes a modulation per token, as in a clip.
    Returns the guided output and the conditional one (a check output)."""
    if per_token:
        _, p_h, p_w = model.config.patch_size
        tokens = latents.shape[2] * (latents.shape[3] // p_h) * (latents.shape[4] // p_w)
        t = torch.full((latents.shape[0], tokens), float(timestep), device=latents.device)
    else:
        t = torch.tensor([timestep], device=latents.device)
    out = model(hidden_states=latents, timestep=t, encoder_hidden_states=positive, return_dict=False)[0]
    if guidance > 1.0:
        uncond = model(hidden_states=latents, timestep=t, encoder_hidden_states=negative, return_dict=False)[0]
        return uncond + guidance * (out - uncond), out
    return out, out


def _check_output(model, latents, timestep, positive, per_token: bool) -> np.ndarray:
    """The expert's conditional output on ``latents`` at ``timestep``, on the host in float32: a check output."""
    return _step(model, latents, timestep, positive, None, 1.0, per_token)[1].float().cpu().numpy()


def probe(
    pipe,
    config: TrialConfig,
    device: torch.device,
    positive,
    negative,
    log,
    offload: str = "none",
    timed: dict | None = None,
    carried: CarriedSteps | None = None,
) -> dict:
    """Warm up, then time ``probe_steps`` steps of each expert, text encodes and VAE decodes (all warm); predict
    the clip from each set of them: sample i is text_i + Σ_expert steps·step_i + decode_i (+ the expert swaps of a
    clip, when ``offload`` is model: one step of each expert again, right after the other's, less its warm step).
    ``timed``: the experts' steps were already timed, with the check outputs (``checked_steps``).
    ``carried``: the experts are another trial's, unchanged: the median of its timed steps stands for each of theirs
    (agent/carry.py), as the median of a carried decoder's decodes does; a constant, so that neither a repeated sample
    nor the count of another trial enters this trial's spread."""
    knobs, measure = config.knobs, config.measurement
    split = expert_steps(pipe, knobs.steps)
    latents = _latents(pipe, config, device, seed=config.workload.seed)
    count = measure.probe_steps
    report: dict = {"steps": {name: len(ts) for name, ts in split.items()}, "offload": offload}
    if carried is not None:
        log(f"  probe: the same experts as {carried.trial}'s, whose timed steps stand for this trial's")
        report["steps_from"] = carried.trial
        report["step_s"] = {n: statistics.median(s) for n, s in carried.step_samples_s.items()}
        report["step_samples_s"] = {n: [s] * count for n, s in report["step_s"].items()}
        if carried.swap_s is not None:
            report["swap_s"] = carried.swap_s
    elif timed is not None:
        report |= timed
    else:
        report |= _expert_steps(pipe, config, device, positive, negative, log, offload, latents)[1]
    report["predicted_denoise_s"] = sum(report["steps"][n] * s for n, s in report["step_s"].items())
    report["predicted_denoise_s"] += sum(report.get("swap_s", {}).values())
    # The text encoder was already called once (cold: 0.2-0.4 s against 0.05 s warm on an H100); time it warm.
    report["text_encode_samples_s"] = [encode(pipe, config, device)[2] for _ in range(count)]
    if (decoder := config.decode_carried) is not None:
        log(f"  VAE decode: the same decoder as {decoder.trial}'s, whose timed decodes stand for this trial's")
        decodes = [statistics.median(decoder.samples_s)] * count
        report["vae_decode_from"], report["vae_decode_samples_s"] = decoder.trial, decodes
    else:
        log(f"  VAE decode: {count} timed, the first untimed where it proves cold (cuDNN autotuning), one more then")
        decodes = _timed_decodes(pipe, latents, device, count if count > 1 else 2)  # one alone cannot prove itself warm
        if count == 1 or _maybe_cold(decodes):
            report["vae_first_decode_s"] = decodes.pop(0)
            decodes += _timed_decodes(pipe, latents, device, count - len(decodes))
        report["vae_decode_samples_s"] = decodes
    report["vae_decode_s"] = statistics.median(decodes)
    report["clip_samples_s"] = [
        report["text_encode_samples_s"][i]
        + sum(report["steps"][n] * report["step_samples_s"][n][i] for n in report["step_samples_s"])
        + decodes[i]
        + sum(report.get("swap_s", {}).values())
        for i in range(count)
    ]
    return report


def checked_steps(pipe, config: TrialConfig, device: torch.device, positive, negative, log) -> tuple[dict[str, np.ndarray], dict]:
    """The check outputs and the probe's timed expert steps from the same forwards, for experts that stay on the GPU
    between steps (no offload): a step's time does not depend on its timestep or its latents' values, so each timed
    step runs at one of the expert's check timesteps on the check input, and its conditional forward is the check
    output there (``check_outputs``'s, computed once instead of twice). Returns the check outputs and the experts'
    part of the probe's report."""
    latents = _latents(pipe, config, device, seed=CHECK_SEED)
    outputs, report = _expert_steps(pipe, config, device, positive, negative, log, "none", latents, check_timesteps(pipe))
    return outputs, report


def _expert_steps(
    pipe, config: TrialConfig, device, positive, negative, log, offload, latents, checks: dict[str, list[float]] | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """At least one untimed step of the first expert (first calls compile, autotune, allocate), of a later one only
    where its first step proves cold (``COLD_MARGIN``), then ``probe_steps`` timed ones (and, offloaded per model, the
    swaps). With ``checks`` (each expert's check timesteps), max(probe_steps, the check timesteps) steps are timed at
    them in turn (the first ``probe_steps`` are the samples) and their conditional outputs are returned as the check
    outputs (those of an expert the clip does not run too, untimed); the scheduler's update is the clip's own first
    step of the expert, as in the pipeline."""
    knobs, measure = config.knobs, config.measurement
    split = expert_steps(pipe, knobs.steps)
    warmup, count = max(measure.warmup, 1), measure.probe_steps
    guidance = {"transformer": knobs.guidance_scale, "transformer_2": knobs.guidance_scale_2}
    per_token = bool(pipe.config.expand_timesteps)
    state = latents.float()  # the pipeline keeps its latents in float32 between steps
    report: dict = {"step_s": {}, "first_step_s": {}, "step_samples_s": {}}
    outputs: dict[str, np.ndarray] = {}

    def step(name: str, model, at: float | None = None) -> float:
        t = split[name][0]
        scheduler = _scheduler_at(pipe, knobs.steps, t)
        stop = timer(device)
        # As the pipeline's loop does: float32 latents cast for the model, the scheduler's update after it.
        out, cond = _step(model, state.to(model.dtype), t if at is None else at, positive, negative, guidance[name], per_token)
        scheduler.step(out, t, state, return_dict=False)
        seconds = stop()
        if at is not None:
            outputs.setdefault(f"{name}@{at:g}", cond.float().cpu().numpy())
        return seconds

    named = list(zip(("transformer", "transformer_2"), experts(pipe), strict=False))
    warmed = False  # an earlier expert's untimed steps ran the code this one runs (same blocks, same shapes)
    with torch.inference_mode():
        for name, model in named:
            at = (checks or {}).get(name, [])
            if not split[name]:  # the check outputs of an expert no step of the clip runs: not timed
                for t in at:
                    outputs[f"{name}@{t:g}"] = _check_output(model, latents, t, positive, per_token)
                continue
            lead = 0 if warmed and count > 1 else warmup
            times = [step(name, model) for _ in range(lead)]
            times += [step(name, model, at[i % len(at)] if at else None) for i in range(max(count, len(at)))]
            if lead == 0 and _maybe_cold(times):  # a first call after all
                lead = 1
                times.append(step(name, model, at[len(times) % len(at)] if at else None))
            for i, seconds in enumerate(times):
                role = "untimed" if i < lead else "timed" if i < lead + count else "for its check output"
                log(f"  probe {name} step {i + 1}/{len(times)} {seconds:.3f} s ({role})")
            if lead:
                report["first_step_s"][name] = times[0]
            report["step_samples_s"][name] = times[lead : lead + count]
            report["step_s"][name] = statistics.median(report["step_samples_s"][name])
            warmed = True
        named = [(n, m) for n, m in named if split[n]]
        if offload == "model" and len(named) == 2:
            report["swap_s"] = {name: max(step(name, model) - report["step_s"][name], 0.0) for name, model in named}
            log(f"  probe expert swaps {sum(report['swap_s'].values()):.3f} s a clip")
    return outputs, report


def prediction_error(clip_samples: list[float], tolerance: float) -> float:
    """How far a whole clip may land from the median predicted clip, as a fraction: ``tolerance`` for what the
    prediction leaves out (the pipeline's set-up of a clip), plus the noise of one clip against that median."""
    return tolerance + stats.Z * stats.log_sigma(clip_samples) * (1 + stats.MEDIAN_SE**2 / len(clip_samples)) ** 0.5


def _timed_decodes(pipe, latents: torch.Tensor, device: torch.device, count: int) -> list[float]:
    times = []
    for _ in range(count):
        stop = timer(device)
        decode(pipe, latents)
        times.append(stop())
    return times


def warm_decoder(pipe, config: TrialConfig, device: torch.device) -> list[float]:
    """Two decodes of a clip-sized latent, timed: a compiled decoder compiles in the first (60 s on an H100 at
    480p, 81 frames), and the second shows it warm (0.78 s there, benchmarks/results/h100-2026-11-27f) or finishes
    what a decoder traced in pieces recompiles (22 s of 72 s before it was traced whole). Called only for
    ``vae_decode: compiled``."""
    return _timed_decodes(pipe, _latents(pipe, config, device, seed=0), device, 2)


def check_timesteps(pipe) -> dict[str, list[float]]:
    """Three timesteps in each expert's range (its first, middle and last), where the check outputs are taken."""
    b = float(round(boundary_timestep(pipe)))
    if b == 0:  # one expert for the whole range
        return {"transformer": [999.0, 500.0, 100.0], "transformer_2": []}
    return {
        "transformer": [999.0, float(round((999 + b) / 2)), b],
        "transformer_2": [float(round(f * b)) for f in (0.9, 0.5, 0.1)],
    }


def _perturbed(latents: torch.Tensor, relative: float) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(99)).to(latents.device)
    return (latents.float() * (1 + relative * noise)).to(latents.dtype)


def check_decode(pipe, config: TrialConfig, device: torch.device, perturb: float = 0.0) -> np.ndarray:
    """The VAE's decode of one fixed latent frame, as 8-bit pixels (1, H, W, 3): what the VAE rungs (tiling,
    layout, compile) change, which the experts' check outputs cannot show."""
    latents = _latents(pipe, config, device, seed=4321)[:, :, :1]
    return decode(pipe, _perturbed(latents, perturb) if perturb else latents)[0]


def check_outputs(pipe, config: TrialConfig, device: torch.device, positive) -> tuple[dict[str, np.ndarray], float]:
    """Each expert's output on one fixed input (seeded latents, the prompt) at three timesteps in its range, keyed
    ``expert@timestep``, and the seconds its first call took (compile and autotuning land there). Same-function
    rungs are compared on these against the reference trial's."""
    latents = _latents(pipe, config, device, seed=CHECK_SEED)
    outputs, first_s = {}, 0.0
    with torch.inference_mode():
        for name, model in zip(("transformer", "transformer_2"), experts(pipe), strict=False):
            for i, t in enumerate(check_timesteps(pipe)[name]):
                t0 = time.perf_counter()
                outputs[f"{name}@{t:g}"] = _check_output(model, latents, t, positive, pipe.config.expand_timesteps)
                first_s += time.perf_counter() - t0 if i == 0 else 0.0
    return outputs, first_s


def numerical_noise(pipe, config: TrialConfig, device: torch.device, positive, check: dict[str, np.ndarray]) -> dict:
    """How far this configuration's check outputs move when their input moves by half a rounding step of its
    precision: differences of that size are numerics, not another function (on the tiny model in bf16 it is
    the size of bf16's own error against fp32: benchmarks/tiny_noise.py). Measured by reference trials;
    same-function rungs are judged against it."""
    from agent.quality import fidelity, relative_error
    from agent.runtime.pipeline import DTYPES

    half_ulp = torch.finfo(DTYPES[config.knobs.precision]).eps / 2
    latents = _perturbed(_latents(pipe, config, device, seed=CHECK_SEED), half_ulp)
    noise: dict = {"perturbation": half_ulp}
    with torch.inference_mode():
        for name, model in zip(("transformer", "transformer_2"), experts(pipe), strict=False):
            t = check_timesteps(pipe)[name][1]
            moved = _check_output(model, latents, t, positive, pipe.config.expand_timesteps)
            noise[name] = relative_error(moved, check[f"{name}@{t:g}"])
    frame = check_decode(pipe, config, device, perturb=half_ulp)
    noise["vae_frame_psnr_dB"] = fidelity(frame / 255.0, check["vae_frame"] / 255.0)["psnr_dB"]
    return noise
