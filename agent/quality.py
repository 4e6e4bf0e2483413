"""Output checks that need no reference: finite, not blank, not frozen in time.

A rung whose output fails here is rejected as broken, not as slow. Thresholds are on frames in
[0, 1]; they are deliberately loose, so that only outputs no person would accept fail.
"""

from __future__ import annotations

import numpy as np

BLANK_STD = 0.01  # a frame whose pixels vary less than this is a flat colour
FROZEN_DIFF = 1e-4  # mean absolute change between consecutive frames below this is a still image


def check_frames(frames: np.ndarray) -> dict:
    """Return ``{"passed": bool, "reasons": [...], "std": ..., "temporal_diff": ...}`` for (F, H, W, C) frames."""
    frames = np.asarray(frames, dtype=np.float32)
    reasons: list[str] = []
    finite = bool(np.isfinite(frames).all())
    if not finite:
        reasons.append(f"non-finite values in {int((~np.isfinite(frames)).sum())} of {frames.size} pixels")
        frames = np.nan_to_num(frames, nan=0.0, posinf=1.0, neginf=0.0)
    per_frame_std = frames.reshape(frames.shape[0], -1).std(axis=1)
    blank = int((per_frame_std < BLANK_STD).sum())
    if blank:
        reasons.append(f"{blank} of {frames.shape[0]} frames blank (pixel std < {BLANK_STD})")
    temporal_diff = float(np.abs(np.diff(frames, axis=0)).mean()) if frames.shape[0] > 1 else None
    if temporal_diff is not None and temporal_diff < FROZEN_DIFF:
        reasons.append(f"frozen: mean change between frames {temporal_diff:.2e} < {FROZEN_DIFF:.0e}")
    return {
        "passed": not reasons,
        "reasons": reasons,
        "finite": finite,
        "std": float(per_frame_std.mean()),
        "temporal_diff": temporal_diff,
    }
