"""Trials over two GPUs (issue 17), on the synthetic A14B at a small size: Ulysses context parallelism and CFG's
branches on two ranks make the single GPU's clip, and the trial is watched on both GPUs. Skipped with fewer than 2."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from agent import gpu_map, hardware, trials
from agent.quality import fidelity
from agent.runtime.config import Knobs, Measurement, TrialConfig, Workload

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


def trial(out: Path, **knobs) -> TrialConfig:
    return TrialConfig(
        name=out.name,
        model_path="synthetic:a14b",
        output_dir=str(out),
        device="cuda",
        workload=Workload(prompt="A cat walking on the grass", height=240, width=416, frames=17, seed=7),
        knobs=Knobs(**{"steps": 4, "guidance_scale": 4.0, "guidance_scale_2": 3.0} | knobs),
        measurement=Measurement(warmup=1, repeats=1),
    )


def execute(cfg: TrialConfig, gpus) -> dict:
    out = Path(cfg.output_dir)
    trials.prepare(out, cfg)
    return trials.execute(f"gpu-parallel-{os.getpid()}", out, deadline_s=900, idle_timeout_s=600, gpu=gpus)


@pytest.mark.parametrize("split", [{"ulysses": 2}, {"cfg_parallel": True}])
def test_two_gpus_make_the_single_gpus_clip_and_are_both_watched(tmp_path, split):
    info = hardware.probe()
    single = execute(trial(tmp_path / "single"), gpu_map.trial_gpu(info))
    both = execute(trial(tmp_path / "split", **split), gpu_map.rank_gpus(info, 2))
    assert single["result"]["status"] == "ok" and both["result"]["status"] == "ok", both.get("log_tail")
    frames = [np.load(tmp_path / name / "frames.npy") / 255.0 for name in ("single", "split")]
    assert fidelity(frames[1], frames[0])["psnr_dB"] >= 35  # bf16: the same clip up to rounding
    watched = [both["telemetry"], single["telemetry"]]
    assert watched[0]["nvml"] == "ok" and watched[0]["samples"] > 0
    assert watched[0]["mean_power_W"] > watched[1]["mean_power_W"]  # two GPUs' power, summed
