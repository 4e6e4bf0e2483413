from agent.capabilities import cannot_run
from agent.runtime.config import Knobs

H100 = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}]}
A100 = {"gpus": [{"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}]}
CPU_ONLY = {"gpus": []}
B200 = {"gpus": [{"name": "NVIDIA B200", "compute_capability": "10.0"}]}


def test_fp8_compute_needs_fp8_tensor_cores():
    assert cannot_run(Knobs(fp8="torchao_row"), H100, "auto") is None
    reason = cannot_run(Knobs(fp8="torchao_tensor"), A100, "auto")
    assert "compute capability >= 8.9" in reason and "A100" in reason and "sm 8.0" in reason
    assert "no GPU" in cannot_run(Knobs(fp8="torchao_row"), CPU_ONLY, "auto")
    assert cannot_run(Knobs(fp8="layerwise"), CPU_ONLY, "auto") is None  # storage only: runs anywhere


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
