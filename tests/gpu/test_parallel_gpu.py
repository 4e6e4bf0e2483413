"""Trials over several GPUs (issue 17), on the synthetic A14B at a small size: Ulysses context parallelism (on FA3 in
FP8), CFG's branches and Ulysses at once, ring attention (on FA3, which hands diffusers its log-sum-exp), and the
official code's own sequence parallelism (its experts whole on each GPU, or sharded by FSDP) make the single GPU's
clip, the decode split over the ranks makes a tiled one, and the trial is watched on every GPU. Each case is skipped
with fewer GPUs than it splits over, and the FA3 one without Hopper and an FA3 source."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from agent import gpu_map, hardware, trials
from agent.quality import fidelity
from agent.runtime import kernels, parallel
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


SPLITS = ("ulysses", "ring", "cfg_parallel", "vae_parallel", "fsdp")
FA3 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9 and kernels.fa3_source() is not None


@pytest.fixture(scope="module")
def singles(tmp_path_factory) -> dict:
    """The single GPU's trial for each configuration the cases split, made once."""
    made: dict = {}

    def single(knobs: dict) -> dict:
        key = repr(sorted(knobs.items()))
        if key not in made:
            out = tmp_path_factory.mktemp("single")
            made[key] = execute(trial(out, **knobs), gpu_map.trial_gpu(hardware.probe())) | {"dir": out}
        return made[key]

    return single


@pytest.mark.parametrize(
    "split",
    [
        {"ulysses": 2, "cfg_parallel": True},
        {"ulysses": 2, "attention": "_flash_3", "attention_fp8": True},
        {"ulysses": 2, "vae_parallel": True},
        {"ring": 2, "attention": "_flash_3"},
        {"ulysses": 2, "runtime": "official", "attention": "_native_cudnn"},
        {"ulysses": 2, "runtime": "official", "attention": "_native_cudnn", "fsdp": True},
    ],
    ids=["ulysses-x-cfg", "ulysses-fa3-fp8", "split-decode", "ring-fa3", "official-ulysses", "official-fsdp"],
)
def test_several_gpus_make_the_single_gpus_clip_and_are_all_watched(tmp_path, singles, split):
    ranks = parallel.world_size(Knobs(**split))
    if torch.cuda.device_count() < ranks:
        pytest.skip(f"needs {ranks} GPUs")
    if split.get("attention") == "_flash_3" and not FA3:
        pytest.skip("needs a Hopper GPU and an FA3 source")
    single = singles({k: v for k, v in split.items() if k not in SPLITS})
    both = execute(trial(tmp_path / "split", **split), gpu_map.rank_gpus(hardware.probe(), ranks))
    assert single["result"]["status"] == "ok" and both["result"]["status"] == "ok", both.get("log_tail")
    frames = [np.load(path / "frames.npy") / 255.0 for path in (single["dir"], tmp_path / "split")]
    # bf16 (and FP8 with the same per-head scales on every rank): the same clip up to rounding; a tiled decode
    # shows the seams of a random VAE's tiles (30 dB on the tiny one: tests/unit/test_parallel_decode.py)
    assert fidelity(frames[1], frames[0])["psnr_dB"] >= (25 if split.get("vae_parallel") else 35)
    watched = [both["telemetry"], single["telemetry"]]
    assert watched[0]["nvml"] == "ok" and watched[0]["samples"] > 0
    assert watched[0]["mean_power_W"] > watched[1]["mean_power_W"]  # every GPU's power, summed
    if split.get("attention") == "_flash_3":
        assert both["result"]["setup"]["attention_probe"]["kernel"] == kernels.fa3_source()
    if split.get("fsdp"):  # each rank holds half of each expert: ~28 GiB less than the single GPU's two whole ones
        memory = [run["result"]["memory"]["peak_gpu_allocated_GiB"] for run in (both, single)]
        assert memory[0] < memory[1] - 20, memory
