"""Markdown for docs/benchmarks.md from the JSON files benchmarks/a14b.py wrote. Every figure comes from them."""

from __future__ import annotations

import json
from pathlib import Path


def _load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(value, fmt: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{unit}"


def _env(env: dict) -> list[str]:
    v, gpu, memory = env["versions"], env.get("gpu", env["device"]), _f(env.get("memory_GiB"), ".0f")
    return [
        f"Measured on **{gpu}** ({memory} GiB, driver {env.get('driver', 'n/a')}, CUDA {env.get('torch_cuda')}), "
        f"torch {v.get('torch')}, diffusers {v.get('diffusers')}, torchao {v.get('torchao', 'n/a')}, "
        f"transformers {v.get('transformers')}, Python {env['python']}.",
        "",
        f"Measured ceilings (8192³ matmul, median of 10): bf16 {_f(env.get('bf16_matmul_TFLOPs'), '.0f')} TFLOP/s, "
        f"FP8 (`torch._scaled_mm`) {_f(env.get('fp8_matmul_TFLOPs'), '.0f')} TFLOP/s.",
        "",
    ]


def _forward(fwd: dict, env: dict | None) -> list[str]:
    flop = fwd["flop"]
    bf16 = (env or {}).get("bf16_matmul_TFLOPs")
    fp8 = (env or {}).get("fp8_matmul_TFLOPs")
    lines = [
        f"One expert, one forward at the clip's shape ({fwd['tokens']:,} tokens, 512 text tokens): "
        f"{flop['total']:.3g} FLOP ({flop['linear']:.3g} in linear layers, {flop['self_attention']:.3g} in self-attention, "
        f"{flop['cross_attention']:.3g} in cross-attention).",
    ]
    if bf16:
        floor_bf16 = flop["total"] / (bf16 * 1e12)
        lines[-1] += f" Floor at the measured bf16 rate: **{floor_bf16:.2f} s**"
        if fp8:
            floor_fp8 = flop["linear"] / (fp8 * 1e12) + (flop["self_attention"] + flop["cross_attention"]) / (bf16 * 1e12)
            lines[-1] += f"; with FP8 linear layers and bf16 attention: **{floor_fp8:.2f} s**"
        lines[-1] += "."
    lines += [
        "",
        "| rung | forward (median of 3) | achieved TFLOP/s | first call | peak memory | rel. error vs bf16 eager |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in fwd["rungs"]:
        if "error" in r:
            lines.append(f"| {r['rung']} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['rung']} | {r['forward_s']:.3f} s | {r['TFLOPs']:.0f} | {r['first_call_s']:.1f} s | "
            f"{_f(r.get('peak_memory_GiB'), '.1f', ' GiB')} | {r['relative_error_vs_bf16_eager']:.1e} |"
        )
    return [*lines, ""]


def _attention(att: dict) -> list[str]:
    lines = [
        f"Every backend of diffusers' attention dispatch, probed at (batch, tokens, heads, head dim) = "
        f"{tuple(att['shape'])}, bf16, against PyTorch SDPA (tolerance: relative error ≤ {att['tolerance']:.0e}):",
        "",
        "| backend | usable | time per call | rel. error | why |",
        "| --- | --- | --- | --- | --- |",
    ]
    for b in att["backends"]:
        lines.append(
            f"| `{b['backend']}` | {'yes' if b['usable'] else 'no'} | {_f(b.get('ms'), '.1f', ' ms')} | "
            f"{_f(b.get('relative_error'), '.1e')} | {b['reason']} |"
        )
    return [*lines, ""]


def _stage_row(label: str, r: dict) -> str:
    s = r["summary"]
    mem = r["memory"].get("peak_gpu_allocated_GiB")
    energy = s.get("energy_per_clip_J")
    stages = f"{s['text_encode_s']:.2f} s | {s['denoise_s']:.2f} s | {s['vae_decode_s']:.2f} s"
    return (
        f"| {label} | {s['generate_s']:.2f} s | {stages} | {_f(mem, '.1f', ' GiB')} | {_f(energy, '.0f', ' J')} | "
        f"{_knobs(r['config']['knobs'])} |"
    )


def _knobs(k: dict) -> str:
    parts = [
        k["precision"],
        f"fp8={k['fp8']}" if k["fp8"] != "none" else "",
        "Lightning LoRA" if k["lightning"] else "",
        f"{k['steps']} steps",
        f"CFG {k['guidance_scale']:g}/{k['guidance_scale_2']:g}",
        f"shift {k['flow_shift']:g}",
        f"attention {k['attention']}",
        f"compile {k['compile']}" if k["compile"] != "none" else "",
        "UMT5 on CPU" if k["text_encoder_on_cpu"] else "",
    ]
    return ", ".join(p for p in parts if p)


def _clips(clips: dict) -> list[str]:
    lines = [
        "| configuration | clip | text encoding | denoising | VAE decode | peak GPU memory | energy per clip | knobs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base, full, probe = clips.get("baseline_probe"), clips.get("lightning_full"), clips.get("lightning_probe")
    if base:
        lines.append(_stage_row("40-step CFG baseline (extrapolated from probe mode)", base))
    if full:
        lines.append(_stage_row("Lightning, converged (full clips, median)", full))
    if probe:
        lines.append(_stage_row("Lightning (probe mode)", probe))
    lines.append("")
    if full and probe:
        measured, predicted = full["summary"]["denoise_s"], probe["summary"]["denoise_s"]
        lines.append(
            f"Probe mode predicted the Lightning clip's denoising at {predicted:.3f} s; the full clips measured "
            f"{measured:.3f} s: {100 * (predicted - measured) / measured:+.1f} %."
        )
    if base:
        p = base["probe"]
        lines.append(
            f"Baseline steps: {p['steps']['transformer']} high-noise + {p['steps']['transformer_2']} low-noise, each 2 "
            f"forwards (CFG); one step: {p['step_s']['transformer']:.2f} s / {p['step_s']['transformer_2']:.2f} s."
        )
    if base and full:
        lines.append(
            f"Speed-up of the converged configuration over the baseline: "
            f"**{base['summary']['generate_s'] / full['summary']['generate_s']:.1f}×**."
        )
    return [*lines, ""]


def render(out: Path) -> str:
    env, att, fwd, clips = (_load(out, n) for n in ("env", "attention", "forward", "clips"))
    lines = [
        "# Benchmarks: Wan2.2-A14B (synthetic weights, real architecture)",
        "",
        "Produced by `benchmarks/a14b.py` (see benchmarks/README.md); 480×832, 81 frames unless stated. "
        "Random weights, built on the GPU from the real configs: the compute is that of the real model.",
        "",
    ]
    if env:
        lines += ["## Machine", "", *_env(env)]
    if clips:
        lines += ["## Clips", "", *_clips(clips)]
    if fwd:
        lines += ["## One transformer forward per rung", "", *_forward(fwd, env)]
    if att:
        lines += ["## Attention backends", "", *_attention(att)]
    return "\n".join(lines)
