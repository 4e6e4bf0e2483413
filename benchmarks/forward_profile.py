"""What one expert forward, or the VAE decode (``--part decode``), is made of (issue 16): the kernels of a warm call in
a playbook's configuration, from torch.profiler, summed by kind (FP8/bf16 matmuls, convolutions, attention, fused
elementwise from Inductor, casts and copies, the rest), with the twenty costliest kernels. Writes JSON with the
hardware and versions, and prints a Markdown table.

    python benchmarks/forward_profile.py --model a14b --playbook benchmarks/playbooks/a14b-multi-gpu.yaml --out OUT.json
    python benchmarks/forward_profile.py --model a14b --part decode --set vae_decode=compiled --out DECODE.json
    python benchmarks/forward_profile.py --model tiny --playbook tiny --device cpu --out /tmp/profile.json   # smoke
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.files import write_json_atomic  # noqa: E402
from agent.runtime import pipeline, probe  # noqa: E402
from agent.runtime.config import Knobs, Measurement, TrialConfig  # noqa: E402
from agent.runtime.generate import decode, encode  # noqa: E402
from benchmarks import about, baseline_trial  # noqa: E402

# Kernel name -> kind, first match wins (CUDA kernels on a GPU, aten ops on a CPU). Inductor's kernels come first: the
# ones that quantize activations for an FP8 matmul carry `scaled_mm` in their names but are elementwise passes.
KINDS = (
    ("Inductor's Triton kernels (quantization, norms, RoPE, modulation, fused)", r"^triton_"),
    ("attention", r"flash|fmha|attn|attention|sdpa|cudnn.*(sdp|mha)"),
    ("matmul FP8", r"e4m3|f8|fp8|scaled_mm|nvjet\w*_qq"),
    ("convolution", r"conv|fprop|implicit_gemm"),
    ("matmul", r"gemm|xmma|cutlass|nvjet|matmul|addmm|\bmm\b|linear"),
    ("norms", r"norm"),
    ("casts and copies", r"copy|cast|convert|contiguous|memcpy|memset"),
)


def kind(name: str) -> str:
    return next((label for label, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)), "other")


def _profiled(call, device: torch.device, warm: int) -> tuple[dict, float]:
    """Kernel seconds by name over one warm ``call()``, and the call's own time."""
    with torch.inference_mode():
        for _ in range(warm):  # compile, autotune, quantization kernels: out of the profile
            call()
        pipeline.synchronize(device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            stop = probe.timer(device)
            call()
            seconds = stop()
    by_name: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if device.type == "cuda":
            own = event.self_device_time_total if event.device_type == torch.autograd.DeviceType.CUDA else 0.0
        else:
            own = event.self_cpu_time_total
        if own > 0:
            by_name[event.key] += own / 1e6
    return by_name, seconds


def profile_forward(pipe, config: TrialConfig, device: torch.device, warm: int) -> tuple[dict, float]:
    """One conditional forward of the high-noise expert."""
    positive, _, _ = encode(pipe, config, device)
    latents = probe._latents(pipe, config, device, seed=0)
    expert, per_token = pipeline.experts(pipe)[0], bool(pipe.config.expand_timesteps)
    return _profiled(lambda: probe._step(expert, latents, 999.0, positive, None, 1.0, per_token), device, warm)


def profile_decode(pipe, config: TrialConfig, device: torch.device, warm: int) -> tuple[dict, float]:
    """The whole clip's VAE decode, as the pipeline calls it."""
    latents = probe._latents(pipe, config, device, seed=0)
    return _profiled(lambda: decode(pipe, latents), device, warm)


def knob_setting(text: str) -> tuple[str, object]:
    """``--set KNOB=VALUE``, the value read as YAML (``true``, ``2``, ``torchao_tensor``)."""
    name, equals, value = text.partition("=")
    if not equals or name not in Knobs.model_fields:
        raise argparse.ArgumentTypeError(f"{text!r}: give KNOB=VALUE with a knob of {', '.join(Knobs.model_fields)}")
    return name, yaml.safe_load(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="a14b", help="synthetic preset (built on the device)")
    p.add_argument("--playbook", default="benchmarks/playbooks/a14b-multi-gpu.yaml", help="its workload and baseline")
    p.add_argument("--device", default="cuda")
    p.add_argument("--part", choices=("forward", "decode"), default="forward")
    p.add_argument("--warm", type=int, default=2, help="untimed calls first (compilation lands there)")
    p.add_argument("--set", action="append", default=[], type=knob_setting, metavar="KNOB=VALUE", help="over the baseline")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    config = baseline_trial("forward-profile", args.model, args.playbook, args.device, Measurement(warmup=0, repeats=1))
    try:
        knobs = Knobs(**config.knobs.model_dump() | dict(args.set))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        p.error(f"--set: {problems}")
    config = config.model_copy(update={"knobs": knobs})
    pipe, _, _ = pipeline.build(config, device)
    profile = profile_forward if args.part == "forward" else profile_decode
    by_name, seconds = profile(pipe, config, device, args.warm)
    total = sum(by_name.values())
    kinds: dict[str, float] = defaultdict(float)
    for name, s in by_name.items():
        kinds[kind(name)] += s
    top = sorted(by_name.items(), key=lambda item: -item[1])[:20]
    report = about(config, args.model) | {
        "part": args.part,
        "seconds": seconds,
        "kernel_s": total,
        "by_kind_s": dict(sorted(kinds.items(), key=lambda item: -item[1])),
        "top_kernels_s": [{"name": name, "kind": kind(name), "s": s} for name, s in top],
    }
    write_json_atomic(Path(args.out), report)
    print(f"one {args.part} {seconds * 1000:.1f} ms; kernels {total * 1000:.1f} ms ({config.knobs.describe()})\n")
    print("| kind | ms | share |\n| --- | --- | --- |")
    for label, s in report["by_kind_s"].items():
        print(f"| {label} | {s * 1000:.1f} | {100 * s / total:.1f} % |")
    print("\n| kernel | kind | ms |\n| --- | --- | --- |")
    for row in report["top_kernels_s"]:
        print(f"| `{row['name'][:90]}` | {row['kind']} | {row['s'] * 1000:.2f} |")


if __name__ == "__main__":
    main()
