"""The official Wan2.2 DiT (wan22 2.2.11's wan/modules/model.py) on CPU with the attention patch: it computes what
diffusers' WanTransformer3DModel computes on the same weights, and a batch of clips of unequal sizes comes out
as each clip alone (the module's own SDPA fallback does not: it attends the padding)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from agent.quality import relative_error
from agent.runtime.official import attention_patch, modules

CPU = torch.device("cpu")
TINY = dict(dim=96, ffn_dim=512, freq_dim=64, text_dim=64, num_heads=3, num_layers=2, in_dim=16, out_dim=16)


@pytest.fixture(scope="module")
def official():
    record = modules.patch_attention(CPU)
    assert record["patched"] and record["missing"] == "flash_attn is not installed"
    assert record["check"]["relative_error"] < record["check"]["tolerance"]
    torch.manual_seed(0)
    model = modules.module("model").WanModel(model_type="t2v", **TINY).eval()
    with torch.no_grad():
        for param in model.parameters():  # init_weights() zeroes the head: redraw everything
            param.copy_(torch.randn_like(param) * 0.05)
    return model


def latents(frames: int, seed: int) -> torch.Tensor:
    return torch.randn(16, frames, 8, 8, generator=torch.Generator().manual_seed(seed))


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return relative_error(a.detach().numpy(), b.detach().numpy())


def test_the_patched_official_dit_computes_what_diffusers_computes_on_the_same_weights(official):
    diffusers_model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=64, ffn_dim=512, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    ).eval()  # fmt: skip
    diffusers_model.load_state_dict(convert_wan_transformer_to_diffusers(dict(official.state_dict())), strict=True)
    x, t = latents(3, 1), torch.tensor([500.0])
    text = torch.randn(12, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = official([x], t, [text], seq_len=3 * 4 * 4)[0]
        padded = torch.cat([text, text.new_zeros(512 - 12, 64)])[None]  # the official code pads text to 512 too
        ours = diffusers_model(hidden_states=x[None], timestep=t, encoder_hidden_states=padded, return_dict=False)[0][0]
    # Both in fp32 but the official attention, which computes in bf16 as flash_attn does (its dtype argument)
    assert err(theirs, ours) < 1e-3


def test_a_batch_of_unequal_clips_comes_out_as_each_clip_alone(official):
    # A timestep per token: the official forward expands a 1-D one only for a batch of one.
    long, short, t = latents(3, 3), latents(1, 4), torch.full((2, 48), 700.0)
    text = [torch.randn(12, 64, generator=torch.Generator().manual_seed(5))] * 2
    model_module = modules.module("model")
    with torch.no_grad():
        alone = official([short], t[:1, :16], text[:1], seq_len=16)[0]
        batched = official([long, short], t, text, seq_len=48)[1]  # the short clip padded from 16 to 48 tokens
        fallback = modules.module("attention").attention  # the module's own SDPA path: no mask, returns bf16
        try:
            model_module.flash_attention = fallback
            with pytest.warns(UserWarning, match="Padding mask is disabled"), pytest.raises(RuntimeError, match="dtype"):
                official([long, short], t, text, seq_len=48)  # an fp32 model cannot even take its bf16 output
            model_module.flash_attention = lambda *args, **kwargs: fallback(*args, **kwargs).float()
            with pytest.warns(UserWarning, match="Padding mask is disabled"):
                naive = official([long, short], t, text, seq_len=48)[1]
        finally:
            model_module.flash_attention = attention_patch.flash_attention
    assert err(batched, alone) < 1e-5
    assert err(naive, alone) > 1e-2


def test_the_code_can_come_from_a_checkout_of_the_official_repository(tmp_path):
    """WAN_AGENT_OFFICIAL_CODE names a checkout; its commit is recorded, and one other than the pinned says so."""
    installed, _ = modules.code()
    checkout = tmp_path / "Wan2.2"
    for sub in ("modules", "utils"):
        shutil.copytree(installed / sub, checkout / "wan" / sub, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "checkout"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    said = subprocess.run(
        [sys.executable, "-c", "from agent.runtime.official import modules; m = modules.module('model'); "
         "print(m.__file__); print(modules.code()[1])"],
        capture_output=True, text=True, env={**os.environ, modules.CHECKOUT_ENV: str(checkout)},
    )  # fmt: skip
    path, source = said.stdout.splitlines()
    assert path == str(checkout / "wan" / "modules" / "model.py"), said.stderr
    assert source.startswith(f"{modules.OFFICIAL_REPO} at ") and f"pinned is {modules.OFFICIAL_COMMIT[:12]}" in source
    empty = subprocess.run(
        [sys.executable, "-c", "from agent.runtime.official import modules; modules.module('model')"],
        capture_output=True, text=True, env={**os.environ, modules.CHECKOUT_ENV: str(tmp_path)},
    )  # fmt: skip
    assert empty.returncode == 1 and "has no wan/modules/model.py" in empty.stderr
