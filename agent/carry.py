"""What a probe-mode trial need not measure again: the VAE decode, where it runs the best trial's decoder unchanged.

A rung that changes only how the experts compute (FP8, compile, attention, Lightning's steps) decodes the same latent
shape with the same VAE, settings, placement and processes as the best trial: timing that decode again costs each such
trial a first call and ``probe_steps`` decodes (~20 s with a tiled decode at 480p on an H100, six trials of a14b's
ladder; benchmarks/results/h100-2026-11-27b) and adds the decode's noise to a comparison it cannot change. Such a trial
takes the best's timed decodes instead, and says so; any other change (the VAE's knobs, the runtime, offloading,
precision, a split over GPUs, the workload) is timed anew. Whole clips (full mode, the confirmation) always are.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.gates import changed
from agent.runtime.config import CarriedDecode, Knobs, Measurement, Workload

DECODER_BLIND = ("fp8", "fp4", "lightning", "steps", "guidance_scale", "guidance_scale_2", "flow_shift", "attention",
                 "attention_fp8", "compile", "inductor_tuning", "text_encoder_on_cpu")  # fmt: skip


def carried_decode(best: dict | None, knobs: Knobs, measurement: Measurement, workload: Workload) -> CarriedDecode | None:
    """The best trial's timed decodes (or those it carried itself), where this probe-mode trial would repeat them."""
    if measurement.mode != "probe" or best is None or best.get("workload") != workload.model_dump():
        return None
    if any(k not in DECODER_BLIND for k in changed(knobs.model_dump(), best["knobs"])):
        return None
    try:
        report = json.loads((Path(best["dir"]) / "result.json").read_text()).get("probe") or {}
    except (OSError, ValueError):  # a best without a readable result times its own: nothing is assumed
        return None
    if not report.get("vae_decode_samples_s"):
        return None
    return CarriedDecode(trial=report.get("vae_decode_from", best["name"]), samples_s=report["vae_decode_samples_s"])
