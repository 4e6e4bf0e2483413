"""FP8 attention's quantization (agent/runtime/kernels.py): the kernel itself needs a Hopper GPU (tests/gpu)."""

import pytest
import torch

from agent.runtime import attention, kernels


def test_each_head_is_scaled_to_e4m3s_range_so_small_heads_keep_their_precision():
    gen = torch.Generator().manual_seed(0)
    magnitudes = torch.tensor([1.0, 1e-3, 300.0, 3.0])  # one scale per tensor would flush the second head to zero
    x = (torch.randn(2, 500, 4, 64, generator=gen) * magnitudes[None, None, :, None]).bfloat16()
    x8, descale = kernels.quantize_per_head(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (2, 4) and descale.dtype == torch.float32
    assert x8.float().abs().amax(dim=(1, 3)).allclose(torch.full((2, 4), kernels.E4M3_MAX))
    back = x8.float() * descale[:, None, :, None]
    error = (back - x.float()).norm(dim=(1, 3)) / x.float().norm(dim=(1, 3))
    assert error.max() < 0.04  # e4m3 keeps 3 mantissa bits: ~2.7 % relative, whatever the head's magnitude
    assert torch.isfinite(back).all()


def test_without_fa3_its_backends_say_what_is_missing_and_how_to_install_it():
    if kernels.fa3_source() is not None:
        pytest.skip("an FA3 source is installed here")
    problem = attention.requirement_problem("_flash_3")
    assert "fa3-fwd: not installed" in problem and ".[hopper]" in problem
    report = attention.probe("_flash_3", (1, 16, 2, 64), torch.bfloat16, torch.device("cpu"), fp8=True)
    assert not report["usable"] and report["tolerance"] == attention.FP8_TOLERANCE
