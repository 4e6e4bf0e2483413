"""The stand-in for the official code's flash_attention, against a reference that attends only to valid keys; the
official module's own SDPA fallback (wan22 2.2.11, loaded from its file) must fail the same check."""

import importlib.metadata
import importlib.util

import pytest
import torch

from agent.quality import relative_error
from agent.runtime.official.attention_patch import flash_attention

B, LQ, LK, HEADS, DIM = 3, 24, 20, 4, 16
K_LENS = torch.tensor([20, 13, 7])  # a batch of unequal lengths, zero-padded to LK


def inputs(dtype=torch.bfloat16, lq=LQ, lk=LK):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(B, n, HEADS, DIM, generator=gen).to(dtype) for n in (lq, lk, lk)]


def reference(q, k, v, k_lens=None, q_lens=None, scale=None, causal=False, window=(-1, -1)) -> torch.Tensor:
    """Attention computed sample by sample and query by query in float64, over only the keys each may see
    (flash_attn's varlen semantics: bottom-right aligned causal and window, padded queries left zero)."""
    q, k, v = (x.double() for x in (q, k, v))
    out = torch.zeros_like(q)
    for b in range(q.size(0)):
        kl = int(k_lens[b]) if k_lens is not None else k.size(1)
        ql = int(q_lens[b]) if q_lens is not None else q.size(1)
        for i in range(ql):
            lo, hi = 0, kl - 1
            line = i + kl - ql
            if causal or window[1] >= 0:
                hi = min(hi, line + (0 if causal else window[1]))
            if window[0] >= 0:
                lo = max(lo, line - window[0])
            if hi < lo:  # no key for this query (causal, with more queries than keys): flash_attn leaves it zero
                continue
            keys, values = k[b, lo : hi + 1], v[b, lo : hi + 1]  # [n, heads, dim]
            logits = torch.einsum("hd,nhd->hn", q[b, i], keys) * (scale or q.size(-1) ** -0.5)
            out[b, i] = torch.einsum("hn,nhd->hd", logits.softmax(-1), values)
    return out


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return relative_error(a.float().numpy(), b.float().numpy())


def official_attention_module():
    """wan22's wan/modules/attention.py, loaded alone (importing the `wan` package pulls decord, librosa, cv2, and
    t5.py calls torch.cuda at import)."""
    path = importlib.metadata.distribution("wan22").locate_file("wan/modules/attention.py")
    spec = importlib.util.spec_from_file_location("wan22_attention", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_padded_keys_are_not_attended_and_the_official_fallback_attends_them():
    q, k, v = inputs()
    expected = reference(q, k, v, k_lens=K_LENS)
    ours = flash_attention(q, k, v, k_lens=K_LENS)
    assert ours.dtype == torch.bfloat16 and ours.shape == (B, LQ, HEADS, DIM)
    assert err(ours, expected) < 1e-2  # bf16 rounding
    official = official_attention_module()
    assert not official.FLASH_ATTN_2_AVAILABLE  # so its attention() takes the SDPA fallback
    with pytest.warns(UserWarning, match="Padding mask is disabled"):
        theirs = official.attention(q, k, v, k_lens=K_LENS)
    assert err(theirs, expected) > 0.1  # it attended the zero padding
    with pytest.raises(AssertionError):
        official.flash_attention(q, k, v, k_lens=K_LENS)  # flash_attn missing, and not on CUDA


def test_unpadded_calls_match_plain_attention_and_keep_the_callers_dtype():
    q, k, v = inputs(torch.float32)
    full = torch.full((B,), LK)
    ours = flash_attention(q, k, v, k_lens=full)  # lengths that cover everything: no mask at all
    assert ours.dtype == torch.float32  # computed in bf16 (flash_attn's dtype), returned as given
    assert err(ours, reference(q.bfloat16(), k.bfloat16(), v.bfloat16())) < 1e-2


@pytest.mark.parametrize(
    "options",
    [
        {"softmax_scale": 0.05},
        {"q_scale": 0.5},
        {"causal": True},
        {"window_size": (3, 2)},
        {"q_lens": torch.tensor([20, 10, 5])},
    ],
    ids=lambda o: next(iter(o)),
)
def test_each_option_is_honoured_as_flash_attn_does(options):
    q, k, v = inputs(lq=LK)  # causal and windows line queries up with keys
    ours = flash_attention(q, k, v, k_lens=K_LENS, **options)
    q_ref = q * options["q_scale"] if "q_scale" in options else q
    expected = reference(
        q_ref.bfloat16(), k, v, k_lens=K_LENS, q_lens=options.get("q_lens"), scale=options.get("softmax_scale"),
        causal=options.get("causal", False), window=options.get("window_size", (-1, -1)),
    )  # fmt: skip
    assert err(ours, expected) < 1e-2
    if "q_lens" in options:
        assert not ours[2, 5:].any()  # padded query rows come out zero


def test_a_dtype_flash_attn_cannot_compute_is_refused():
    q, k, v = inputs()
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        flash_attention(q, k, v, dtype=torch.float32)
