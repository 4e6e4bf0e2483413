"""The same-function gate: a rung that should compute what the reference computes is checked on the output it
changes, against a bound taken from the reference's measured numerical noise.

- Transformer rungs (compile, attention, offload, text encoder placement, precision, FP8): each expert's output
  at three timesteps of its range, as relative error against the reference trial's. Bound: ``noise_multiple``
  times the reference's noise (how far its output moves under a half-rounding-step change of its input), never
  below 0.1 %. A change of runtime is held to this bound too: the official code on the same weights sat 1.7e-2 from
  diffusers' on the synthetic A14B (3x noise: 2.5e-2; benchmarks/official_vs_diffusers.py). Rungs that trade precision
  for speed (precision, FP8, FP4, quantized attention), and any rung
  judged against a reference that computes in FP8/FP4, may go as far as ``decision.max_relative_error`` too: on
  an H200 the same FP8 + compile configuration gave outputs up to 1e-1 apart in two processes (dynamic scales,
  autotuned kernels), so such a reference pins its function no closer than its trade does.
- FP8 attention is a trade judged twice: on the experts' outputs as above, and on the whole clip where one was made
  (full-mode trials), whose PSNR against the reference's clip must reach ``decision.min_psnr_dB``.
- VAE rungs (tiling, decode layout, compiled decoder, decode split over ranks): the decoded check frame, as PSNR
  against the reference's.
  Bound: the reference's own noise PSNR less 20·log10(noise_multiple) dB, never above 45 dB (where 8-bit pixels
  differ by about one level). Tiling (and the split decode, a tile per rank) approximates the decode (tiles blended
  at their seams): with it changed,
  the frame may also go down to ``decision.min_psnr_dB``.
"""

from __future__ import annotations

import math

NOISE_FLOOR = 1e-3
PSNR_CEILING_dB = 45.0
TRADE_KNOBS = ("precision", "fp8", "fp4", "attention_fp8")
VAE_KNOBS = ("vae_tiling", "vae_decode", "vae_parallel")
VAE_TRADE_KNOBS = ("vae_tiling", "vae_parallel")
CLIP_TRADE_KNOBS = ("attention_fp8",)  # trades judged on the whole decoded clip too, where one was made (full mode)


def changed(knobs: dict, reference_knobs: dict) -> list[str]:
    return sorted(k for k, v in knobs.items() if reference_knobs.get(k) != v)


def trades_precision(knobs: dict, reference_knobs: dict) -> bool:
    """Whether the change is a deliberate numerical trade (lower precision, quantized attention), or the reference
    itself computes in FP8/FP4 (its output is pinned no closer than that trade)."""
    changes = changed(knobs, reference_knobs)
    quantized_attention = "attention" in changes and any(word in knobs["attention"] for word in ("sage", "fp8", "int8"))
    # FP8/FP4 *compute* (dynamic activation scales, autotuned kernels); layerwise storage is deterministic.
    low_precision_reference = (
        reference_knobs.get("fp8", "none").startswith("torchao")
        or reference_knobs.get("fp4", "none") != "none"
        or reference_knobs.get("attention_fp8", False)
    )
    return quantized_attention or low_precision_reference or any(k in TRADE_KNOBS for k in changes)


def check(fidelity: dict, noise: dict | None, knobs: dict, reference_knobs: dict, decision: dict) -> dict:
    """``{"passed", "reason", "bounds"}`` for a same-function trial; ``noise`` is the reference's, None if unmeasured."""
    changes = changed(knobs, reference_knobs)
    multiple = decision["noise_multiple"]
    bounds: dict = {}
    failures: list[str] = []
    errors: dict[str, float] = fidelity.get("relative_error") or {}
    if any(k not in VAE_KNOBS for k in changes):
        if not errors:
            return {"passed": False, "reason": "same-function rung without a fidelity measurement against its reference"}
        budget = decision["max_relative_error"] if trades_precision(knobs, reference_knobs) else 0.0
        for point, error in errors.items():
            expert = point.split("@")[0]
            measured = (noise or {}).get(expert)
            bound = max(NOISE_FLOOR, multiple * measured, budget) if measured is not None else decision["max_relative_error"]
            bounds[expert] = bound
            if not error <= bound:  # NaN fails too
                failures.append(f"{point} output differs from the reference's by {error:.1e} (relative), more than {bound:.1e}")
    if any(k in VAE_KNOBS for k in changes):
        frame = fidelity.get("vae_frame") or {}
        noise_psnr = (noise or {}).get("vae_frame_psnr_dB")
        if not frame.get("comparable"):
            failures.append("the decoded check frame could not be compared with the reference's")
        else:
            # Without a measured noise (a reference from an older run), the playbook's floor.
            bound = (
                decision["min_psnr_dB"] if noise_psnr is None else min(PSNR_CEILING_dB, noise_psnr - 20 * math.log10(multiple))
            )
            if any(k in VAE_TRADE_KNOBS for k in changes):
                bound = min(bound, decision["min_psnr_dB"])
            bounds["vae_frame_psnr_dB"] = bound
            if not frame["psnr_dB"] >= bound:
                failures.append(
                    f"its decoded check frame is at {frame['psnr_dB']:.1f} dB PSNR from the reference's, below {bound:.1f} dB"
                )
    if any(k in CLIP_TRADE_KNOBS for k in changes) and fidelity.get("comparable") and "psnr_dB" in fidelity:
        bounds["clip_psnr_dB"] = floor = decision["min_psnr_dB"]
        if not fidelity["psnr_dB"] >= floor:
            failures.append(f"its clip is at {fidelity['psnr_dB']:.1f} dB PSNR from the reference's, below {floor:.1f} dB")
    if not noise:
        where = "no noise measured by the reference, so the playbook's max_relative_error"
    elif trades_precision(knobs, reference_knobs) or any(k in VAE_TRADE_KNOBS for k in changes):
        where = (
            f"a precision trade: the playbook's budget (max_relative_error, min_psnr_dB), or {multiple:g}x the reference's noise"
        )
    else:
        where = f"{multiple:g}x the reference's measured numerical noise"
    if failures:
        return {"passed": False, "bounds": bounds, "reason": "computes a different function: " + "; ".join(failures)}
    return {"passed": True, "bounds": bounds, "reason": f"same function within {_describe(bounds)} ({where})"}


def _describe(bounds: dict) -> str:
    labels = {"vae_frame_psnr_dB": "frame PSNR >= {:.1f} dB", "clip_psnr_dB": "clip PSNR >= {:.1f} dB"}
    return ", ".join(labels[k].format(v) if k in labels else f"{k} error <= {v:.1e}" for k, v in bounds.items())
