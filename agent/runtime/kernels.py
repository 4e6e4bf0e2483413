"""Attention kernels beyond the ones diffusers finds itself: FlashAttention-3 from the wheels PyPI has, and FP8
self-attention on it.

diffusers' `_flash_3` backend imports `flash_attn_interface` when a distribution named `flash_attn_3` is installed
(Dao-AILab's FA3, built from source). PyPI has FA3 for Hopper in other wheels: `fa3-fwd` ships the same functions
as `fa3_fwd_interface`. ``fa3_source`` points diffusers' backend at the first source found and says which served.

FP8 attention (``use_fp8_attention``) replaces what `_flash_3` runs in this process: self-attention's q, k and v are
cast to float8 e4m3 with one scale per batch and head (FA3's descale shape), FA3 runs in FP8 and returns bf16.
Cross-attention (512 text tokens, ~2 % of the attention FLOPs) stays in bf16. Quantizing is a few elementwise ops
that a compiled block fuses with the RoPE before them. It is a numerical trade: the gate judges it on the model.
"""

from __future__ import annotations

import importlib
from importlib import metadata

import torch

# (distribution, module): the official build first (what diffusers looks for), then PyPI's forward-only wheel.
FA3_SOURCES = (("flash_attn_3", "flash_attn_interface"), ("fa3-fwd", "fa3_fwd_interface"))
FA3_BACKENDS = ("_flash_3", "_flash_varlen_3")  # the diffusers backends FA3 serves
FP8_BACKENDS = ("_flash_3",)  # the ones FP8 attention runs on
E4M3_MAX = 448.0

_interface = None  # the bound FA3 module
_missing: list[str] = []  # why each source did not serve, from the last fa3_source() that found none


def fa3_source() -> dict | None:
    """The FA3 that diffusers' `_flash_3` runs in this process ({distribution, version, module}), binding a PyPI
    wheel's where diffusers found none; None when no source imports (``problems`` then says why)."""
    global _interface
    from diffusers.models import attention_dispatch as dispatch

    missing = []
    for distribution, module in FA3_SOURCES:
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            missing.append(f"{distribution}: not installed")
            continue
        try:
            interface = importlib.import_module(module)
        except Exception as err:  # built for another torch/CUDA, or no GPU driver: the next source
            missing.append(f"{distribution}: {module} does not import ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
            continue
        if not dispatch._CAN_USE_FLASH_ATTN_3:  # diffusers looked only for flash_attn_3 at its import
            dispatch.flash_attn_3_func = interface.flash_attn_func
            dispatch.flash_attn_3_varlen_func = interface.flash_attn_varlen_func
            dispatch._CAN_USE_FLASH_ATTN_3 = True
        _interface = interface
        return {"distribution": distribution, "version": version, "module": module}
    _missing[:] = missing
    return None


def problems() -> str:
    """Why no FA3 source imports here, and how to fix it (after a ``fa3_source()`` that found none)."""
    return "; ".join(_missing) + " (on a Hopper GPU: pip install -e '.[hopper]', which start_wan.sh does there)"


def quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [batch, tokens, heads, dim] as float8 e4m3 scaled so each head's largest magnitude is e4m3's largest,
    and the descale [batch, heads] (float32) that FA3 multiplies back: a head of small values keeps its precision."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-12)
    scale = E4M3_MAX / amax
    scaled = (x.float() * scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX)  # torch's cast does not saturate
    return scaled.to(torch.float8_e4m3fn), (1.0 / scale).contiguous()


@torch.library.custom_op("wan_agent::fa3_fp8", mutates_args=(), device_types="cuda")
def fa3_fp8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_descale: torch.Tensor,
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
    softmax_scale: float | None,
    causal: bool,
) -> torch.Tensor:
    """FA3 on float8 inputs, bf16 out: an opaque op to a compiled graph (the sources differ in how traceable they are)."""
    assert _interface is not None, "fa3_source() binds FA3 before FP8 attention is used"
    out = _interface.flash_attn_func(
        q, k, v, softmax_scale=softmax_scale, causal=causal, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale
    )
    return out[0] if isinstance(out, tuple) else out


@fa3_fp8.register_fake
def _(q, k, v, q_descale, k_descale, v_descale, softmax_scale, causal):
    return q.new_empty(q.shape, dtype=torch.bfloat16)


def use_fp8_attention() -> None:
    """Make diffusers' `_flash_3` backend run self-attention in FP8 in this process (after ``fa3_source``)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, _check_shape

    name = AttentionBackendName._FLASH_3
    bf16 = _AttentionBackendRegistry._backends[name]
    if getattr(bf16, "fp8", False):
        return

    def fp8_flash_attention_3(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
        is_causal: bool = False,
        return_lse: bool = False,
        _parallel_config=None,
    ) -> torch.Tensor:
        if key.shape[1] != query.shape[1] or attn_mask is not None or return_lse or _interface is None:
            return bf16(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal, return_lse=return_lse)
        (q, q_descale), (k, k_descale), (v, v_descale) = (quantize_per_head(t) for t in (query, key, value))
        return fa3_fp8(q, k, v, q_descale, k_descale, v_descale, scale, is_causal).to(query.dtype)

    fp8_flash_attention_3.fp8 = True  # type: ignore[attr-defined]
    _AttentionBackendRegistry.register(name, constraints=[_check_shape])(fp8_flash_attention_3)
