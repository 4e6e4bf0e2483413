"""One trial's section of journal.md (why, configuration, figures, quality, decision), and the formatting of figures
that the run's summary (agent/narrative.py) shares with it."""

from __future__ import annotations

import re

from agent.telemetry import watched_whole


def code_fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text`` (a prompt may contain them)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def energy(figures: dict, short: bool = False) -> str:
    if "energy_per_clip_J" in figures:
        return f"{figures['energy_per_clip_J']:.0f} J" + ("" if short else " per clip")
    if "trial_energy_J" in figures:  # probe mode times no clip: the trial's whole energy, load and compile included
        energy = figures["trial_energy_J"]
        return f"{energy:.0f} J/trial" if short else f"{energy:.0f} J for the whole trial (load and compile included)"
    telemetry = figures.get("telemetry") or {}
    if short:
        return "n/a"
    if not watched_whole(telemetry):
        return "not measured (the agent restarted during this trial and did not watch all of it)"
    return "not measured" if telemetry.get("nvml", "not measured") == "ok" else "not measured (no NVML)"


def memory(figures: dict) -> str:
    if "peak_memory_GiB" not in figures:
        return "n/a"
    return f"{figures['peak_memory_GiB']:.2f} GiB ({figures['peak_memory_kind']})"


def trial_section(planned: dict, decision: dict | None) -> list[str]:
    lines = [f"### {planned['trial']}", "", f"**Why.** {planned['hypothesis']}", "", f"**Configuration.** {planned['label']}"]
    if planned.get("change"):
        changed = ", ".join(f"`{k}` {old} → {new}" for k, (old, new) in planned["change"].items())
        lines[-1] += f" (changed: {changed})"
    if planned.get("workload_changed"):
        change = planned["workload_changed"]
        lines[-1] += f". **Changed workload**: {change['to']} instead of {change['from']} (not a speed-up)"
    if planned.get("measurement_why"):
        lines[-1] += f". Timing: {planned['measurement']['mode']} mode, {planned['measurement_why']}"
        if planned.get("too_noisy"):
            lines[-1] += " **(noisy host)**"
    lines.append("")
    if decision is None:
        return [*lines, "_Running, or interrupted: no decision yet._", ""]
    if "generate_s" in decision:
        lines += [
            f"**Figures.** {fmt_s(decision['generate_s'])} per clip "
            f"({'predicted from probe-mode steps, ' if decision.get('predicted') else ''}median of {decision['repeats']}, spread "
            f"{decision['spread_s']:.3f} s): text encoding {fmt_s(decision['text_encode_s'])}, denoising "
            f"{fmt_s(decision['denoise_s'])} ({decision['step_s'] * 1000:.1f} ms/step)"
            f"{_carried(decision, 'steps_from')}, VAE decode {fmt_s(decision['vae_decode_s'])}"
            f"{_carried(decision, 'vae_decode_from')}; load {fmt_s(decision['stages'].get('load_s'))}, "
            f"{_first_forwards(decision)}{_vae_compile(decision)}; peak memory "
            f"{memory(decision)}; energy {energy(decision)}; on {decision['device']}{_host(decision)}{_offload(decision)}.",
            "",
            f"**Quality.** {_quality(decision)}",
            "",
            *_runtime(decision),
            *_attention(decision),
            *_calibration(decision),
        ]
    if (decision.get("gpu_check") or {}).get("shared"):
        check = decision["gpu_check"]
        seen = "; ".join(check[k] for k in ("before", "during") if k in check)
        lines += [f"**Shared GPU.** Measured while another process used the GPU ({seen}): not this machine's figures.", ""]
    for rerun in decision.get("reruns", []):
        lines += [
            f"**Rerun.** The first attempt ended because {rerun}; the trial ran once more "
            "(its first log is `stdout.attempt1.log`).",
            "",
        ]
    lines += [f"**Decision: {decision['verdict']}.** {decision['reason']}", ""]
    if decision.get("log_tail") and decision["verdict"] == "failed":  # a skip's reason says it all
        fence = code_fence(decision["log_tail"])
        lines += ["Last lines of its log:", "", fence, decision["log_tail"], fence, ""]
    return lines


def _carried(decision: dict, key: str) -> str:
    """Where a probe-mode trial took a part's timings from the best (agent/carry.py)."""
    part = {"vae_decode_from": "decoder", "steps_from": "experts"}[key]
    source = decision.get(key)
    return f" ({source}'s: the same {part}, not timed again)" if source else ""


def _first_forwards(decision: dict) -> str:
    if "first_forwards_s" not in decision["stages"] and decision.get("steps_from"):
        return "no expert forwards (their figures are the best's)"
    return f"first forwards (compile, quantize, autotune) {fmt_s(decision['stages'].get('first_forwards_s'))}"


def _vae_compile(decision: dict) -> str:
    seconds = decision["stages"].get("vae_compile_s")
    return "" if seconds is None else f", compiling the VAE decoder {fmt_s(seconds)}"


