import numpy as np

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
