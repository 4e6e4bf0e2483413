"""A trial over several ranks (issue 17's first step), on the CPU with gloo: torchrun started in the trial's tmux
session, diffusers' Ulysses context parallelism over the tiny model's three heads, or CFG's branches on two ranks;
rank 0 writing the trial's files. The clip must be the one a single process makes (with CFG and without: a call with
no unconditional branch after it must not leave the ranks out of step); a rank that dies takes the trial down."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from agent import capabilities, sources, trials
from agent.quality import fidelity
from agent.runtime.config import Knobs, Measurement, TrialConfig, Workload


@pytest.fixture(scope="module")
def model() -> sources.ModelFiles:
    return sources.resolve("synthetic:tiny", Path(os.environ["WAN_AGENT_CACHE"]))


def trial(model, out: Path, **knobs) -> TrialConfig:
    return TrialConfig(
        name=out.name,
        model_path=str(model.path),
        output_dir=str(out),
        device="cpu",
        workload=Workload(prompt="A cat walking on the grass", height=48, width=64, frames=9, seed=7),  # 36 tokens
        knobs=Knobs(**{"precision": "fp32", "steps": 3, "guidance_scale": 4.0} | knobs),
        measurement=Measurement(warmup=0, repeats=1, cpu_threads=1),
    )


def execute(cfg: TrialConfig) -> dict:
    out = Path(cfg.output_dir)
    trials.prepare(out, cfg)
    return trials.execute(f"parallel-{os.getpid()}", out, deadline_s=300, idle_timeout_s=120, poll_s=0.1, gpu=None)


def test_three_ranks_make_the_single_process_clip(model, tmp_path):
    single = execute(trial(model, tmp_path / "single"))
    split = execute(trial(model, tmp_path / "ulysses", ulysses=3))
    assert single["result"]["status"] == "ok" and split["result"]["status"] == "ok", split["session"]
    result = split["result"]
    assert result["setup"]["context_parallel"] == {"ulysses": 3, "ring": 1, "ranks": 3}
    assert result["config"]["output_dir"] == str(tmp_path / "ulysses")  # rank 0's record
    for rank in (1, 2):  # the other ranks wrote only under ranks/N
        assert (tmp_path / "ulysses" / "ranks" / str(rank) / "result.json").is_file()
    frames = [np.load(tmp_path / name / "frames.npy").astype(int) for name in ("single", "ulysses")]
    assert frames[0].shape == frames[1].shape and np.abs(frames[0] - frames[1]).max() <= 1
    assert all(f"rank {r} of 3 (cpu, gloo)" in (tmp_path / "ulysses" / "stdout.log").read_text() for r in range(3))


def ranks(trial_dir: Path) -> list[psutil.Process]:
    """The worker processes torchrun started for the trial in ``trial_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "agent.runtime.worker" in cmd and "torch.distributed.run" not in cmd and str(trial_dir) in " ".join(cmd):
            found.append(proc)
    return found


def test_a_rank_that_dies_takes_the_trial_down_and_leaves_no_process(model, tmp_path):
    cfg = trial(model, tmp_path / "killed", ulysses=3).model_copy(update={"measurement": Measurement(warmup=0, repeats=50)})
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(execute(cfg)))
    runner.start()
    deadline, log = time.monotonic() + 120, tmp_path / "killed" / "stdout.log"
    while len(ranks(tmp_path / "killed")) < 3 or "repeat 1/50" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline and runner.is_alive(), "the three ranks never got to their clips"
        time.sleep(0.2)
    victim = next(p for p in ranks(tmp_path / "killed") if p.environ().get("RANK") == "2")
    victim.send_signal(signal.SIGKILL)
    runner.join(timeout=120)
    assert not runner.is_alive(), "the trial outlived its killed rank"
    assert outcome["session"]["exit_code"] != 0 and (outcome["result"] or {}).get("status") != "ok"
    gone, alive = psutil.wait_procs(ranks(tmp_path / "killed"), timeout=30)
    assert not alive, f"ranks left running: {alive}"


@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_cfg_branches_on_two_ranks_make_the_single_process_clip(model, tmp_path, guidance):
    execute(trial(model, tmp_path / "single", guidance_scale=guidance, guidance_scale_2=guidance))
    split = execute(trial(model, tmp_path / "cfg", guidance_scale=guidance, guidance_scale_2=guidance, cfg_parallel=True))
    assert split["result"]["status"] == "ok", split["session"]
    assert split["result"]["setup"]["cfg_parallel"] == {"ranks": 2}
    frames = [np.load(tmp_path / name / "frames.npy").astype(int) for name in ("single", "cfg")]
    assert np.abs(frames[0] - frames[1]).max() <= 1


def test_heads_the_split_does_not_divide_fail_the_trial_with_the_reason(model, tmp_path):
    outcome = execute(trial(model, tmp_path / "two", ulysses=2))
    assert outcome["result"]["status"] == "failed"
    assert "ulysses=2 must divide the model's 3 attention heads" in outcome["result"]["error"]["message"]
    assert outcome["session"]["exit_code"] != 0


