"""What a probe-mode trial need not measure again, where it runs a part of the best trial unchanged.

- **The VAE decode.** A rung that changes only how the experts compute (FP8, compile, attention, Lightning's steps)
  decodes the same latent shape with the same VAE, settings, placement and processes as the best trial: timing that
  decode again costs each such trial a first call and ``probe_steps`` decodes (~20 s with a tiled decode at 480p on
  an H100, six trials of a14b's ladder; benchmarks/results/h100-2026-11-27b) and adds the decode's noise to a
  comparison it cannot change. Such a trial takes the best's timed decodes instead, and its decoded check frame: it
  does not compile its decoder (13 s from a warm cache, 11-static-fp8 in benchmarks/results/h100-2026-11-27e), unless
  it is a reference trial, which measures its numerical noise on its own decoder.
- **The experts' steps.** A rung that changes only the decode (tiling, layout, a compiled or split decoder) runs the
  best's experts unchanged: their check outputs, compile and probe steps (~40 s a trial there) would time and check
  what the best already did. Such a trial builds them (so that the decode meets the memory they hold) but takes the
  best's timed steps and its experts' check outputs (the same experts: against the reference they differ as the
  best's did, which the gate needs where the best changed them from the reference's knobs). Where
  ``offload: auto`` resolves otherwise than for the best (an untiled decode needs more room), the worker times the
  experts itself (agent/runtime/worker.py).
- **Static FP8 scales.** A trial whose experts compute as the best's (its confirmation, a decode rung after a static-FP8
  best) would calibrate on the very same activations: it loads the best's observed ranges instead of running the
  calibration denoising again (~15 s on an H100 with Lightning, benchmarks/results/h100-2026-11-27d). Set-up, not timed.
What a carried part leaves out, and why it is accepted: the decode is timed in a process whose experts did not run first
(an untiled decode took 2.07 s so on an H100, benchmarks/results/h100-2026-11-27c/agent-run-bare, and 2.09-2.12 s after
the experts' steps in the run before it); the peak memory recorded is the decode's alone (the experts' activations are
the best's figure); a decoder tuned for cuDNN (``cudnn.benchmark``) lets cuDNN choose anew for the experts' patch
embedding too (one convolution of a forward). The confirmation times the winner whole. Each such trial says so in its
journal. Any other change (the runtime, offloading, precision, a split over GPUs, the workload) is timed anew, and whole
clips (full mode, the confirmation) always are.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.gates import VAE_KNOBS, changed
from agent.runtime.config import FP8_SCALES_FILE, CarriedCalibration, CarriedDecode, CarriedSteps, Knobs, Measurement, Workload

DECODER_BLIND = ("fp8", "fp4", "lightning", "steps", "guidance_scale", "guidance_scale_2", "flow_shift", "attention",
                 "attention_fp8", "compile", "inductor_tuning", "text_encoder_on_cpu")  # fmt: skip
EXPERTS_BLIND = VAE_KNOBS  # what changes the decode alone


def _best_probe(best: dict | None, knobs: Knobs, measurement: Measurement, workload: Workload, blind: tuple) -> dict:
    """The best trial's probe report, where this probe-mode trial differs from it only in ``blind`` knobs ({} if not)."""
    if measurement.mode != "probe" or best is None or best.get("workload") != workload.model_dump():
        return {}
    if any(k not in blind for k in changed(knobs.model_dump(), best["knobs"])):
        return {}
    try:
        return json.loads((Path(best["dir"]) / "result.json").read_text()).get("probe") or {}
    except (OSError, ValueError):  # a best without a readable result: this trial times its own, nothing is assumed
        return {}


def carried_decode(best: dict | None, knobs: Knobs, measurement: Measurement, workload: Workload) -> CarriedDecode | None:
    """The best trial's timed decodes (or those it carried itself), where this probe-mode trial would repeat them."""
    report = _best_probe(best, knobs, measurement, workload, DECODER_BLIND)
    if not report.get("vae_decode_samples_s"):
        return None
    assert best is not None
    return CarriedDecode(
        trial=report.get("vae_decode_from", best["name"]), samples_s=report["vae_decode_samples_s"], dir=best["dir"]
    )


def carried_steps(
    best: dict | None, knobs: Knobs, measurement: Measurement, workload: Workload, judged: bool
) -> CarriedSteps | None:
    """The best trial's timed expert steps (or those it carried itself), where this probe-mode trial changes only the
    decode. Only for a trial judged against a reference (``judged``): a reference trial measures its experts' noise."""
    report = _best_probe(best, knobs, measurement, workload, EXPERTS_BLIND) if judged else {}
    if not report.get("step_samples_s") or "offload" not in report:
        return None
    assert best is not None
    return CarriedSteps(
        trial=report.get("steps_from", best["name"]),
        dir=best["dir"],
        offload=report["offload"],
        step_samples_s=report["step_samples_s"],
        swap_s=report.get("swap_s"),
    )


def carried_calibration(best: dict | None, knobs: Knobs, workload: Workload) -> CarriedCalibration | None:
    """The best trial's static FP8 scales, where this trial's experts compute as the best's did (the same knobs but the
    decode's, the same workload: the calibration would observe the very same activations); in any mode, the
    confirmation's included. None where the best calibrated none itself."""
    if best is None or knobs.fp8 != "torchao_static" or best.get("workload") != workload.model_dump():
        return None
    if any(k not in EXPERTS_BLIND for k in changed(knobs.model_dump(), best["knobs"])):
        return None
    path = Path(best["dir"]) / FP8_SCALES_FILE
    return CarriedCalibration(trial=best["name"], path=str(path)) if path.is_file() else None
