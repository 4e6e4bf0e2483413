"""Whether an environment fits the hardware: each misfit a sentence saying what will not work and the fix."""

import pytest

from agent.provision import fit, torch_build

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "580.159.04", "driver_cuda": "13.0"}
VERSIONS = {"torch": "2.13.0", "torchao": "0.18.0", "fa3-fwd": "0.0.3"}


def machine(*gpus: dict, torch_cuda: str | None = "13.0") -> dict:
    return {"gpus": list(gpus), "torch_cuda": torch_cuda}


def test_a_fitting_environment_has_nothing_to_say():
    assert fit.problems(machine(H100), VERSIONS, ["sm_80", "sm_90", "sm_100"], []) == []
    assert fit.problems(machine(), {"torch": "2.13.0"}, [], []) == []  # a CPU machine needs no CUDA build


def test_a_cpu_torch_on_a_gpu_machine_is_said_with_the_fix():
    (problem,) = fit.problems(machine(H100, torch_cuda=None), VERSIONS, [], [])
    assert "CPU build" in problem and "install torch's CUDA build" in problem


def test_a_driver_older_than_torchs_cuda():
    old = H100 | {"driver_cuda": "12.4"}
    (problem,) = fit.problems(machine(old), VERSIONS, ["sm_90"], [])
    assert "built for CUDA 13.0" in problem and "supports CUDA 12.4 at most" in problem and "upgrade the driver" in problem


def test_a_gpu_torch_has_no_kernels_for():
    blackwell = H100 | {"name": "B200", "compute_capability": "10.0"}
    (problem,) = fit.problems(machine(blackwell), VERSIONS, ["sm_80", "sm_90"], [])
    assert "no kernels for B200 (sm_100)" in problem
    assert fit.problems(machine(blackwell), VERSIONS, ["sm_90", "compute_90"], []) == []  # PTX: compiled at load


def test_fp8_hardware_without_torchao_and_what_start_wan_skipped(tmp_path):
    found = fit.problems(machine(H100), {"torch": "2.13.0"}, ["sm_90"], ["torchao: pip could not install the fp8 extra"])
    assert found[0] == "not installed: torchao: pip could not install the fp8 extra"
    assert "torchao is not installed although the GPU (compute capability 9.0) computes in FP8" in found[1]
    assert "no FlashAttention-3 is installed although a GPU is Hopper" in found[2] and ".[hopper]" in found[2]
    ampere = H100 | {"compute_capability": "8.0"}
    assert fit.problems(machine(ampere), {"torch": "2.13.0"}, ["sm_80"], []) == []  # no FP8 tensor cores: nothing lost
    (tmp_path / "skipped").write_text("torchao: x\n\n")
    assert fit.skipped_installs(tmp_path / "skipped") == ["torchao: x"] and fit.skipped_installs(tmp_path / "none") == []


def test_kernels_are_checked_only_where_there_are_gpus():
    assert fit.kernel_problems(machine()) == []


def test_the_torch_builds_a_driver_runs_newest_first():
    assert torch_build.candidates("12.4") == [f"https://download.pytorch.org/whl/cu{v}" for v in ("124", "121", "118")]
    assert torch_build.candidates("13.0")[0].endswith("/cu130") and len(torch_build.candidates("13.0")) == 7
    assert torch_build.candidates("11.7") == []  # older than every build: the driver must be upgraded
    with pytest.raises(ValueError, match="not a CUDA version"):
        torch_build.candidates("twelve")
