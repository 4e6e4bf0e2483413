"""Renders journal.md, the run as a person reads it, from the events in journal.jsonl alone."""

from __future__ import annotations

import json
import re

from agent.telemetry import watched_whole


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text`` (a prompt may contain them)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _energy(figures: dict, short: bool = False) -> str:
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


def _memory(figures: dict) -> str:
    if "peak_memory_GiB" not in figures:
        return "n/a"
    return f"{figures['peak_memory_GiB']:.2f} GiB ({figures['peak_memory_kind']})"


def _trial_section(planned: dict, decision: dict | None) -> list[str]:
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
            f"**Figures.** {_fmt_s(decision['generate_s'])} per clip "
            f"({'predicted from probe-mode steps, ' if decision.get('predicted') else ''}median of {decision['repeats']}, spread "
            f"{decision['spread_s']:.3f} s): text encoding {_fmt_s(decision['text_encode_s'])}, denoising "
            f"{_fmt_s(decision['denoise_s'])} ({decision['step_s'] * 1000:.1f} ms/step)"
            f"{_carried(decision, 'steps_from')}, VAE decode {_fmt_s(decision['vae_decode_s'])}"
            f"{_carried(decision, 'vae_decode_from')}; load {_fmt_s(decision['stages'].get('load_s'))}, "
            f"{_first_forwards(decision)}{_vae_compile(decision)}; peak memory "
            f"{_memory(decision)}; energy {_energy(decision)}; on {decision['device']}{_offload(decision)}.",
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
        fence = _fence(decision["log_tail"])
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
    return f"first forwards (compile, quantize, autotune) {_fmt_s(decision['stages'].get('first_forwards_s'))}"


def _vae_compile(decision: dict) -> str:
    seconds = decision["stages"].get("vae_compile_s")
    return "" if seconds is None else f", compiling the VAE decoder {_fmt_s(seconds)}"


def _runtime_environment(name: str, env: dict) -> str:
    if "error" in env:
        return f"- **Runtime `{name}` has no environment:** {env['error']}; its rungs are skipped"
    how = "reused" if env["reused"] else "made"
    line = (
        f"- Runtime `{name}` runs in an environment of its own, {how} from `{env['lock']}` (sha256 {env['lock_sha256'][:12]}) "
        f"over the agent's packages: `{env['path']}`; its `pip freeze` is `{env['freeze']}`"
    )
    if "code_from" in env:  # the official code: a checkout at the pinned commit, or the package
        line += f". Its code: {env['code_from']}" + (f" at `{env['code']}`" if env.get("code") else "")
        line += f" (no checkout: {env['code_error']})" if env.get("code_error") else ""
    return line


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
    return [
        f"**FP8 scales.** Static, {done['granularity']}: {done['layers']} linear layers observed over one calibration "
        f"denoising of {done['calibration_steps']} steps (seed {done['calibration_seed']}, not the measured clips'), "
        f"{done['seconds']:.1f} s of the set-up.",
        "",
    ]


def _cost(cost: dict) -> str:
    """What the search cost, and where the time went."""
    minutes = {k: cost[k] / 60 for k in ("total_s", "trials_s", "setup_s", "measuring_s", "between_trials_s")}
    costliest = cost.get("costliest_setup")
    most = f", the most in {costliest['trial']} ({costliest['s'] / 60:.1f} min)" if costliest else ""
    return (
        f"**Search cost.** {minutes['total_s']:.1f} min from start to converged: {minutes['trials_s']:.1f} min in trials, of "
        f"which {minutes['setup_s']:.1f} setting up (loading, quantizing, compiling{most}) and {minutes['measuring_s']:.1f} "
        f"measuring (warm-up, timed repeats, checks); {minutes['between_trials_s']:.1f} min between trials (planning, "
        "gates, journal, waiting for a busy GPU)."
    )


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


KEPT = {"baseline": "baseline", "kept": "yes", "confirmed": "confirms the winner"}


