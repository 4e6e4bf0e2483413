"""Attention kernels beyond the ones diffusers finds itself: FlashAttention-3 from the wheels PyPI has, and FP8
self-attention on it.

diffusers' `_flash_3` backend imports `flash_attn_interface` when a distribution named `flash_attn_3` is installed
(Dao-AILab's FA3, built from source). PyPI has FA3 for Hopper in other wheels: `fa3-fwd` ships the same functions
as `fa3_fwd_interface`. ``fa3_source`` points diffusers' backend at the first source found and says which served.

``fa3_source`` also registers `_flash_3` anew (``flash_attention_3``) with diffusers' context parallelism, which its
own registration lacks: Ulysses splits a trial over GPUs on FA3 too.

FP8 attention (``set_fp8_attention``) changes what `_flash_3` runs in this process: self-attention's q, k and v are
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
CONTEXT_PARALLEL_BACKENDS = ("_flash_3",)  # given diffusers' context parallelism here (flash_attention_3)
E4M3_MAX = 448.0

_interface = None  # the bound FA3 module
_fp8 = False  # self-attention in FP8: set_fp8_attention
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
        _register()
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


def _attend(query, key, value, scale: float | None, is_causal: bool, return_lse: bool):
    """FA3 on whole sequences (one rank's heads under Ulysses): FP8 for self-attention where it is on, else bf16."""
    if _fp8 and key.shape[1] == query.shape[1] and return_lse:
        raise ValueError("FP8 attention returns no log-sum-exp, which ring attention merges by: run ring in bf16")
    if _fp8 and key.shape[1] == query.shape[1] and _interface is not None:
        (q, q_descale), (k, k_descale), (v, v_descale) = (quantize_per_head(t) for t in (query, key, value))
        return fa3_fp8(q, k, v, q_descale, k_descale, v_descale, scale, is_causal).to(query.dtype)
    from diffusers.models.attention_dispatch import _wrapped_flash_attn_3

    out, lse = _wrapped_flash_attn_3(q=query, k=key, v=value, softmax_scale=scale, causal=is_causal)  # lse [B, S, H]
    return (out, lse) if return_lse else out


def _forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                return_lse=False, _save_ctx=True, _parallel_config=None):  # fmt: skip
    """What diffusers' templated context parallelism runs on each rank's share (after Ulysses' all-to-all)."""
    if attn_mask is not None or dropout_p or enable_gqa:
        raise ValueError("FlashAttention-3 here takes no mask, dropout or grouped-query attention")
    return _attend(query, key, value, scale, is_causal, return_lse)


def _backward_op(ctx, grad_out, *args, **kwargs):
    raise NotImplementedError("FlashAttention-3 here is forward-only: inference")


def flash_attention_3(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    return_lse: bool = False,
    _parallel_config=None,
):
    """diffusers' `_flash_3` as this process runs it: diffusers' own FA3 call, FP8 self-attention where
    ``set_fp8_attention(True)``, and context parallelism (Ulysses, ring) through diffusers' templated attention,
    which diffusers 0.42 gives only its `_flash_3_hub` (a download)."""
    if attn_mask is not None:
        raise ValueError("`attn_mask` is not supported for flash-attn 3.")
    if _parallel_config is None:
        return _attend(query, key, value, scale, is_causal, return_lse)
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    return _templated_context_parallel_attention(
        query, key, value, None, 0.0, is_causal, scale, False, return_lse,
        forward_op=_forward_op, backward_op=_backward_op, _parallel_config=_parallel_config,
    )  # fmt: skip


def _register() -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    name = AttentionBackendName._FLASH_3
    if _AttentionBackendRegistry._backends.get(name) is not flash_attention_3:
        constraints = _AttentionBackendRegistry._constraints.get(name)
        _AttentionBackendRegistry.register(name, constraints=constraints, supports_context_parallel=True)(flash_attention_3)


def set_fp8_attention(on: bool) -> None:
    """Make diffusers' `_flash_3` backend run self-attention in FP8 (or not) in this process (after ``fa3_source``)."""
    global _fp8
    _register()
    _fp8 = on
