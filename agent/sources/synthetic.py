"""The `synthetic:` source: the real Wan2.2 architecture built from its config with random weights.

No hub is reachable here, so the agent makes its own model: a diffusers ``WanPipeline`` with two experts
(``transformer`` high-noise, ``transformer_2`` low-noise: the A14B) or one (the TI2V-5B, with
``expand_timesteps`` and the 48-channel Wan2.2 VAE), ``AutoencoderKLWan``, a UMT5 encoder and a locally made
tokenizer, with weights fixed by a seed, plus (two experts only, as published) a Lightning LoRA pair in the
lightx2v key layout so that the LoRA path is real too.

``tiny`` is saved in diffusers layout and loaded back with ``from_pretrained``, the path a downloaded
model takes. Full-size presets (``a14b``) are built directly on the accelerator in the compute dtype
(no fp32 copy, no disk): the compute is that of the real model, and it is ready in seconds.

Weights are always drawn in bf16, the dtype Wan2.2 publishes, then cast: torch's random draws differ
by dtype (a model drawn in fp16 is not the bf16 one rounded), so drawing in the trial's dtype would make
an fp16 rung a different model from the bf16 baseline it is compared against.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BOUNDARY_RATIO = 0.875  # Wan2.2-T2V-A14B: the high-noise expert takes t >= 875
DRAW_DTYPE = "bfloat16"
FORMAT = 4  # bump when what a seed gives changes (weights, tokenizer): cached on-disk models are then rebuilt
_KEEP_FP32 = ("rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")  # as from_pretrained does


@dataclass(frozen=True)
class SyntheticPreset:
    """Sizes of one synthetic model; the transformer keys are WanTransformer3DModel's config."""

    transformer: dict
    text_encoder: dict
    vae: dict
    vocab_size: int
    lora_rank: int  # of its Lightning LoRA pair; 0: none (lightx2v publishes none for the 5B)
    on_disk: bool  # saved and reloaded through from_pretrained, or built directly on the device
    flow_shift: float = 3.0
    experts: int = 2  # 2: high- and low-noise experts split at BOUNDARY_RATIO (A14B); 1: one for all steps (5B)
    expand_timesteps: bool = False  # the 5B takes a timestep per token

    @property
    def lightning(self) -> bool:
        return self.lora_rank > 0


# Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json: the Wan2.2 VAE (16x16 spatial, 4x temporal, 48 channels).
WAN22_VAE = dict(
    z_dim=48,
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    temperal_downsample=[False, True, True],
    latents_mean=[
        -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
        0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
        -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
        -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
    ],
    latents_std=[
        0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
        0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
        0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
        0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
    ],
)  # fmt: skip
# Wan2.2-T2V-A14B's experts (each 14.29 B parameters); the 5B is this with other widths.
A14B_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=1024,
)
TINY_TRANSFORMER = dict(
    A14B_TRANSFORMER,
    # 96 wide: torchao 0.18 mistakes a per-tensor-scaled 128×128 FP8 weight for a 128×128-block one.
    num_attention_heads=3,
    attention_head_dim=32,
    text_dim=64,
    freq_dim=64,
    ffn_dim=512,
    num_layers=4,
    rope_max_seq_len=64,
)
TINY_UMT5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
# What makes a model the TI2V-5B's shape: one transformer for every step, a timestep per token, no Lightning pair.
TI2V_5B: dict[str, Any] = dict(experts=1, expand_timesteps=True, flow_shift=5.0, lora_rank=0)
UMT5_XXL = dict(
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
)


