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
        "| rung | forward (median of 3) | achieved TFLOP/s | first call | peak memory | rel. error vs bf16 eager | run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in fwd["rungs"]:
        run = r.get("run", "")
        if "error" in r:
            lines.append(f"| {r['rung']} | failed: {r['error']} | | | | | {run} |")
            continue
        lines.append(
            f"| {r['rung']} | {r['forward_s']:.3f} s | {r['TFLOPs']:.0f} | {r['first_call_s']:.1f} s | "
            f"{_f(r.get('peak_memory_GiB'), '.1f', ' GiB')} | {_f(r['relative_error_vs_bf16_eager'], '.1e')} | {run} |"
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


def _vae(vae: dict, env: dict | None) -> list[str]:
    bf16 = (env or {}).get("bf16_matmul_TFLOPs")
    lines = [
        f"The VAE decode alone (`AutoencoderKLWan`, bf16, latents {tuple(vae['latent'])} to 81 frames at 480×832): "
        f"{vae['flop'] / 1e12:.0f} TFLOP, nearly all conv3d"
        + (f"; at the measured bf16 matmul rate that is {vae['flop'] / (bf16 * 1e12):.2f} s." if bf16 else "."),
        "",
        "| variant | decode (median of 3) | achieved TFLOP/s | first call | peak memory | rel. error vs eager |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in vae["variants"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['variant']} | {r['decode_s']:.2f} s | {r['TFLOPs']:.0f} | {r['first_call_s']:.1f} s | "
            f"{_f(r.get('peak_memory_GiB'), '.1f', ' GiB')} | {r['relative_error_vs_eager']:.1e} |"
        )
    return [*lines, ""]


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
        "VAE tiling" if k["vae_tiling"] else "",
        f"VAE decode {k['vae_decode']}" if k.get("vae_decode", "eager") != "eager" else "",
        "UMT5 on CPU" if k["text_encoder_on_cpu"] else "",
    ]
    return ", ".join(p for p in parts if p)


def _clips(base: dict | None, fast: dict | None) -> list[str]:
    lines = [
        "| configuration | clip | text encoding | denoising | VAE decode | peak GPU memory | energy per clip |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r, memory in (
        (
            "40-step CFG baseline: extrapolated from probe mode",
            base,
            (base or {}).get("memory", {}).get("peak_gpu_allocated_GiB"),
        ),
        ("Lightning, converged: full clips, median", fast, (fast or {}).get("peak_gpu_allocated_GiB")),
    ):
        if r is None:
            continue
        s = r["summary"]
        lines.append(
            f"| {label} | **{s['generate_s']:.2f} s** | {s['text_encode_s']:.2f} s | {s['denoise_s']:.2f} s | "
            f"{s['vae_decode_s']:.2f} s | {_f(memory, '.1f', ' GiB')} | {_f(s.get('energy_per_clip_J'), '.0f', ' J')} |"
        )
    lines.append("")
    if base:
        knobs = base.get("config", {}).get("knobs")
        lines.append(
            f"- Baseline: {_knobs(knobs) if knobs else 'bf16, 40 steps, CFG 4/3, shift 3, attention native, VAE tiling'}; "
            f"{s_steps(base)}"
        )
    if fast:
        lines.append(
            f"- Lightning: {_knobs(fast['config']['knobs'])}; {fast['summary']['repeats']} clips after one warm-up "
            f"(spread {fast['summary']['spread_s']:.2f} s). Set-up: built in {fast['build_s']:.0f} s, "
            f"first call of each expert (FP8 quantization kernels, Inductor compile) {fast['first_forwards_s']:.0f} s"
            + (
                f", compiling the VAE decoder {' + '.join(f'{t:.0f}' for t in fast['vae_compile_s'])} s (two decodes)."
                if "vae_compile_s" in fast
                else "."
            )
        )
        if "probe" in fast:
            measured, predicted = fast["summary"]["denoise_s"], fast["probe"]["predicted_denoise_s"]
            lines.append(
                f"- Probe mode on the same pipeline predicted the denoising at {predicted:.3f} s against {measured:.3f} s "
                f"measured over full clips: {100 * (predicted - measured) / measured:+.1f} %."
            )
    if base and fast:
        lines.append(
            f"- Speed-up of the converged configuration over the baseline: "
            f"**{base['summary']['generate_s'] / fast['summary']['generate_s']:.1f}×**."
        )
    return [*lines, ""]


