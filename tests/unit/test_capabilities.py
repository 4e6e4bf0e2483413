import pytest

from agent.capabilities import cannot_run
from agent.runtime.config import Knobs

H100 = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "index": 0}]}
A100 = {"gpus": [{"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "index": 0}]}
CPU_ONLY = {"gpus": []}
B200 = {"gpus": [{"name": "NVIDIA B200", "compute_capability": "10.0", "index": 0}]}


@pytest.fixture(autouse=True)
def _every_gpu_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_fp8_compute_needs_fp8_tensor_cores():
    assert cannot_run(Knobs(fp8="torchao_row"), H100, "auto") is None
    reason = cannot_run(Knobs(fp8="torchao_tensor"), A100, "auto")
    assert "compute capability >= 8.9" in reason and "A100" in reason and "sm 8.0" in reason
    assert "no GPU" in cannot_run(Knobs(fp8="torchao_row"), CPU_ONLY, "auto")
    assert cannot_run(Knobs(fp8="layerwise"), CPU_ONLY, "auto") is None  # storage only: runs anywhere
    assert "compute capability >= 8.9" in cannot_run(Knobs(fp8="torchao_static"), A100, "auto")


def test_static_fp8_calibrates_with_the_experts_on_the_gpu():
    assert cannot_run(Knobs(fp8="torchao_static", offload="auto"), H100, "auto") is None  # the worker checks what auto chose
    assert "not with offload=group" in cannot_run(Knobs(fp8="torchao_static", offload="group"), H100, "auto")
    official = Knobs(runtime="official", fp8="torchao_static", attention="_native_cudnn")
    assert "does not take fp8=torchao_static" in cannot_run(official, H100, "auto")


def test_offload_and_cuda_need_a_gpu():
    assert "none" in cannot_run(Knobs(offload="model"), CPU_ONLY, "auto")
    assert cannot_run(Knobs(offload="auto"), CPU_ONLY, "auto") is None
    assert "asks for a CUDA GPU" in cannot_run(Knobs(), CPU_ONLY, "cuda")
    assert cannot_run(Knobs(offload="group"), H100, "cuda") is None
    assert "no GPU" in cannot_run(Knobs(fp8="torchao_row"), H100, "cpu")  # the playbook pins the CPU


def test_fp4_compute_needs_blackwell():
    reason = cannot_run(Knobs(fp4="nvfp4"), H100, "auto")
    assert "compute capability >= 10.0" in reason and "H100" in reason
    assert cannot_run(Knobs(fp4="nvfp4"), B200, "auto") is None


def test_the_gpu_checked_is_the_one_cuda_visible_devices_gives_the_trial(monkeypatch):
    mixed = {"gpus": [H100["gpus"][0], A100["gpus"][0] | {"index": 1}]}
    assert cannot_run(Knobs(fp8="torchao_row"), mixed, "auto") is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert "A100" in cannot_run(Knobs(fp8="torchao_row"), mixed, "auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1f2e3d")  # a slice of one of them: FP8 may run, so it is tried
    assert cannot_run(Knobs(fp8="torchao_row"), mixed, "auto") is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "asks for a CUDA GPU" in cannot_run(Knobs(), mixed, "cuda")


def test_the_fp8_compute_rule_matches_what_the_worker_says_without_torchao():
    from agent.playbook import load
    from agent.remediation import next_fix

    said = "worker exited with status 1: BackendUnavailable: fp8=torchao_row needs torchao, which does not import"
    failed = {"verdict": "skipped", "reason": said, "rung": "fp8", "set": {"fp8": "torchao_row"}}
    rules = [r.model_dump() for r in load("a14b").remediation]
    rule, step = next_fix(failed, rules)
    assert rule["name"] == "fp8-compute" and rule["changes"][step] == {"fp8": "layerwise"}


def test_attention_kernels_are_refused_where_the_hardware_or_diffusers_cannot_run_them():
    fa3, fp8 = Knobs(attention="_flash_3"), Knobs(attention="_flash_3", attention_fp8=True)
    assert cannot_run(fa3, H100, "auto") is None and cannot_run(fp8, H100, "auto") is None
    assert "CUDA GPUs only" in cannot_run(fa3, CPU_ONLY, "auto")
    assert "compute capability >= 8.9" in cannot_run(fp8, A100, "auto")
    cudnn_fp8 = Knobs(attention="_native_cudnn", attention_fp8=True)
    assert "attention=_native_cudnn has no FP8 path" in cannot_run(cudnn_fp8, H100, "auto")
    two = {"gpus": [H100["gpus"][0], H100["gpus"][0] | {"index": 1}]}
    assert cannot_run(Knobs(attention="_native_cudnn", ulysses=2), two, "auto") is None
    assert cannot_run(Knobs(attention="_flash_3", attention_fp8=True, ulysses=2), two, "auto") is None  # kernels.py's
    reason = cannot_run(Knobs(attention="flex", ulysses=2), two, "auto")
    assert "context parallelism" in reason and "attention=flex" in reason
    assert cannot_run(Knobs(attention="_flash_3", ring=2), two, "auto") is None
    assert "log-sum-exp" in cannot_run(Knobs(attention="native", ring=2), two, "auto")
    assert "in FP8 does not return" in cannot_run(Knobs(attention="_flash_3", attention_fp8=True, ring=2), two, "auto")
    assert "ring=2 splits the work over 2 GPUs" in cannot_run(Knobs(attention="_native_cudnn", ring=2), H100, "auto")
