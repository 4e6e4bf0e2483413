"""FlashAttention-3 from a PyPI wheel behind diffusers' `_flash_3`, and FP8 self-attention on it
(agent/runtime/kernels.py). Needs a GPU that FA3 runs on (Hopper) and an FA3 source (`pip install -e '.[hopper]'`)."""

import pytest
import torch

from agent.quality import relative_error
from agent.runtime import attention, kernels

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
pytestmark = pytest.mark.skipif(not HOPPER or kernels.fa3_source() is None, reason="needs a Hopper GPU and an FA3 source")
CUDA = torch.device("cuda")
SHAPE = (1, 4096, 40, 128)  # Wan's heads and head size; an eighth of the 480p clip's tokens


def qkv(shape=SHAPE, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(CUDA, torch.bfloat16) for _ in range(3)]


def sdpa(q, k, v):
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    return dispatch_attention_fn(q, k, v, backend=AttentionBackendName.NATIVE)


def test_the_wheels_fa3_serves_diffusers_flash_3_and_says_which_it_is():
    source = kernels.fa3_source()
    report = attention.probe("_flash_3", SHAPE, torch.bfloat16, CUDA)
    assert report["usable"], report["reason"]
    assert report["kernel"] == source and report["relative_error"] < 5e-3


def test_fp8_self_attention_stays_near_sdpa_and_cross_attention_stays_bf16():
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    q, k, v = qkv()
    bf16 = dispatch_attention_fn(q, k, v, backend=AttentionBackendName._FLASH_3)
    text_k, text_v = (t[:, :512] for t in qkv(seed=1)[1:])
    cross_bf16 = dispatch_attention_fn(q, text_k, text_v, backend=AttentionBackendName._FLASH_3)
    report = attention.probe("_flash_3", SHAPE, torch.bfloat16, CUDA, fp8=True)
    assert report["usable"], report["reason"]
    assert report["fp8"] and report["relative_error"] < attention.FP8_TOLERANCE
    fp8 = dispatch_attention_fn(q, k, v, backend=AttentionBackendName._FLASH_3)
    assert fp8.dtype == torch.bfloat16 and fp8.shape == q.shape
    error = relative_error(fp8.float().cpu().numpy(), sdpa(q, k, v).float().cpu().numpy())
    assert 1e-3 < error < attention.FP8_TOLERANCE  # quantized (not bf16 under another name), and not broken
    assert relative_error(bf16.float().cpu().numpy(), sdpa(q, k, v).float().cpu().numpy()) < 5e-3
    cross = dispatch_attention_fn(q, text_k, text_v, backend=AttentionBackendName._FLASH_3)
    assert torch.equal(cross, cross_bf16)


def test_fp8_attention_compiles_into_one_graph_with_what_comes_before_it():
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    kernels.fa3_source()
    kernels.set_fp8_attention(True)
    q, k, v = qkv(seed=2)

    def block(q, k, v):  # the scale stands for the RoPE and norms the quantization fuses with
        return dispatch_attention_fn(q * 1.5, k, v, backend=AttentionBackendName._FLASH_3)

    compiled = torch.compile(block, fullgraph=True)
    eager, traced = block(q, k, v), compiled(q, k, v)
    reference = sdpa(q * 1.5, k, v).float().cpu().numpy()
    # Fused, the scaled q is quantized without its bf16 rounding: values near an e4m3 step land on the other side
    # (2.9e-2 apart on an H100), each as close to SDPA as FP8 gets.
    assert relative_error(traced.float().cpu().numpy(), reference) < attention.FP8_TOLERANCE
    assert relative_error(traced.float().cpu().numpy(), eager.float().cpu().numpy()) < 6e-2
