"""What only a CUDA GPU can show: FP8 compute, offload modes, the memory-capped offload choice, NVML.
Skipped without CUDA; run on the device machine (see benchmarks/README.md)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from agent import contention
from agent.runtime import memory, worker
from agent.runtime.config import FP8_SCALES_FILE, CarriedCalibration, Knobs, Measurement, TrialConfig, Workload
from agent.sources import synthetic
from agent.telemetry import Sampler
from tests.conftest import small_playbook, wan_agent, write_playbook

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")
FP8_CAPABLE = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def trial(tmp_path: Path, name: str, fraction: float | None = None, calibration=None, **knobs) -> dict:
    config = TrialConfig(
        name=name,
        model_path="synthetic:tiny",
        output_dir=str(tmp_path / name),
        device="cuda",
        gpu_memory_fraction=fraction,
        reference_dir=str(tmp_path / "base") if name != "base" else None,
        workload=Workload(prompt="A cat walking on the grass", height=96, width=160, frames=17, seed=3),
        knobs=Knobs(**{"steps": 6} | knobs),
        measurement=Measurement(warmup=1, repeats=2),
        calibration_carried=calibration,
    )
    (tmp_path / name).mkdir()
    return worker.run(config)


@pytest.fixture
def base(tmp_path):
    return trial(tmp_path, "base")


@pytest.mark.skipif(not FP8_CAPABLE, reason="FP8 compute needs compute capability >= 8.9")
@pytest.mark.parametrize("mode", ["torchao_row", "torchao_tensor", "torchao_static"])
def test_fp8_compute_runs_and_stays_close_to_bf16(tmp_path, base, mode):
    result = trial(tmp_path, mode, fp8=mode)
    assert result["quality"]["passed"]
    for error in result["fidelity"]["relative_error"].values():
        assert 0 < error < 0.1


@pytest.mark.skipif(not FP8_CAPABLE, reason="FP8 compute needs compute capability >= 8.9")
def test_static_fp8_is_calibrated_then_compiled(tmp_path, base):
    """Static scales come from one calibration denoising of every block's linear layers in both experts (another seed
    than the clip's); the quantized blocks then compile as the dynamic ones do, and compute close to bf16."""
    result = trial(tmp_path, "static", fp8="torchao_static", compile="regional")
    calibration = result["setup"]["fp8_calibration"]
    assert calibration["layers"] == 2 * 4 * 10  # two experts, 4 blocks, 10 linear layers each (q k v o twice, ffn 2)
    assert calibration["calibration_steps"] == 6 and calibration["calibration_seed"] == 4
    for error in result["fidelity"]["relative_error"].values():
        assert 0 < error < 0.1
    # The same experts again (as the confirmation runs them): the ranges observed above, loaded, give the same outputs.
    scales = CarriedCalibration(trial="static", path=str(tmp_path / "static" / FP8_SCALES_FILE))
    again = trial(tmp_path, "again", calibration=scales, fp8="torchao_static", compile="regional")
    loaded = again["setup"]["fp8_calibration"]
    assert loaded == calibration | {"from": "static", "seconds": loaded["seconds"]}
    assert again["fidelity"]["relative_error"] == pytest.approx(result["fidelity"]["relative_error"], rel=1e-4)


def test_layerwise_fp8_storage_keeps_the_function(tmp_path, base):
    result = trial(tmp_path, "layerwise", fp8="layerwise")  # float8 weights, upcast per layer: memory, not speed
    assert result["quality"]["passed"]
    for error in result["fidelity"]["relative_error"].values():
        assert 0 < error < 0.1


@pytest.mark.parametrize("mode", ["model", "group", "sequential"])
def test_offload_modes_run_and_compute_the_same_function(tmp_path, base, mode):
    result = trial(tmp_path, mode, offload=mode, vae_tiling=True)
    assert result["setup"]["offload"] == mode and result["quality"]["passed"]
    for error in result["fidelity"]["relative_error"].values():
        assert error < 1e-2


def test_fp16_computes_the_bf16_function(tmp_path, base):
    result = trial(tmp_path, "fp16", precision="fp16")
    assert result["quality"]["passed"]
    for error in result["fidelity"]["relative_error"].values():
        assert 0 < error < 0.05


@pytest.mark.parametrize("mode", ["channels_last", "compiled"])
def test_vae_decode_modes_keep_the_clip(tmp_path, base, mode):
    result = trial(tmp_path, mode, vae_decode=mode)
    assert result["quality"]["passed"] and ("vae_compile_s" in result["stages"]) == (mode == "compiled")
    assert result["fidelity"]["psnr_dB"] > 30


