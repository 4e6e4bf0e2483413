"""The trial worker as a real process on the real tiny pipeline."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from agent import carry, gates, sources, trials
from agent.runtime import worker
from agent.runtime.config import CarriedDecode, Knobs, LoraFiles, Measurement, TrialConfig, Workload
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def model() -> sources.ModelFiles:
    return sources.resolve("synthetic:tiny", Path(os.environ["WAN_AGENT_CACHE"]))


WORKLOAD = Workload(prompt="A cat walking on the grass", height=48, width=64, frames=9, seed=7)


def config(model, out: Path, **knobs) -> TrialConfig:
    lightning = knobs.get("lightning", False)
    return TrialConfig(
        name=out.name,
        model_path=str(model.path),
        output_dir=str(out),
        lora=LoraFiles(**model.lora) if lightning else None,
        workload=WORKLOAD,
        knobs=Knobs(**{"steps": 4} | knobs),
        measurement=Measurement(warmup=1, repeats=2, cpu_threads=1),  # as the tiny playbook's trials: steady under load
    )


def work(cfg: TrialConfig) -> tuple[int, dict | None, str]:
    out = Path(cfg.output_dir)
    trials.prepare(out, cfg)
    done = subprocess.run(
        [sys.executable, "-m", "agent.runtime.worker", str(out / "trial.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    result = out / "result.json"
    return done.returncode, json.loads(result.read_text()) if result.exists() else None, done.stdout + done.stderr


def test_writes_timings_per_stage_and_step_and_a_playable_video(model, tmp_path):
    code, result, log = work(config(model, tmp_path / "t", steps=6, guidance_scale=4.0))
    assert code == 0, log
    assert result["status"] == "ok"
    assert set(result["stages"]) >= {"load_s", "prepare_s", "save_s"}
    assert len(result["repeats"]) == 2 and result["first_call"] is not None
    for rep in result["repeats"]:
        assert len(rep["step_s"]) == 6 and all(s > 0 for s in rep["step_s"])
        assert rep["step_expert"][0] == "transformer" and rep["step_expert"][-1] == "transformer_2"
    assert result["summary"]["repeats"] == 2 and result["memory"]["peak_rss_GiB"] > 0
    assert result["quality"]["passed"] and result["setup"]["cpu_threads"] == 1
    frames = iio.imread(tmp_path / "t" / "video.mp4")
    assert frames.shape[0] == 9 and frames.shape[1:3] == (48, 64)


def test_lightning_and_layerwise_fp8_run(model, tmp_path):
    code, result, log = work(
        config(model, tmp_path / "l", lightning=True, fp8="layerwise", guidance_scale=1.0, guidance_scale_2=1.0)
    )
    assert code == 0, log
    assert "lora_fuse_s" in result["stages"] and result["config"]["knobs"]["fp8"] == "layerwise"


def test_fp8_compute_on_cpu_fails_with_the_reason(model, tmp_path):
    code, result, _ = work(config(model, tmp_path / "f", fp8="torchao_row"))
    assert code == 1
    assert result["status"] == "failed"
    assert result["error"]["type"] == "UnsupportedOnHardware" and "8.9" in result["error"]["message"]


def test_an_invalid_trial_file_exits_2(tmp_path):
    bad = tmp_path / "trial.json"
    bad.write_text(json.dumps({"name": "x", "workload": {"height": 100}}))
    done = subprocess.run([sys.executable, "-m", "agent.runtime.worker", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "workload.height" in done.stderr


def test_probe_mode_predicts_the_clip_and_writes_the_check_output(model, tmp_path):
    cfg = config(model, tmp_path / "p", steps=8).model_copy(
        update={"measurement": Measurement(warmup=1, repeats=1, mode="probe", cpu_threads=1)}
    )
    code, result, log = work(cfg)
    assert code == 0, log
    probe = result["probe"]
    assert probe["steps"]["transformer"] + probe["steps"]["transformer_2"] == 8
    assert set(probe["step_s"]) == {"transformer", "transformer_2"}
    summary = result["summary"]
    assert summary["predicted"] is True and len(summary["samples_s"]) == 3 and 0.05 <= summary["prediction_error"] < 0.5
    assert len(probe["text_encode_samples_s"]) == len(probe["vae_decode_samples_s"]) == 3  # each predicted clip its own
    assert result["quality"]["passed"] and not (tmp_path / "p" / "video.mp4").exists()
    check = np.load(tmp_path / "p" / "check_output.npz")
    assert len([f for f in check.files if f.startswith("transformer@")]) == 3  # three timesteps of each expert
    assert len([f for f in check.files if f.startswith("transformer_2@")]) == 3
    assert check["vae_frame"].shape == (1, 48, 64, 3)
    noise = result["fidelity"]["noise"]  # a trial with no reference is one: it measures its numerical noise
    assert 0 < noise["transformer"] < 0.05 and 0 < noise["transformer_2"] < 0.05 and noise["vae_frame_psnr_dB"] > 20


def test_a_one_expert_model_shaped_like_the_5b_runs_probes_and_clips(tmp_path):
    # synthetic:tiny-5b: one transformer for every step, timesteps per token, the Wan2.2 VAE's 16x compression.
    five = sources.resolve("synthetic:tiny-5b", Path(os.environ["WAN_AGENT_CACHE"]))
    assert five.lora is None and not five.lightning  # no Lightning LoRA is published for the 5B
    probe = config(five, tmp_path / "p", steps=6).model_copy(
        update={"measurement": Measurement(warmup=1, repeats=1, mode="probe", cpu_threads=1, probe_steps=3)}
    )
    probe = probe.model_copy(update={"workload": probe.workload.model_copy(update={"height": 64, "width": 64})})
    code, result, log = work(probe)
    assert code == 0, log
    assert result["probe"]["steps"] == {"transformer": 6, "transformer_2": 0}
    check = np.load(tmp_path / "p" / "check_output.npz")
    assert sorted(f for f in check.files if "@" in f) == ["transformer@100", "transformer@500", "transformer@999"]
    assert check["vae_frame"].shape == (1, 64, 64, 3)
    clip = probe.model_copy(
        update={"name": "c", "output_dir": str(tmp_path / "c"), "measurement": Measurement(warmup=0, repeats=1, cpu_threads=1)}
    )
    code, result, log = work(clip)
    assert code == 0, log
    assert iio.imread(tmp_path / "c" / "video.mp4").shape == (9, 64, 64, 3)


def test_fidelity_against_a_reference_trial(model, tmp_path):
    base = config(model, tmp_path / "base")
    assert work(base)[0] == 0
    same = base.model_copy(update={"name": "same", "output_dir": str(tmp_path / "same"), "reference_dir": str(tmp_path / "base")})
    code, result, log = work(same)
    assert code == 0, log
    assert len(result["fidelity"]["relative_error"]) == 6 and set(result["fidelity"]["relative_error"].values()) == {0.0}
    assert result["fidelity"]["psnr_dB"] == float("inf") and result["fidelity"]["ssim"] == pytest.approx(1.0)
    assert result["fidelity"]["vae_frame"]["psnr_dB"] == float("inf")
    fp8 = same.model_copy(
        update={"name": "fp8", "output_dir": str(tmp_path / "fp8"), "knobs": base.knobs.model_copy(update={"fp8": "layerwise"})}
    )
    code, result, log = work(fp8)
    assert code == 0, log
    assert all(0 < error < 0.2 for error in result["fidelity"]["relative_error"].values())
    assert result["fidelity"]["ssim"] < 1.0


def test_attention_backend_is_probed_before_use(model, tmp_path):
    code, result, log = work(config(model, tmp_path / "math", attention="_native_math"))
    assert code == 0, log
    assert result["setup"]["attention_probe"]["usable"] and result["setup"]["attention_probe"]["relative_error"] < 2e-2
    code, result, _ = work(config(model, tmp_path / "flash", attention="flash"))
    assert code == 1
    assert result["error"]["type"] == "BackendUnavailable" and "flash" in result["error"]["message"]


def test_model_built_directly_on_the_device_with_lightning_in_memory(tmp_path):
    direct = TrialConfig(
        name="direct",
        model_path="synthetic:tiny",
        output_dir=str(tmp_path / "direct"),
        workload=Workload(prompt="a cat", height=48, width=64, frames=9, seed=7),
        knobs=Knobs(lightning=True, steps=4, guidance_scale=1.0, guidance_scale_2=1.0, flow_shift=5.0),
        measurement=Measurement(warmup=0, repeats=1),
    )
    code, result, log = work(direct)
    assert code == 0, log
    assert "lora_fuse_s" in result["stages"] and result["quality"]["passed"]


def test_regional_compile_reports_its_first_call_apart(model, tmp_path):
    code, result, log = work(config(model, tmp_path / "c", steps=2, compile="regional"))
    assert code == 0, log
    assert result["stages"]["first_forwards_s"] > 1.0  # Inductor compiling the block, kept out of the timed clips
    assert result["quality"]["passed"]


def test_a_compiled_vae_decoder_compiles_before_the_timed_clips(model, tmp_path):
    code, result, log = work(config(model, tmp_path / "v", steps=2, vae_decode="compiled"))
    assert code == 0, log
    compile_s, decode_s = result["stages"]["vae_compile_s"], result["summary"]["vae_decode_s"]
    assert compile_s > 20 * decode_s, (compile_s, decode_s)  # Inductor's work landed in the warm-up decodes
    assert result["quality"]["passed"] and "compiling the VAE decoder" in log


@pytest.mark.parametrize("started_with", [None, "/custom/inductor"])
def test_trials_cache_kernels_where_the_agent_was_started_to(started_with):
    # Importing diffusers imports torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR in the importing process: the
    # trials planned after it must still share the run's cache (or the one the user named).
    code = (
        "import os; from pathlib import Path; from agent import trials; import diffusers; "
        "print(trials.worker_env(Path('/runs/r1'), {})['TORCHINDUCTOR_CACHE_DIR'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env |= {"TORCHINDUCTOR_CACHE_DIR": started_with} if started_with else {}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (started_with or "/runs/r1/inductor-cache")


def test_a_decode_rung_carries_the_best_experts_steps_and_outputs(model, tmp_path):
    # Baseline, then a kept rung that changes the experts (layerwise FP8), then a decode rung on top of it: judged
    # against the baseline, it must show the FP8 experts' difference from it, which it takes from the FP8 trial.
    probe = Measurement(mode="probe", warmup=1, repeats=2, probe_steps=2, cpu_threads=1)
    base = config(model, tmp_path / "00-baseline").model_copy(update={"measurement": probe})
    fp8 = config(model, tmp_path / "01-fp8", fp8="layerwise")
    fp8 = fp8.model_copy(update={"measurement": probe, "reference_dir": base.output_dir})
    runs = {}
    for cfg in (base, fp8):
        code, runs[cfg.name], log = work(cfg)
        assert code == 0, log
    best = {"name": fp8.name, "dir": fp8.output_dir, "knobs": fp8.knobs.model_dump(), "workload": fp8.workload.model_dump()}
    knobs = fp8.knobs.model_copy(update={"vae_tiling": True})
    carried = carry.carried_steps(best, knobs, probe, fp8.workload, judged=True)
    assert carried is not None and carried.trial == "01-fp8"
    assert carry.carried_steps(best, fp8.knobs.model_copy(update={"steps": 3}), probe, fp8.workload, judged=True) is None
    tiled = config(model, tmp_path / "02-vae-tiling", fp8="layerwise", vae_tiling=True)
    tiled = tiled.model_copy(update={"measurement": probe, "reference_dir": base.output_dir, "steps_carried": carried})
    code, result, log = work(tiled)
    assert code == 0, log
    assert "probe transformer step" not in log and "the same experts as 01-fp8's" in log
    assert result["probe"]["steps_from"] == "01-fp8" and result["summary"]["steps_from"] == "01-fp8"
    # The experts' first calls are 01-fp8's first forwards (its checked steps' untimed ones), none of this trial's.
    assert "first_forwards_s" in runs["01-fp8"]["stages"] and "first_forwards_s" not in result["stages"]
    assert "first_call_overhead_s" not in result["summary"] and "first_call_overhead_s" not in runs["01-fp8"]["summary"]
    assert result["probe"]["step_s"] == {n: statistics.median(s) for n, s in runs["01-fp8"]["probe"]["step_samples_s"].items()}
    errors = result["fidelity"]["relative_error"]
    assert errors == runs["01-fp8"]["fidelity"]["relative_error"] and min(errors.values()) > 0
    noise = runs["00-baseline"]["fidelity"]["noise"]
    decision = {"noise_multiple": 3.0, "max_relative_error": 0.1, "min_psnr_dB": 30.0}
    gate = gates.check(result["fidelity"], noise, tiled.knobs.model_dump(), base.knobs.model_dump(), decision)
    assert gate["passed"], gate
    # Experts placed otherwise than the best's (here: a best said to have offloaded them): timed here, not carried.
    elsewhere = tiled.model_copy(
        update={
            "name": "03-elsewhere",
            "output_dir": str(tmp_path / "03-elsewhere"),
            "steps_carried": carried.model_copy(update={"offload": "model"}),
        }
    )
    code, result, log = work(elsewhere)
    assert code == 0, log
    assert "experts timed here: offload none, where 01-fp8's ran with model" in log and "probe transformer step" in log
    assert "steps_from" not in result["probe"]


def test_a_trial_that_carries_the_decode_takes_its_check_frame_and_compiles_no_decoder(model, tmp_path):
    # The best's decoder, unchanged: its timed decodes and its decoded check frame stand for this trial's, so the
    # decoder is not compiled here (a minute on these CPUs; 13 s from a warm cache on an H100).
    probe = Measurement(mode="probe", warmup=1, repeats=2, probe_steps=2, cpu_threads=1)
    base = config(model, tmp_path / "00-baseline").model_copy(update={"measurement": probe})
    code, _, log = work(base)
    assert code == 0, log
    best = tmp_path / "01-best"  # a best whose check file has another frame than this decoder would give here
    best.mkdir()
    with worker.checks(Path(base.output_dir)) as theirs:
        frames = {name: theirs[name] for name in theirs.files}
    frames[worker.VAE_CHECK] = 255 - frames[worker.VAE_CHECK]
    np.savez(best / worker.CHECK_FILE, **frames)
    decode = CarriedDecode(trial="01-best", samples_s=[0.25, 0.25], dir=str(best))
    fp8 = config(model, tmp_path / "02-fp8", fp8="layerwise", vae_decode="compiled")
    fp8 = fp8.model_copy(update={"measurement": probe, "reference_dir": base.output_dir, "decode_carried": decode})
    code, result, log = work(fp8)
    assert code == 0, log
    assert "compiling the VAE decoder" not in log and "vae_compile_s" not in result["stages"]
    assert result["probe"]["vae_decode_from"] == "01-best" and result["summary"]["vae_decode_s"] == 0.25
    with worker.checks(Path(fp8.output_dir)) as mine:
        assert np.array_equal(mine[worker.VAE_CHECK], frames[worker.VAE_CHECK])
    # A reference trial (no reference of its own) measures its noise on its own decoder: it decodes its frame itself.
    eager = fp8.knobs.model_copy(update={"vae_decode": "eager"})
    reference = fp8.model_copy(
        update={"name": "03-reference", "output_dir": str(tmp_path / "03-reference"), "reference_dir": None, "knobs": eager}
    )
    code, result, log = work(reference)
    assert code == 0, log
    with worker.checks(Path(reference.output_dir)) as mine, worker.checks(Path(base.output_dir)) as theirs:
        assert np.array_equal(mine[worker.VAE_CHECK], theirs[worker.VAE_CHECK])  # the same eager decoder as the baseline's


def test_what_a_trial_does_not_carry():
    best = {"name": "05-fp8", "dir": "/nowhere", "knobs": Knobs().model_dump(), "workload": WORKLOAD.model_dump()}
    probe = Measurement(mode="probe")
    tiled = Knobs(vae_tiling=True)
    # Nothing readable behind the best: nothing is assumed. A reference trial, or a whole clip, times its own.
    assert carry.carried_steps(best, tiled, probe, WORKLOAD, judged=True) is None
    assert carry.carried_steps(best, tiled, probe, WORKLOAD, judged=False) is None
    assert carry.carried_steps(best, tiled, Measurement(mode="full"), WORKLOAD, judged=True) is None
    assert carry.carried_decode(best, Knobs(compile="regional"), Measurement(mode="full"), WORKLOAD) is None
