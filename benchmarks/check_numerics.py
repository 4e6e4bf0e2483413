"""Why a same-function rung's check output can move more than the reference's measured noise: the transformer's
check outputs (agent.runtime.probe.check_outputs) under each SDPA kernel, and twice under PyTorch's own choice,
in one process, on a synthetic model at a playbook's workload. Writes JSON with the hardware and versions.

    python benchmarks/check_numerics.py --model 5b --playbook 5b --out OUT.json    # ~1 min on an H200

Reported: which kernel SDPA picks for the self-attention shape, each kernel's check outputs against the default's
(relative L2, worst of the three timesteps), and the half-ulp noise the gate measures, for scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import hardware, playbook  # noqa: E402
from agent.files import write_json_atomic  # noqa: E402
from agent.quality import relative_error  # noqa: E402
from agent.runtime import pipeline, probe  # noqa: E402
from agent.runtime.config import Knobs, Measurement, TrialConfig  # noqa: E402
from agent.runtime.generate import encode  # noqa: E402


def worst(a: dict, b: dict) -> float:
    return max(relative_error(a[k], b[k]) for k in a if "@" in k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="5b", help="synthetic preset (built on the GPU)")
    p.add_argument("--playbook", default="5b", help="whose workload and baseline knobs to use")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    book = playbook.load(args.playbook)
    device = torch.device("cuda")
    config = TrialConfig(
        name="numerics",
        model_path=f"synthetic:{args.model}",
        device="cuda",
        output_dir="/tmp/numerics",
        workload=book.workload,
        knobs=Knobs(**book.baseline.model_dump()),
        measurement=Measurement(warmup=0, repeats=1),
    )
    pipe, _, _ = pipeline.build(config, device)
    positive, _, _ = encode(pipe, config, device)
    cfg = pipe.transformer.config
    latents = probe._latents(pipe, config, device, seed=1234)
    tokens = latents.shape[2] * (latents.shape[3] // cfg.patch_size[1]) * (latents.shape[4] // cfg.patch_size[2])
    q = torch.randn(1, cfg.num_attention_heads, tokens, cfg.attention_head_dim, device=device, dtype=torch.bfloat16)
    report: dict = {
        "hardware": hardware.probe(),
        "versions": hardware.versions(),
        "model": args.model,
        "workload": book.workload.model_dump(),
        "self_attention": {"tokens": tokens, "sdpa_choice": str(torch._fused_sdp_choice(q, q, q))},
    }
    default, _ = probe.check_outputs(pipe, config, device, positive)
    again, _ = probe.check_outputs(pipe, config, device, positive)
    report["default_again"] = worst(again, default)
    kernels = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                outputs, _ = probe.check_outputs(pipe, config, device, positive)
            kernels[name] = worst(outputs, default)
        except RuntimeError as err:
            kernels[name] = f"unusable: {str(err).splitlines()[0][:200]}"
    report["kernel_vs_default"] = kernels
    default["vae_frame"] = probe.check_decode(pipe, config, device)
    report["half_ulp_noise"] = probe.numerical_noise(pipe, config, device, positive, default)
    write_json_atomic(Path(args.out), report)
    print(
        json.dumps({k: report[k] for k in ("self_attention", "default_again", "kernel_vs_default", "half_ulp_noise")}, indent=1)
    )


if __name__ == "__main__":
    main()
