import numpy as np
import pytest

from agent.quality import check_frames

rng = np.random.default_rng(0)


def test_moving_noise_passes():
    report = check_frames(rng.random((9, 16, 16, 3)))
    assert report["passed"] and report["reasons"] == []


def test_nan_frames_fail():
    frames = rng.random((9, 16, 16, 3))
    frames[3, 2, 2, 0] = np.nan
    report = check_frames(frames)
    assert not report["passed"] and not report["finite"] and "non-finite" in report["reasons"][0]


def test_blank_frames_fail():
    frames = rng.random((9, 16, 16, 3))
    frames[:4] = 0.5
    report = check_frames(frames)
    assert not report["passed"] and "4 of 9 frames blank" in report["reasons"][0]


def test_frozen_video_fails():
    frames = np.repeat(rng.random((1, 16, 16, 3)), 9, axis=0)
    report = check_frames(frames)
    assert not report["passed"] and report["reasons"][0].startswith("frozen")


def test_psnr_and_ssim_are_perfect_for_identical_frames_and_drop_with_noise():
    from agent.quality import fidelity, psnr, ssim

    ref = rng.random((3, 32, 32, 3))
    assert psnr(ref, ref) == float("inf")
    assert ssim(ref, ref) == pytest.approx(1.0)
    slightly = np.clip(ref + rng.normal(0, 0.01, ref.shape), 0, 1)
    badly = np.clip(ref + rng.normal(0, 0.2, ref.shape), 0, 1)
    assert psnr(slightly, ref) == pytest.approx(40, abs=1.0)  # sigma 0.01 -> MSE 1e-4 -> 40 dB
    assert ssim(slightly, ref) > 0.99 > 0.9 > ssim(badly, ref)
    assert fidelity(ref[:2], ref)["comparable"] is False


def test_ssim_matches_the_reference_definition_on_a_known_case():
    from agent.quality import ssim

    # Two constant images: SSIM reduces to the luminance term (2ab + c1) / (a^2 + b^2 + c1).
    a, b = np.full((1, 16, 16, 1), 0.2), np.full((1, 16, 16, 1), 0.6)
    c1 = 0.01**2
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))


def test_relative_error():
    from agent.quality import relative_error

    ref = rng.standard_normal(1000)
    assert relative_error(ref, ref) == 0
    assert relative_error(ref * 1.01, ref) == pytest.approx(0.01)


def test_ssim_by_chunks_and_separable_blur_equals_the_whole_clip_in_one_2d_window():
    import torch
    import torch.nn.functional as F

    from agent.quality import ssim

    a = rng.random((5, 24, 40, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    # Wang et al.'s definition written out once more, every plane at once in an 11x11 window.
    x, y = (torch.as_tensor(v).permute(0, 3, 1, 2).reshape(-1, 1, 24, 40) for v in (a, b))
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    k = (torch.outer(g, g) / g.sum() ** 2)[None, None]
    mx, my = F.conv2d(x, k), F.conv2d(y, k)
    vx, vy, cxy = F.conv2d(x * x, k) - mx**2, F.conv2d(y * y, k) - my**2, F.conv2d(x * y, k) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    whole = float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())
    assert ssim(a, b, chunk=4) == pytest.approx(whole, abs=1e-6)  # the float32 planes round at 6e-8
    assert ssim(a, b, chunk=1) == pytest.approx(ssim(a, b, chunk=1000), rel=1e-12)
