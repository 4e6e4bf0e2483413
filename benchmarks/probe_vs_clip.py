"""Does probe mode time the step a clip takes? One process, one synthetic model at a playbook's baseline: the probe's
per-step median (agent.runtime.probe.probe) against the steps of a short real clip (agent.runtime.generate).
Writes JSON with the hardware and versions.

    python benchmarks/probe_vs_clip.py --model 5b --playbook 5b --steps 6 --out OUT.json   # ~2 min on an H200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.files import write_json_atomic  # noqa: E402
from agent.runtime import pipeline, probe  # noqa: E402
from agent.runtime.config import Measurement  # noqa: E402
from agent.runtime.generate import encode, generate  # noqa: E402
from benchmarks import about, baseline_trial  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="5b", help="synthetic preset (built on the GPU)")
    p.add_argument("--playbook", default="5b", help="whose workload and baseline knobs to use")
    p.add_argument("--steps", type=int, default=6, help="steps of the real clip (the first is left out as warm-up)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    measurement = Measurement(warmup=1, repeats=1, probe_steps=3)
    config = baseline_trial("probe-vs-clip", args.model, args.playbook, args.device, measurement)
    pipe, _, _ = pipeline.build(config, device)
    positive, negative, _ = encode(pipe, config, device)
    probed = probe.probe(pipe, config, device, positive, negative, print)
    short = config.model_copy(update={"knobs": config.knobs.model_copy(update={"steps": args.steps})})
    clip = generate(pipe, short, device, on_step=lambda i, n, expert, s: print(f"clip step {i + 1}/{n} {expert} {s:.3f} s"))
    clip_step = statistics.median(clip.step_s[1:])
    report = about(config, args.model) | {
        "probe_step_s": probed["step_s"],
        "clip_step_s": clip.step_s,
        "clip_step_median_s": clip_step,
        "probe_over_clip": {name: s / clip_step for name, s in probed["step_s"].items()},
    }
    write_json_atomic(Path(args.out), report)
    print(json.dumps({k: report[k] for k in ("probe_step_s", "clip_step_median_s", "probe_over_clip")}, indent=1))


if __name__ == "__main__":
    main()