def s_steps(base: dict) -> str:
    s = base["summary"]
    return f"one denoising step (two forwards, CFG) {s['step_s']:.2f} s, measured over {s['repeats']} steps per expert."


def _gap(fast: dict, fwd: dict, env: dict, att: dict | None, vae: dict | None) -> list[str]:
    """Where the Lightning clip's time goes, against the floor from the measured ceilings."""
    flop, bf16, fp8 = fwd["flop"], env["bf16_matmul_TFLOPs"] * 1e12, env["fp8_matmul_TFLOPs"] * 1e12
    attn_flop = flop["self_attention"] + flop["cross_attention"]
    floor = flop["linear"] / fp8 + attn_flop / bf16
    floor_fp8_attn = flop["total"] / fp8
    s, steps = fast["summary"], fast["config"]["knobs"]["steps"]
    per_step = s["denoise_s"] / steps
    layers = 40
    sdpa = next((b["ms"] for b in (att or {}).get("backends", []) if b["backend"] == fast["config"]["knobs"]["attention"]), None)
    lines = [
        f"Per denoising step the converged configuration takes {per_step:.2f} s; the floor for one forward with FP8 linear "
        f"layers and bf16 attention, at the measured ceilings, is {floor:.2f} s ({flop['linear'] / fp8:.2f} s of linear "
        f"layers, {attn_flop / bf16:.2f} s of attention), and {floor_fp8_attn:.2f} s with FP8 attention as well. "
        f"Four steps at that floor are {steps * floor:.1f} s against {s['denoise_s']:.1f} s measured."
    ]
    if sdpa:
        attn_s = layers * sdpa / 1000
        lines.append(
            f"Self-attention alone (the `{fast['config']['knobs']['attention']}` kernel, {sdpa:.1f} ms a layer, "
            f"{flop['self_attention'] / layers / (sdpa / 1000) / 1e12:.0f} TFLOP/s) costs {attn_s:.2f} s of each step; "
            f"the remaining {per_step - attn_s:.2f} s is the FP8 linear layers (floor {flop['linear'] / fp8:.2f} s), "
            f"the quantisation of activations, norms, RoPE and modulation."
        )
    decode = fast["config"]["knobs"].get("vae_decode", "eager")
    vae_floor = f"; its {vae['flop'] / 1e12:.0f} TFLOP at the bf16 rate take {vae['flop'] / bf16:.2f} s" if vae else ""
    lines.append(
        f"The clip's other terms: VAE decode {s['vae_decode_s']:.2f} s (bf16, untiled, {decode}, 8-bit frames "
        f"copied to host memory{vae_floor}), text encoding {s['text_encode_s']:.2f} s. So of {s['generate_s']:.2f} s, "
        f"{s['denoise_s'] - steps * floor:.1f} s is the DiT above its floor and {s['vae_decode_s']:.1f} s the VAE."
    )
    return [*lines, ""]


def render(out: Path) -> str:
    env, att, fwd, base, fast, vae = (_load(out, n) for n in ("env", "attention", "forward", "baseline", "lightning", "vae"))
    lines = [
        "# Benchmarks: Wan2.2-A14B (synthetic weights, real architecture)",
        "",
        f"Produced by `benchmarks/a14b.py` from the JSON files in `{out}` (see benchmarks/README.md). "
        "480×832, 81 frames (21 latent frames, 32,760 tokens). Random weights built on the GPU from the real "
        "configs: the compute is that of the real model, the pictures are noise.",
        "",
    ]
    if env:
        lines += ["## Machine", "", *_env(env)]
    if base or fast:
        lines += ["## One clip", "", *_clips(base, fast)]
    if fast and fwd and env:
        lines += ["## The gap to the floor", "", *_gap(fast, fwd, env, att, vae)]
    if fwd:
        lines += ["## One transformer forward per rung", "", *_forward(fwd, env)]
    if vae:
        lines += ["## VAE decode per variant", "", *_vae(vae, env)]
    if att:
        lines += ["## Attention backends", "", *_attention(att)]
    if (out / "NOTES.md").exists():
        lines += [(out / "NOTES.md").read_text()]
    return "\n".join(lines)