def test_the_compiled_decoder_is_traced_whole_and_warm_after_one_decode():
    # torch 2.11's Dynamo broke the decoder's graph at diffusers' `tensor == "Rep"` and compiled its blocks one by one
    # (27 graphs on an H100); traced whole it is 3 graphs (the first chunk, the second, the rest), and a second decode
    # compiles nothing (benchmarks/results/h100-2026-11-27f/decoder-traceable.json).
    from types import SimpleNamespace

    from diffusers import AutoencoderKLWan
    from torch._dynamo.utils import counters

    from agent.runtime.generate import decode
    from agent.runtime.vae_decode import tune_vae

    torch._dynamo.reset()
    counters.clear()
    vae = AutoencoderKLWan(**synthetic.preset("tiny").vae).to(CUDA, torch.bfloat16).eval()
    tune_vae(vae, "compiled")
    latents = torch.randn(1, vae.config.z_dim, 5, 12, 20, device=CUDA, dtype=torch.bfloat16)
    decode(SimpleNamespace(vae=vae), latents)
    graphs = counters["stats"]["unique_graphs"]
    decode(SimpleNamespace(vae=vae), latents)
    assert sum(counters["graph_break"].values()) == 0 and counters["stats"]["unique_graphs"] == graphs
    assert graphs == 3  # with torch 2.11's Dynamo: the first chunk, the second, the rest (in pieces: 2 breaks)


@pytest.mark.parametrize("mode", ["group", "sequential"])
def test_offloaded_weights_reach_the_tuned_decoder(tmp_path, base, mode):
    # tune_vae replaces the causal convolutions' and norms' forwards before offloading's hooks wrap them: after
    # them, the hooks that bring the weights to the GPU would be bypassed
    result = trial(tmp_path, f"{mode}-channels-last", offload=mode, vae_decode="channels_last")
    assert result["setup"]["offload"] == mode and result["quality"]["passed"]
    assert result["fidelity"]["psnr_dB"] > 30


def test_text_encoder_on_cpu(tmp_path, base):
    result = trial(tmp_path, "te-cpu", text_encoder_on_cpu=True)
    errors = result["fidelity"]["relative_error"]
    assert result["quality"]["passed"] and max(errors.values()) < 1e-2, errors


def test_auto_offload_follows_the_memory_cap():
    skeleton = synthetic.build_pipeline("a14b", 0, device="meta", dtype=torch.bfloat16)
    total = torch.cuda.get_device_properties(CUDA).total_memory

    def config(fraction):
        return TrialConfig(
            name="x",
            model_path="synthetic:a14b",
            output_dir="/tmp",
            gpu_memory_fraction=fraction,
            workload=Workload(prompt="x", height=480, width=832, frames=81, seed=0),
            knobs=Knobs(offload="auto"),
        )

    need = memory.needs(skeleton, config(None).workload, False, False, False)
    for fraction, expected in (
        (min(1.0, 1.2 * need["none"] / total), "none"),
        (1.2 * need["model"] / total, "model"),
        (1.2 * need["group"] / total, "group"),
    ):
        if fraction <= 1.0 and need[expected] / memory.FIT_MARGIN < torch.cuda.mem_get_info()[0]:
            assert memory.choose("auto", skeleton, config(fraction), CUDA)[0] == expected
    # Static FP8 calibrates with the bf16 experts resident: where they do not fit it is refused before loading.
    static = config(1.2 * need["model"] / total)
    static = static.model_copy(update={"knobs": Knobs(offload="auto", fp8="torchao_static")})
    with pytest.raises(memory.UnsupportedOnHardware, match="calibrates with the experts resident"):
        memory.choose("auto", skeleton, static, CUDA)
    with pytest.raises(memory.UnsupportedOnHardware, match="calibrates with the experts on the GPU, and offload is group"):
        memory.choose("group", skeleton, static, CUDA)


def test_auto_offload_under_a_real_cap_runs(tmp_path):
    # Half the card is capped away; the tiny model still fits, and the choice says against what budget.
    result = trial(tmp_path, "capped", fraction=0.5, offload="auto")
    budget = float(result["setup"]["offload_reason"].split(" GiB free")[0].split()[-1])
    half = 0.5 * torch.cuda.get_device_properties(CUDA).total_memory / 2**30
    assert result["setup"]["offload"] == "none" and budget <= half + 0.05  # the reason rounds to 0.1 GiB


def test_nvml_measures_power_and_energy(tmp_path):
    sampler = Sampler(tmp_path / "t.csv", lambda: os.getpid(), interval_s=0.1).start()
    a = torch.randn(8192, 8192, device=CUDA, dtype=torch.bfloat16)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        a @ a
    torch.cuda.synchronize()
    summary = sampler.stop()
    assert summary["nvml"] == "ok"
    assert summary["mean_power_W"] > 0 and summary["energy_J"] > 0 and summary["peak_gpu_mem_used_GiB"] > 0
    assert np.isfinite(summary["mean_gpu_util_pct"])