def _table(decisions: list[dict]) -> list[str]:
    lines = [
        "| configuration | steps | frames | time | speed-up vs baseline | peak memory | energy | kept? |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in decisions:
        speedup = f"{d['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in d else "n/a"
        if d["verdict"] == "changed_workload":  # its own size: no speed-up across different work
            speedup = f"n/a ({d['workload']['width']}×{d['workload']['height']})"
        kept = KEPT.get(d["verdict"], f"no ({d['verdict']})")
        shared = " (shared GPU)" if (d.get("gpu_check") or {}).get("shared") else ""
        lines.append(
            f"| {d['name']}: {d.get('label', '')} | {d['knobs']['steps']} | {(d.get('workload') or {}).get('frames', '')} | "
            f"{_fmt_s(d.get('generate_s'))}{shared} | {speedup} | {_memory(d)} | {_energy(d, short=True)} | {kept} |"
        )
    return lines


def _unresolved(names: list[str], decisions: dict) -> str:
    said = "; ".join(f"{name} {decisions[name]['verdict']}" for name in names if name in decisions)
    return (
        f"{said}. This host was too noisy to settle these verdicts, or the probe's prediction did not hold: the figures "
        "above stand as measured, but run again on a quiet machine before trusting the winner (`wan-agent run` exited 3)."
    )


def _weights(started: dict) -> list[str]:
    """The journal's first word on what the videos can be: noise by design, or the real model's."""
    source = started.get("source")
    if started.get("weights") == "synthetic":
        return [
            f"**Synthetic weights** (`{source}`): the real Wan2.2 architecture with random weights, to measure speed "
            "without downloading. Its videos are noise by design; run without `--synthetic` to render prompts.",
            "",
        ]
    return [f"Real Wan2.2 weights (`{source}`).", ""] if source else []


def _download(d: dict) -> str:
    rate = f" ({d['MB_per_s']} MB/s)" if d.get("MB_per_s") else ""
    fetched = f"{d['fetched_bytes'] / 1e9:.2f} GB fetched in {d['seconds']:.0f} s{rate}"
    if not d["fetched_bytes"]:
        fetched = "already in the cache"
    tried = f"; tried first: {' | '.join(d['tried_before'])}" if d.get("tried_before") else ""
    checked = "sizes and checksums verified"
    if d.get("checksummed", d["files"]) < d["files"]:  # the hub gave no checksum for some
        checked = f"checksums verified for {d['checksummed']} files, sizes only for {d['files'] - d['checksummed']}"
    return (
        f"`{d['repo']}` @ `{d['revision'][:12]}` from {d['hub']} ({d['endpoint']}): {d['files']} files, "
        f"{d['size_bytes'] / 1e9:.2f} GB, {fetched}; {checked}{tried}"
    )


def _start_from(start: dict) -> list[str]:
    if not start:
        return []
    return [f"New hardware for this playbook: the search starts from the best configuration of run `{start['run_id']}` "
            f"({_fmt_s(start['generate_s'])} per clip there; this machine differs in {'; '.join(start['differs'])}), tried "
            f"first as rung `known-best` (`{json.dumps(start['set'])}`), then the rest of the ladder.", ""]  # fmt: skip


def _compared(found: dict) -> list[str]:
    """The run against the previous best of its hardware (agent/history.py), as `wan-agent compare` says it."""
    lines = [
        "## Against the previous best of this hardware",
        "",
        f"Run `{found['a']}` converged on this hardware and clip before.",
    ]
    row = found.get("converged")
    if row:
        lines[-1] += (f" Converged clip: {_fmt_s(row['a_s'])} then, {_fmt_s(row['b_s'])} now ({row['ratio']:.3f}x the time): "
                      f"**{row['verdict']}** ({row['why']}).")  # fmt: skip
    bar = f"{100 * found['min_gain']:g} %"
    if found["regressions"]:
        lines.append(f"**Regression** beyond noise and the {bar} bar: {', '.join(found['regressions'])}.")
    else:
        lines.append(f"No regression beyond noise and the {bar} bar.")
    lines.append("What differs: " + ("; ".join(found["differences"]) or "nothing recorded") + ".")
    return [*lines, ""]


def render_markdown(events: list[dict]) -> str:
    by_kind: dict[str, list[dict]] = {}
    for e in events:
        by_kind.setdefault(e["kind"], []).append(e)
    first = lambda kind: (by_kind.get(kind) or [{}])[0]  # noqa: E731
    started = first("run_started")
    workload = started.get("workload", {})
    prompt = workload.get("prompt", "")
    fence = _fence(prompt)
    lines = [
        f"# wan-agent run {started.get('run_id', '?')}",
        "",
        *_weights(started),
        f"Playbook `{started.get('playbook', '?')}`"
        + (f" ({started['chosen_because']})" if started.get("chosen_because") else "")
        + f"; hardware: {first('probe').get('summary', 'not probed yet')}.",
        "",
        *_start_from(started.get("start_from") or {}),
        f"Workload: {workload.get('width')}×{workload.get('height')}, {workload.get('frames')} frames, "
        f"seed {workload.get('seed')}. Prompt:",
        "",
        fence,
        prompt,
        fence,
        "",
        "## Set-up",
        "",
    ]
    if "provision" in by_kind:
        lines.append("- Environment: " + ", ".join(f"{k} {v}" for k, v in first("provision")["versions"].items()))
        misfits = first("provision").get("fit_problems", [])
        lines += [f"- **Does not fit:** {problem}" for problem in misfits]
        if not misfits and first("probe").get("hardware", {}).get("gpus"):
            lines.append("- Fits the hardware: torch's CUDA build runs on this driver, its kernels cover these GPUs' "
                         "architectures, FP8's torchao is there where FP8 computes, and a bf16 matmul and attention "
                         "ran on each GPU")  # fmt: skip
        lines += [_runtime_environment(name, env) for name, env in (first("provision").get("runtimes") or {}).items()]
    if "fetch" in by_kind:
        model = first("fetch")["model"]
        lora = "yes" if model.get("lightning") else "none"
        lines.append(f"- Model: `{model['spec']}` at `{model['path']}`; Lightning LoRA: {lora}")
        lines += [f"- {_download(d)}" for d in model.get("downloads", [])]
    nvml = first("probe").get("hardware", {}).get("nvml")
    if nvml and nvml != "ok":
        lines.append(f"- Telemetry: NVML {nvml}; CPU and RAM recorded, power, energy and GPU figures not measured")
    elif nvml:
        lines.append("- Telemetry: NVML (power, energy counter, memory, utilisation, SM clock, temperature, throttle reasons)")
    if "patch" in by_kind:
        lines.append(f"- Attention: {first('patch')['attention']['reason']}")
    lines += ["", "## Trials", ""]
    decisions = {e["name"]: e for e in by_kind.get("decision", [])}
    remedies = {e["trial"]: e for e in by_kind.get("remediation", [])}
    for planned in by_kind.get("trial_planned", []):
        lines += _trial_section(planned, decisions.get(planned["trial"]))
        if planned["trial"] in remedies:
            r = remedies[planned["trial"]]
            lines += [
                f"**Remediation.** Rule `{r['rule']}`, attempt {r['attempt']} of {r['of']}: next trial `{r['next']}` "
                f"with `{json.dumps(r['set'])}`.",
                "",
            ]
        if planned["trial"] in decisions:
            decisions[planned["trial"]] |= {"label": planned["label"]}
    for skipped in by_kind.get("rung_skipped", []):
        lines += [f"- Rung `{skipped['rung']}` skipped: {skipped['reason']}.", ""]
    lines += ["## Summary", "", *_table(list(decisions.values())), ""]
    end = first("converged") or first("run_failed")
    if end:
        minutes = end["time_to_converge_s"] / 60
        if end["status"] == "converged":
            lines.append(
                f"Converged on **{end['best']}** after {end['trial_count']} trials in {minutes:.1f} min; "
                f"configuration in `best.yaml`: `{json.dumps(end['knobs'])}`."
            )
            if end.get("unresolved"):
                lines += ["", f"**Unresolved.** {_unresolved(end['unresolved'], decisions)}"]
            if end.get("cost"):
                lines += ["", _cost(end["cost"])]
        else:
            lines.append(f"The run failed after {end['trial_count']} trials ({minutes:.1f} min): no usable baseline.")
    if "compared" in by_kind:
        lines += ["", *_compared(first("compared"))]
    return "\n".join(lines) + "\n"
