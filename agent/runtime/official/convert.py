"""Diffusers-layout Wan2.2 components as the official code's modules, sharing their tensors (no copy, no disk).

The official runtime runs on whatever the agent fetched or built in diffusers layout: each component's state dict
is renamed into the official module's keys and assigned to a module made without memory (parameters on the meta
device), so converting a 14 B expert costs neither time nor a second copy. The names come from diffusers' own
converter (official -> diffusers) read backwards where it is generic; its decoder mapping is written for two
residual blocks per level, so that part, and the UMT5 encoder (which diffusers never converts), are mapped here.
Every key on both sides must be accounted for, or the conversion stops naming what is left over.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from accelerate import init_empty_weights

from agent.runtime.official import modules


class ConversionError(RuntimeError):
    pass


def _assign(official: torch.nn.Module, source: dict[str, torch.Tensor], names: dict[str, str]) -> torch.nn.Module:
    """Load ``source`` (diffusers keys) into ``official`` through ``names`` (diffusers key -> official key)."""
    wanted = set(official.state_dict())
    renamed = {names[key]: tensor for key, tensor in source.items() if key in names}
    unmapped = sorted(set(source) - set(names))
    missing, extra = sorted(wanted - set(renamed)), sorted(set(renamed) - wanted)
    if unmapped or missing or extra:
        raise ConversionError(
            f"{type(official).__name__}: diffusers keys without an official name {unmapped[:3]}, official keys not "
            f"filled {missing[:3]}, names the official module lacks {extra[:3]}"
        )
    official.load_state_dict(renamed, strict=True, assign=True)
    return official.eval().requires_grad_(False)


def _inverse(convert: Callable[[dict], dict], official: torch.nn.Module) -> dict[str, str]:
    """Diffusers key -> official key, read from ``convert`` (official -> diffusers renames) applied to the empty
    module's own tensors: each comes out under its diffusers name, and is known by identity."""
    own = official.state_dict()
    by_identity = {id(tensor): key for key, tensor in own.items()}
    return {new: by_identity[id(tensor)] for new, tensor in convert(dict(own)).items() if id(tensor) in by_identity}


def transformer(model) -> torch.nn.Module:
    """diffusers' ``WanTransformer3DModel`` as the official ``WanModel`` (text-to-video)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    c = model.config
    if c.image_dim is not None or c.added_kv_proj_dim is not None:
        raise ConversionError("only the text-to-video transformer converts (this one has image conditioning)")
    with init_empty_weights():  # parameters on meta; the RoPE table (a plain tensor) is computed as usual
        official = modules.module("model").WanModel(
            model_type="t2v",
            patch_size=tuple(c.patch_size),
            text_len=512,
            in_dim=c.in_channels,
            dim=c.num_attention_heads * c.attention_head_dim,
            ffn_dim=c.ffn_dim,
            freq_dim=c.freq_dim,
            text_dim=c.text_dim,
            out_dim=c.out_channels,
            num_heads=c.num_attention_heads,
            num_layers=c.num_layers,
            window_size=(-1, -1),
            qk_norm=c.qk_norm is not None,
            cross_attn_norm=c.cross_attn_norm,
            eps=c.eps,
        )
    return _assign(official, model.state_dict(), _inverse(convert_wan_transformer_to_diffusers, official))


_RESIDUAL = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}


def _decoder_upsample_names(official_keys: list[str], residual_blocks: int) -> dict[str, str]:
    """``decoder.upsamples.N.*`` (one flat list: per level, residual_blocks + 1 residual blocks, then a resample
    but after the last level) -> ``decoder.up_blocks.LEVEL.{resnets.I,upsamplers.0}.*``."""
    names = {}
    per_level = residual_blocks + 2
    for key in official_keys:
        match = re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", key)
        if not match:
            continue
        level, index = divmod(int(match[1]), per_level)
        rest = match[2]
        if rest.startswith(("resample.", "time_conv.")):
            names[f"decoder.up_blocks.{level}.upsamplers.0.{rest}"] = key
            continue
        for old, new in _RESIDUAL.items():
            if rest.startswith(old + "."):
                names[f"decoder.up_blocks.{level}.resnets.{index}.{new}{rest[len(old) :]}"] = key
    return names


def vae(model) -> torch.nn.Module:
    """diffusers' ``AutoencoderKLWan`` (the Wan2.1 VAE of the A14B) as the official ``WanVAE_``."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    c = model.config
    if c.z_dim != 16 or c.is_residual:
        raise ConversionError("only the Wan2.1 VAE (16 latent channels) converts; the Wan2.2 VAE of the 5B does not yet")
    with init_empty_weights():
        official = modules.module("vae2_1").WanVAE_(
            dim=c.base_dim,
            z_dim=c.z_dim,
            dim_mult=list(c.dim_mult),
            num_res_blocks=c.num_res_blocks,
            attn_scales=list(c.attn_scales),
            temperal_downsample=list(c.temperal_downsample),
            dropout=0.0,
        )
    keys = list(official.state_dict())
    names = {k: v for k, v in _inverse(convert_wan_vae_to_diffusers, official).items() if not v.startswith("decoder.upsamples.")}
    return _assign(official, model.state_dict(), names | _decoder_upsample_names(keys, c.num_res_blocks))


_T5_BLOCK = {
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",  # gated-GELU: GELU(wi_0 x) * wi_1 x
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
}


def text_encoder(model) -> torch.nn.Module:
    """transformers' ``UMT5EncoderModel`` as the official ``T5Encoder`` (a relative position table per block)."""
    c = model.config
    if not c.is_gated_act or c.dense_act_fn != "gelu_new" or c.relative_attention_max_distance != 128:
        raise ConversionError(f"not a UMT5 encoder the official T5 computes ({c.feed_forward_proj}, {c.dense_act_fn})")
    with init_empty_weights():
        official = modules.module("t5").T5Encoder(
            vocab=c.vocab_size,
            dim=c.d_model,
            dim_attn=c.d_kv * c.num_heads,
            dim_ffn=c.d_ff,
            num_heads=c.num_heads,
            num_layers=c.num_layers,
            num_buckets=c.relative_attention_num_buckets,
            shared_pos=False,
            dropout=0.0,
        )
    names = {"encoder.embed_tokens.weight": "token_embedding.weight", "encoder.final_layer_norm.weight": "norm.weight"}
    for block in range(c.num_layers):
        names |= {f"encoder.block.{block}.{k}": f"blocks.{block}.{v}" for k, v in _T5_BLOCK.items()}
    source = {k: v for k, v in model.state_dict().items() if k != "shared.weight"}  # tied to embed_tokens
    return _assign(official, source, names)