def test_a_busy_gpu_is_waited_for_then_refused_or_flagged(tmp_path):
    hold = "import torch, time; x = torch.ones(2**28, device='cuda'); print('holding', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        others, seen = contention.wait_for_gpu(0, wait_s=1, poll_s=0.2)
        assert holder.pid in {p["pid"] for p in others} and f"pid {holder.pid}" in seen
        refuse = write_playbook(tmp_path / "refuse.yaml", small_playbook(device="cuda", busy_gpu={"wait_s": 1}))
        refused = wan_agent("run", "--playbook", str(refuse), runs_dir=tmp_path / "runs")
        assert refused.returncode == 1 and f"pid {holder.pid}" in refused.stderr and "then: flag" in refused.stderr
        flag = write_playbook(tmp_path / "flag.yaml", small_playbook(device="cuda", busy_gpu={"wait_s": 1, "then": "flag"}))
        done = wan_agent("run", "--playbook", str(flag), runs_dir=tmp_path / "runs")
        assert done.returncode == 0, done.stderr
        run_dir = tmp_path / "runs" / done.stdout.strip()
        assert "**Shared GPU.**" in (run_dir / "journal.md").read_text()
        assert yaml.safe_load((run_dir / "best.yaml").read_text())["measured"]["shared_gpu"]["shared"] is True
    finally:
        holder.kill()


def test_a_process_that_takes_the_gpu_mid_trial_is_seen_and_the_trial_measured_again(tmp_path):
    # It arrives once the worker has started (after the check before the trial), and stays: the worker's own
    # record sees it, the trial is set aside and, before measuring it again, the agent waits, then refuses.
    started = str(tmp_path / "runs" / "*" / "trials" / "00-baseline" / "stdout.log")
    hold = (
        f"import glob, time, torch\nwhile not glob.glob({started!r}): time.sleep(0.1)\n"
        "x = torch.ones(2**28, device='cuda'); print('holding', flush=True); time.sleep(600)"
    )
    if os.getpid() in {p["pid"] for p in contention.wait_for_gpu(0, wait_s=0)[0]}:
        pytest.skip("this pytest process holds a CUDA context (an earlier test): run it alone, `pytest tests/gpu -k mid_trial`")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        book = small_playbook(device="cuda", busy_gpu={"wait_s": 1}, measurement={"warmup": 1, "repeats": 5})
        book["workload"] |= {"height": 96, "width": 160, "frames": 17}
        book["baseline"]["steps"] = 40
        refused = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "b.yaml", book)), runs_dir=tmp_path / "runs")
        assert refused.returncode == 1 and f"pid {holder.pid}" in refused.stderr, refused.stderr
        trial_dir = next((tmp_path / "runs").glob("*/trials/00-baseline"))
        assert (trial_dir / "stdout.shared.log").is_file() and not (trial_dir / "result.json").exists()
    finally:
        holder.kill()


def _path_without_torchao(tmp_path: Path) -> str:
    """PYTHONPATH with torchao's directory replaced by a mirror that lacks torchao: the machine as it is without the
    `[fp8]` extra. Skips where torchao is not installed through PYTHONPATH (a venv's own site-packages)."""
    import importlib.util

    spec = importlib.util.find_spec("torchao")
    site = Path(spec.origin).parent.parent if spec and spec.origin else None
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if site is None or str(site) not in entries:
        pytest.skip("torchao is not installed through PYTHONPATH here; hide it by hand to run this test")
    mirror = tmp_path / "site-without-torchao"
    mirror.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith("torchao"):
            (mirror / entry.name).symlink_to(entry)
    return os.pathsep.join(str(mirror) if e == str(site) else e for e in entries)


@pytest.mark.skipif(not FP8_CAPABLE, reason="FP8 compute needs compute capability >= 8.9")
def test_fp8_compute_without_torchao_falls_back_to_fp8_storage(tmp_path):
    book = small_playbook(device="cuda")
    book["ladder"] = [{"name": "fp8", "hypothesis": "FP8 compute.", "set": {"fp8": "torchao_row"}}]
    env = os.environ | {"PYTHONPATH": _path_without_torchao(tmp_path)}
    done = wan_agent("run", "--playbook", str(write_playbook(tmp_path / "b.yaml", book)), runs_dir=tmp_path / "runs", env=env)
    assert done.returncode in (0, 3), done.stderr
    run_dir = tmp_path / "runs" / done.stdout.strip()
    events = [yaml.safe_load(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    decisions = {e["name"]: e for e in events if e["kind"] == "decision"}
    assert decisions["01-fp8"]["verdict"] == "skipped" and "needs torchao" in decisions["01-fp8"]["reason"]
    assert decisions["02-fp8-fp8-compute-1"]["knobs"]["fp8"] == "layerwise"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nvml_watches_the_gpu_cuda_visible_devices_gives_a_process(tmp_path):
    from agent import hardware
    from agent.telemetry import Nvml

    code = (
        "import time, torch; from agent.runtime import worker; x = torch.ones(2**28, device='cuda'); "
        "print(worker.nvml_id(torch.device('cuda')), flush=True); time.sleep(60)"
    )
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    root = Path(__file__).parents[2]
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        uuid = proc.stdout.readline().strip()
        gpus = hardware.probe()["gpus"]
        assert uuid == gpus[1]["uuid"]
        assert proc.pid in {p["pid"] for p in Nvml(uuid).processes()}
        assert proc.pid not in {p["pid"] for p in Nvml(0).processes()}
    finally:
        proc.kill()
