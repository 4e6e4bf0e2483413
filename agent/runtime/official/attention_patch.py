"""A stand-in for the official Wan2.2 code's ``flash_attention`` (``wan/modules/attention.py``) on PyTorch SDPA.

The official DiT imports ``flash_attention``, which asserts flash_attn is installed and the tensors are on CUDA;
the module's own fallback, ``attention()``, drops the padding mask (``k_lens``) with only a warning and ignores
``q_lens``, ``softmax_scale``, ``q_scale`` and ``window_size``. This function has the same signature and honours
them all, as flash_attn's varlen kernel does: keys past ``k_lens[b]`` are not attended, query rows past
``q_lens[b]`` come out zero, ``causal`` and ``window_size`` are aligned to the bottom-right corner (flash_attn >= 2.1),
and the output is in the caller's dtype. Unpadded calls (the DiT's usual case) go to SDPA without a mask, so its
fastest kernel (cuDNN, flash) runs them.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HALF = (torch.float16, torch.bfloat16)
_kernel: list[SDPBackend] | None = None  # the SDPA kernel unmasked calls are held to (None: PyTorch chooses)


def use_kernel(name: str | None) -> None:
    """Hold unmasked calls to one SDPA kernel (``CUDNN_ATTENTION``, ``FLASH_ATTENTION``, ...), or None to let
    PyTorch choose. Masked calls always let it choose: not every kernel takes an arbitrary mask."""
    global _kernel
    _kernel = [getattr(SDPBackend, name)] if name else None


def _lengths(lens: torch.Tensor | None, full: int, batch: int, device: torch.device) -> torch.Tensor | None:
    """Per-sample lengths, or None when every sample uses the whole length (no mask needed)."""
    if lens is None:
        return None
    # Checked where the lengths are (the DiT makes them on the host): a check on the GPU would stall every call.
    lens = torch.as_tensor(lens).reshape(batch).to(torch.int64)
    return None if bool((lens >= full).all()) else lens.clamp(max=full).to(device)


def lengths_checked_outside(forward):
    """An official DiT block's ``forward`` (compiled), called with ``seq_lens`` None where every sample fills the
    whole sequence, the DiT's usual case: the stand-in's check of the lengths (``_lengths``) is made here, on the host
    and outside the compiled block, where inside it it broke the block's graph (9 graphs a block against 6 without:
    benchmarks/official_block_graphs.py on the tiny model). Padded samples still reach the stand-in with their
    lengths. For a block that sees the whole sequence (no sequence parallelism: there each rank holds a part of it)."""

    def call(x, *args, seq_lens=None, **kwargs):
        if seq_lens is not None and bool((torch.as_tensor(seq_lens) >= x.size(1)).all()):
            seq_lens = None
        return forward(x, *args, seq_lens=seq_lens, **kwargs)

    return call


def _mask(b, lq, lk, q_lens, k_lens, causal, window, device) -> torch.Tensor | None:
    """[B, 1, Lq, Lk] True where query i may attend key j, or None when all may."""
    left, right = window
    if k_lens is None and q_lens is None and not causal and left < 0 and right < 0:
        return None
    i = torch.arange(lq, device=device).view(1, lq, 1)
    j = torch.arange(lk, device=device).view(1, 1, lk)
    kl = (k_lens if k_lens is not None else torch.full((b,), lk, device=device)).view(b, 1, 1)
    ql = (q_lens if q_lens is not None else torch.full((b,), lq, device=device)).view(b, 1, 1)
    mask = (j < kl) & (i < ql)
    diagonal = i + (kl - ql)  # the key a query lines up with, bottom-right aligned as in flash_attn
    if causal:
        right = 0
    if left >= 0:
        mask &= j >= diagonal - left
    if right >= 0:
        mask &= j <= diagonal + right
    return mask.unsqueeze(1)


def flash_attention(
    q,
    k,
    v,
    q_lens=None,
    k_lens=None,
    dropout_p=0.0,
    softmax_scale=None,
    q_scale=None,
    causal=False,
    window_size=(-1, -1),
    deterministic=False,
    dtype=torch.bfloat16,
    version=None,
):
    """q ``[B, Lq, Nq, C]``, k/v ``[B, Lk, Nk, C]`` (Nq a multiple of Nk); as ``wan.modules.attention.flash_attention``.
    ``deterministic`` and ``version`` choose among flash_attn kernels and mean nothing here."""
    if dtype not in HALF:
        raise ValueError(f"dtype must be float16 or bfloat16, as flash_attn computes (got {dtype})")
    b, lq, lk, out_dtype = q.size(0), q.size(1), k.size(1), q.dtype
    q, k, v = (x if x.dtype in HALF else x.to(dtype) for x in (q, k, v))
    q, k = q.to(v.dtype), k.to(v.dtype)
    if q_scale is not None:
        q = q * q_scale
    q_lens = _lengths(q_lens, lq, b, q.device)
    k_lens = _lengths(k_lens, lk, b, q.device)
    mask = _mask(b, lq, lk, q_lens, k_lens, causal, window_size, q.device)
    with sdpa_kernel(_kernel) if _kernel and mask is None else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask,
            dropout_p=dropout_p,
            scale=softmax_scale,
            enable_gqa=q.size(2) != k.size(2),
        ).transpose(1, 2)
    if mask is not None:  # rows with no key to attend (padded queries): zero, as varlen leaves them
        out = out.masked_fill(~mask.any(-1).squeeze(1).view(b, lq, 1, 1), 0.0)
    return out.type(out_dtype)


def self_check(device: torch.device, tolerance: float = 2e-2) -> dict:
    """The stand-in on a padded batch against attention over only the valid keys, computed per sample in float32:
    the start-up check the journal records (relative L2 error; bf16 lands near 4e-3)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 4, 64, generator=gen).to(device, torch.bfloat16) for n in (48, 40, 40))
    k_lens = torch.tensor([40, 23], device=device)
    out = flash_attention(q, k, v, k_lens=k_lens).float()
    parts = []
    for b, n in enumerate(k_lens.tolist()):
        qb, kb, vb = (x[b : b + 1].float().transpose(1, 2) for x in (q, k[:, :n], v[:, :n]))
        parts.append(F.scaled_dot_product_attention(qb, kb, vb).transpose(1, 2))
    expected = torch.cat(parts)
    error = float((out - expected).norm() / expected.norm())
    if error > tolerance:
        raise RuntimeError(f"the attention stand-in is off by {error:.1e} (relative) on a padded batch; refusing to use it")
    return {"relative_error": error, "tolerance": tolerance, "shape": [2, 48, 4, 64], "k_lens": [40, 23]}