def test_more_ranks_than_gpus_is_refused_at_planning(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    hardware = {"gpus": [h100 | {"index": i, "uuid": f"GPU-{i}"} for i in range(2)]}
    assert capabilities.cannot_run(Knobs(ulysses=2), hardware, "cuda") is None
    assert capabilities.cannot_run(Knobs(cfg_parallel=True), hardware, "cuda") is None
    said = capabilities.cannot_run(Knobs(ulysses=4), hardware, "cuda")
    assert said is not None and "ulysses=4 splits the work over 4 GPUs; this machine shows 2" in said
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # one of the two shown to trials
    said = capabilities.cannot_run(Knobs(cfg_parallel=True), hardware, "cuda")
    assert said is not None and "cfg_parallel splits the work over 2 GPUs; this machine shows 1" in said


def test_ulysses_groups_on_each_cfg_branch_make_the_single_process_clip(model, tmp_path):
    single = execute(trial(model, tmp_path / "single"))
    split = execute(trial(model, tmp_path / "both", ulysses=3, cfg_parallel=True))
    assert single["result"]["status"] == "ok" and split["result"]["status"] == "ok", split["session"]
    setup = split["result"]["setup"]
    assert setup["context_parallel"] == {"ulysses": 3, "ring": 1, "ranks": 6} and setup["cfg_parallel"] == {"ranks": 6}
    frames = [np.load(tmp_path / name / "frames.npy").astype(int) for name in ("single", "both")]
    assert np.abs(frames[0] - frames[1]).max() <= 1


def test_the_decode_split_over_the_ranks_makes_the_whole_decodes_clip(model, tmp_path):
    wide = Workload(prompt="A cat walking on the grass", height=96, width=160, frames=9, seed=7)  # a 12x20 latent
    single = execute(trial(model, tmp_path / "single").model_copy(update={"workload": wide}))
    split = execute(trial(model, tmp_path / "tiles", ulysses=3, vae_parallel=True).model_copy(update={"workload": wide}))
    assert single["result"]["status"] == "ok" and split["result"]["status"] == "ok", split["session"]
    assert split["result"]["setup"]["vae_parallel"] == {"ranks": 3, "overlap_latent_px": 8}
    frames = [np.load(tmp_path / name / "frames.npy") / 255.0 for name in ("single", "tiles")]
    assert frames[0].shape == frames[1].shape
    # The tiny random VAE's tiles show seams: diffusers' own tiled decode of these tiles lands 30 dB from the whole
    # decode (tests/unit/test_parallel_decode.py); a tile decoded by the wrong rank or put in the wrong place, ~10.
    assert fidelity(frames[1], frames[0])["psnr_dB"] >= 25


def test_a_split_decode_without_ranks_to_split_over_is_refused_at_planning():
    said = capabilities.cannot_run(Knobs(vae_parallel=True), {"gpus": []}, "cpu")
    assert said is not None and "runs in one process" in said
    said = capabilities.cannot_run(Knobs(ulysses=3, vae_parallel=True, vae_tiling=True), {"gpus": []}, "cpu")
    assert said is not None and "vae_tiling false" in said
    assert capabilities.cannot_run(Knobs(ulysses=3, vae_parallel=True), {"gpus": []}, "cpu") is None


def test_ulysses_ranks_run_compiled_blocks(model, tmp_path):
    # Dynamo cannot trace diffusers' split hook reading its block's signature (it did so at its first call, inside
    # the compiled block 0): parallel.split_attention reads them before compiling.
    split = execute(trial(model, tmp_path / "compiled", ulysses=3, compile="regional", steps=2))
    assert split["result"]["status"] == "ok", split["session"]
    assert split["result"]["stages"]["first_forwards_s"] > 1.0  # compiled


def test_the_official_codes_own_sequence_parallelism_makes_its_single_process_clip(model, tmp_path):
    # 64x64, 5 frames: 32 tokens, which the reference pads to 33 for three ranks; the padding masked by the true length
    odd = Workload(prompt="A cat walking on the grass", height=64, width=64, frames=5, seed=7)
    single = execute(trial(model, tmp_path / "single", runtime="official").model_copy(update={"workload": odd}))
    sp = trial(model, tmp_path / "sp", runtime="official", ulysses=3)
    split = execute(sp.model_copy(update={"workload": odd, "reference_dir": str(tmp_path / "single")}))
    assert single["result"]["status"] == "ok" and split["result"]["status"] == "ok", split["session"]
    assert split["result"]["setup"]["runtime"]["sequence_parallel"]["ulysses"] == 3
    # The experts' outputs as the single process's: the padded token masked (unmasked, they moved by 6e-3)
    assert max(split["result"]["fidelity"]["relative_error"].values()) < 1e-5
    frames = [np.load(tmp_path / name / "frames.npy").astype(int) for name in ("single", "sp")]
    assert frames[0].shape == frames[1].shape and np.abs(frames[0] - frames[1]).max() <= 1


def _vote(rank: int, port: int, flags: tuple[bool, bool], out: str) -> None:
    import torch
    import torch.distributed as dist

    from agent.runtime import parallel

    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    Path(out, str(rank)).write_text(str(parallel.ranks_disagree(flags[rank], torch.device("cpu"))))
    dist.destroy_process_group()


@pytest.mark.parametrize("flags", [(True, True), (False, False), (True, False)])
def test_ranks_learn_whether_one_decided_otherwise(tmp_path, flags):
    # A rank that carried the experts' steps while another timed them would wait in their collectives (worker.py).
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    mp.spawn(_vote, args=(free_port(), flags, str(tmp_path)), nprocs=2)
    answers = {(tmp_path / str(rank)).read_text() for rank in (0, 1)}
    assert answers == {str(flags[0] != flags[1])}
