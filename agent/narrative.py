"""Renders journal.md, the run as a person reads it, from the events in journal.jsonl alone."""

from __future__ import annotations

import json

from agent.trial_narrative import code_fence, energy, fmt_s, memory, trial_section


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
            f"{fmt_s(d.get('generate_s'))}{shared} | {speedup} | {memory(d)} | {energy(d, short=True)} | {kept} |"
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
            f"({fmt_s(start['generate_s'])} per clip there; this machine differs in {'; '.join(start['differs'])}), tried "
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
        lines[-1] += (f" Converged clip: {fmt_s(row['a_s'])} then, {fmt_s(row['b_s'])} now ({row['ratio']:.3f}x the time): "
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
    fence = code_fence(prompt)
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
        lines += trial_section(planned, decisions.get(planned["trial"]))
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
