"""Output checks that need no reference: finite, not blank, not frozen in time.

A rung whose output fails here is rejected as broken, not as slow. Thresholds are on frames in
[0, 1]; they are deliberately loose, so that only outputs no person would accept fail.
"""

from __future__ import annotations

import numpy as np

BLANK_STD = 0.01  # a frame whose pixels vary less than this is a flat colour
FROZEN_DIFF = 1e-4  # mean absolute change between consecutive frames below this is a still image


def check_frames(frames: np.ndarray, nonfinite: int = 0) -> dict:
    """Return ``{"passed": bool, "reasons": [...], "std": ..., "temporal_diff": ...}`` for (F, H, W, C) frames,
    float in [0, 1] or uint8; ``nonfinite``: NaN/inf values counted before frames were made 8-bit."""
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    frames = np.asarray(frames, dtype=np.float32) / scale
    reasons: list[str] = []
    nonfinite += int((~np.isfinite(frames)).sum())
    finite = nonfinite == 0
    if not finite:
        reasons.append(f"non-finite values in {nonfinite} of {frames.size} pixels")
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


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of frames in [0, 1] against ``reference`` (inf when identical)."""
    mse = float(np.mean((np.asarray(frames, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(frames: np.ndarray, reference: np.ndarray, window: int = 11, sigma: float = 1.5, chunk: int = 8) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) over frames and channels.

    Frames are (F, H, W, C) in [0, 1]; computed with torch's conv2d so it runs anywhere torch does, ``chunk`` planes
    at a time with the Gaussian applied as two 1-D passes: a whole 81-frame 480p clip in one 11x11 float64 conv2d
    unfolds to ~90 GiB of host memory on the CPU (it took a worker with offloaded experts down).
    """
    import torch
    import torch.nn.functional as F

    def planes(x: np.ndarray) -> torch.Tensor:  # (F*C, 1, H, W)
        t = torch.as_tensor(np.asarray(x, np.float32)).permute(0, 3, 1, 2)
        return t.reshape(-1, 1, *t.shape[2:])

    x_all, y_all = planes(frames), planes(reference)
    size = min(window, x_all.shape[-1], x_all.shape[-2])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    rows, cols = g.view(1, 1, 1, size), g.view(1, 1, size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # the normalised 2-D Gaussian, separably
        return F.conv2d(F.conv2d(t, rows), cols)

    c1, c2 = 0.01**2, 0.03**2
    total, count = 0.0, 0
    for start in range(0, x_all.shape[0], chunk):
        x, y = x_all[start : start + chunk].double(), y_all[start : start + chunk].double()
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x**2
        var_y = blur(y * y) - mu_y**2
        cov = blur(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        total, count = total + float(ssim_map.sum()), count + ssim_map.numel()
    return total / count


def relative_error(output: np.ndarray, reference: np.ndarray) -> float:
    """‖output − reference‖ / ‖reference‖ (the same-function check for FP8, compile, attention)."""
    output, reference = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(output - reference) / np.linalg.norm(reference))


def fidelity(frames: np.ndarray, reference: np.ndarray) -> dict:
    """PSNR and SSIM of a rung's frames against the baseline's frames for the same seed."""
    if np.shape(frames) != np.shape(reference):
        return {"comparable": False, "reason": f"shape {np.shape(frames)} differs from the baseline's {np.shape(reference)}"}
    return {"comparable": True, "psnr_dB": psnr(frames, reference), "ssim": ssim(frames, reference)}