PRESETS: dict[str, SyntheticPreset] = {
    # Sized so that a denoising step (not process start-up or imports) dominates a CPU trial while a
    # whole agent run stays within a few minutes on 2 cores.
    "tiny": SyntheticPreset(
        transformer=TINY_TRANSFORMER,
        text_encoder=TINY_UMT5,
        vae=dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
        vocab_size=256,
        lora_rank=4,
        on_disk=True,
    ),
    # Wan-AI/Wan2.2-T2V-A14B-Diffusers: each expert 14.29 B parameters; UMT5-XXL encoder; Wan2.1 VAE.
    "a14b": SyntheticPreset(
        transformer=A14B_TRANSFORMER,
        text_encoder=UMT5_XXL,
        vae=dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
        vocab_size=256384,
        lora_rank=64,  # the Lightning Seko-V1.1 files are rank 64
        on_disk=False,
    ),
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers: one 5.0 B transformer over the 48-channel latents; UMT5-XXL; Wan2.2 VAE.
    "5b": SyntheticPreset(
        transformer=dict(A14B_TRANSFORMER, num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
        text_encoder=UMT5_XXL,
        vae=dict(WAN22_VAE, base_dim=160, decoder_base_dim=256, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
        vocab_size=256384,
        on_disk=False,
        **TI2V_5B,
    ),
    # The 5B's shape (one transformer, 48 latent channels, the Wan2.2 VAE's 16x compression) at toy size: CPU tests.
    "tiny-5b": SyntheticPreset(
        transformer=dict(TINY_TRANSFORMER, in_channels=48, out_channels=48),
        text_encoder=TINY_UMT5,
        vae=dict(WAN22_VAE, base_dim=8, decoder_base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
        vocab_size=256,
        on_disk=True,
        **TI2V_5B,
    ),
}


def preset(name: str) -> SyntheticPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic model {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


@contextmanager
def _default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _keep_fp32_modules(model) -> None:
    """Put back in fp32 the small modules that diffusers' from_pretrained keeps in fp32."""
    import torch

    for name, module in model.named_modules():
        if any(key in name.split(".") for key in _KEEP_FP32):
            module.to(torch.float32)
    for name, param in model.named_parameters():
        if any(key in name.split(".") for key in _KEEP_FP32):
            param.data = param.data.float()


def _placed(module, home, dtype, keep_fp32: bool = False):
    """Cast the bf16 draw to ``dtype`` and move it to ``home``; with ``keep_fp32``, the modules diffusers keeps
    in fp32 go there straight from the draw (bf16 -> fp32 is exact; through fp16 it would not be)."""
    import torch

    if keep_fp32:
        _keep_fp32_modules(module)
    for tensor in [*module.parameters(), *module.buffers()]:
        keep = not tensor.is_floating_point() or (keep_fp32 and tensor.dtype == torch.float32)
        tensor.data = tensor.data.to(home) if keep else tensor.data.to(home, dtype)
    return module


def build_pipeline(name: str, seed: int, device="cpu", dtype=None, home=None):
    """Build the whole pipeline with weights drawn from ``seed``, created directly on ``device`` in ``dtype``.

    The weights depend on the device's random generator, so a model is always drawn on the same device
    and, if it is to live elsewhere (``home``: host memory for an offloaded model), moved there one
    component at a time: the same seed gives the same model whether it is offloaded or not.
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from agent.sources.tokenizer import build_t5_tokenizer

    p = preset(name)
    dtype = dtype or torch.float32
    tokenizer = build_t5_tokenizer(min(p.vocab_size, 256))
    torch.manual_seed(seed)
    home = home or device
    with torch.device(device), _default_dtype(getattr(torch, DRAW_DTYPE)):
        text_encoder = _placed(UMT5EncoderModel(UMT5Config(vocab_size=p.vocab_size, **p.text_encoder)).eval(), home, dtype)
        keep = dtype != torch.float32
        transformer = _placed(WanTransformer3DModel(**p.transformer), home, dtype, keep_fp32=keep)
        transformer_2 = _placed(WanTransformer3DModel(**p.transformer), home, dtype, keep_fp32=keep) if p.experts == 2 else None
        vae = _placed(AutoencoderKLWan(**p.vae), home, dtype)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=p.flow_shift)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=BOUNDARY_RATIO if p.experts == 2 else None,
        expand_timesteps=p.expand_timesteps,
    )


def lightning_lora_state_dict(name: str, seed: int, device="cpu", dtype=None) -> dict:
    """Random LoRA tensors in the lightx2v layout of the Wan2.2-Lightning files, shaped for ``name``."""
    import torch

    dtype = dtype or torch.float32
    p = preset(name).transformer
    dim = p["num_attention_heads"] * p["attention_head_dim"]
    rank = preset(name).lora_rank
    shapes = {f"{attn}.{proj}": (dim, dim) for attn in ("self_attn", "cross_attn") for proj in "qkvo"}
    shapes |= {"ffn.0": (dim, p["ffn_dim"]), "ffn.2": (p["ffn_dim"], dim)}
    gen = torch.Generator(device=device).manual_seed(seed)
    draw = getattr(torch, DRAW_DTYPE)
    tensors = {}
    for block in range(p["num_layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            key = f"diffusion_model.blocks.{block}.{module}"
            down = torch.randn(rank, fan_in, generator=gen, device=device, dtype=draw) / fan_in**0.5
            tensors[f"{key}.lora_down.weight"] = down.to(dtype)
            # Scaled so that the fused LoRA moves the experts' output by ~10 %, well beyond bf16 noise (~0.6 %):
            # like the real distilled one, Lightning computes another function.
            up = torch.randn(fan_out, rank, generator=gen, device=device, dtype=draw) * 0.1
            tensors[f"{key}.lora_up.weight"] = up.to(dtype)
            tensors[f"{key}.alpha"] = torch.tensor(float(rank), device=device)
    return tensors


def write(name: str, seed: int, target: Path) -> None:
    """Save pipeline and (where the model has one) Lightning LoRA pair to ``target`` (diffusers layout + ``lightning/``)."""
    from safetensors.torch import save_file

    pipe = build_pipeline(name, seed)
    pipe.save_pretrained(target)
    if not preset(name).lightning:
        return
    lora_dir = target / "lightning"
    lora_dir.mkdir()
    save_file(lightning_lora_state_dict(name, seed + 1), lora_dir / "high_noise_model.safetensors")
    save_file(lightning_lora_state_dict(name, seed + 2), lora_dir / "low_noise_model.safetensors")


def materialize(name: str, seed: int, cache_dir: Path) -> Path:
    """Return the on-disk model for ``name``/``seed``, building it once; a half-written one is never used.

    Builders take a lock, so one builds while others wait for it; a builder killed mid-write leaves only
    its staging folder, which the next one removes.
    """
    target = cache_dir / f"synthetic-{name}-v{FORMAT}-seed{seed}"
    if (target / "model_index.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{target.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model_index.json").exists():  # built by whoever held the lock before us
            return target
        for stale in (d for d in cache_dir.glob(f".{target.name}.*") if d.is_dir()):
            logger.info("removing %s, left by a build that was killed", stale)
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
        try:
            logger.info("building synthetic:%s (seed %d) in %s", name, seed, target)
            write(name, seed, staging / "model")
            (staging / "model" / "synthetic.json").write_text(json.dumps({"preset": name, "seed": seed}))
            # The rename makes the whole folder appear at once: a crash mid-write leaves only staging.
            (staging / "model").rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