def _runtime(decision: dict) -> list[str]:
    """For a trial of the official runtime: the code it ran, and what stood in for flash_attn, checked how."""
    setup = decision.get("setup") or {}
    if "runtime" not in setup:
        return []
    run, patch = setup["runtime"], setup["attention_patch"]
    if patch["patched"]:
        check = patch["check"]
        attention = (
            f"{patch['missing']}, so the DiT's `flash_attention` was replaced by {patch['replacement']}; its start-up check "
            f"on a padded batch against attention over only the valid keys: relative error {check['relative_error']:.1e} "
            f"(tolerance {check['tolerance']:g})"
        )
    else:
        attention = patch["reason"]
    return [
        f"**Runtime.** The official code, {run['code']}: {run['sampling']}; SDPA kernel {run['sdpa_kernel']}. "
        f"Attention: {attention}.",
        "",
    ]


def _attention(decision: dict) -> list[str]:
    """The attention kernel a trial ran (which package served it) and its probe on the trial's shape."""
    probe = (decision.get("setup") or {}).get("attention_probe")
    if not probe:
        return []
    kernel = probe.get("kernel")
    served = f" from {kernel['distribution']} {kernel['version']} (`{kernel['module']}`)" if kernel else ""
    fp8 = f", in FP8 ({probe['fp8']})" if probe.get("fp8") else ""
    shape = "×".join(str(n) for n in probe["shape"])
    return [
        f"**Attention.** `{probe['backend']}`{served}{fp8}: probed on {shape} ({probe['dtype']}), {probe['ms']:.1f} ms a call, "
        f"relative error against SDPA {probe['relative_error']:.1e} (tolerance {probe['tolerance']:g}).",
        "",
    ]


def _calibration(decision: dict) -> list[str]:
    """How static FP8 scales were found (fp8: torchao_static)."""
    done = (decision.get("setup") or {}).get("fp8_calibration")
    if not done:
        return []
    steps, seed = done["calibration_steps"], done["calibration_seed"]
    how = f"one calibration denoising of {steps} steps (seed {seed}, not the measured clips')"
    if "from" in done:
        said = f"with the ranges {done['from']} observed over {how}, loaded (these experts compute as its did)"
    else:
        said = f"observed over {how}"
    return [
        f"**FP8 scales.** Static, {done['granularity']}: {done['layers']} linear layers {said}; "
        f"{done['seconds']:.1f} s of the set-up.",
        "",
    ]


def _host(decision: dict) -> str:
    """Where a trial ran in the run's trial host (agent/trial_host.py): which of its trials it was."""
    hosted = (decision.get("setup") or {}).get("host")
    if not hosted:
        return ""
    n = hosted["trials_before"]
    after = "its first trial" if n == 0 else f"after {n} other trial{'s' if n > 1 else ''}"
    return f", in the run's trial host (pid {hosted['pid']}, {after})"


def _offload(decision: dict) -> str:
    """What ``offload: auto`` chose, and against what memory."""
    setup = decision.get("setup") or {}
    if decision["knobs"].get("offload") != "auto" or "offload" not in setup:
        return ""
    return f". Offload auto chose `{setup['offload']}`: {setup['offload_reason']}"


def _quality(decision: dict) -> str:
    q, fid = decision["quality"], decision.get("fidelity") or {}
    text = "passed" if q["passed"] else "FAILED: " + "; ".join(q["reasons"])
    if "std" in q:
        text += f" (pixel std {q['std']:.3f}, mean change between frames {q['temporal_diff'] or 0:.4f})"
    against = []
    if fid.get("relative_error"):
        worst: dict[str, float] = {}
        for point, error in fid["relative_error"].items():
            expert = point.split("@")[0]
            worst[expert] = max(worst.get(expert, 0.0), error)
        errors = ", ".join(f"{name} {error:.1e}" for name, error in worst.items())
        whose = f"{decision['steps_from']}'s experts, " if decision.get("steps_from") else ""
        against.append(f"transformer output relative error ({whose}worst of its timesteps) {errors}")
    if fid.get("comparable"):
        against.append(f"frames PSNR {fid['psnr_dB']:.1f} dB, SSIM {fid['ssim']:.3f}")
    if (fid.get("vae_frame") or {}).get("comparable"):
        vae = fid["vae_frame"]
        against.append(f"the decoded check frame PSNR {vae['psnr_dB']:.1f} dB, SSIM {vae['ssim']:.3f}")
    if against:
        text += f". Against {fid.get('reference', 'the baseline')}: " + "; ".join(against)
    if decision.get("fidelity_gate"):
        text += f". Gate: {decision['fidelity_gate']['reason']}"
    if fid.get("noise"):
        noise = fid["noise"]
        experts = ", ".join(f"{k} {v:.1e}" for k, v in noise.items() if k.startswith("transformer"))
        text += (
            f". Numerical noise (output moved by a {noise['perturbation']:.1e} input perturbation): {experts}; decoded frame "
            f"{noise['vae_frame_psnr_dB']:.1f} dB"
        )
    return text + "."
