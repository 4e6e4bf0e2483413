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
