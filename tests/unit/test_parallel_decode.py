"""The split decode's tiling (agent/runtime/parallel_decode.py): tiles cover the latent with the stated overlap, the
grid is the one with the smallest tile, and blending the decoded tiles back rebuilds the frame exactly where the
decode is pointwise (so any seam left would be the VAE's, not the cutting's). The decode over real ranks is in
tests/integration/test_parallel.py."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from agent import sources
from agent.quality import fidelity
from agent.runtime import parallel_decode


def test_spans_cover_the_length_each_overlapping_the_next():
    assert parallel_decode.spans(60, 2) == [(0, 38), (30, 60)]
    assert parallel_decode.spans(104, 4) == [(0, 34), (26, 60), (52, 86), (78, 104)]
    with pytest.raises(ValueError, match="cannot be cut into 4 tiles"):
        parallel_decode.spans(3, 4)
    assert parallel_decode.spans(17, 6) == [(0, 6), (3, 9), (6, 12), (9, 15), (12, 17), (15, 17)]  # overlap <= stride


def test_the_grid_gives_the_smallest_tile():
    assert parallel_decode.grid(2, 60, 104) == (1, 2)  # the 480x832 clip: cut the long side
    assert parallel_decode.grid(4, 60, 104) == (1, 4)  # 60x34 latent pixels a tile, against 38x60 for 2x2
    assert parallel_decode.grid(8, 60, 104) == (1, 8)  # 60x21, against 38x34 for 2x4
    assert parallel_decode.grid(9, 100, 100) == (3, 3)  # 42x42, against 100x20 for 1x9
    with pytest.raises(ValueError, match="cannot be cut into 7 tiles"):
        parallel_decode.grid(7, 4, 4)


@pytest.mark.parametrize(("ranks", "height", "width"), [(2, 12, 20), (4, 12, 20), (6, 16, 16), (4, 30, 52)])
def test_blending_the_tiles_of_a_pointwise_decode_rebuilds_the_frame(ranks, height, width):
    z = torch.randn(1, 3, 2, height, width, generator=torch.Generator().manual_seed(0))

    def decode(latent):  # pointwise: each latent pixel becomes a 4x4 block, the frame count unchanged
        return latent.repeat_interleave(4, dim=3).repeat_interleave(4, dim=4)

    rows, cols = parallel_decode.grid(ranks, height, width, overlap=2)
    row_spans, col_spans = parallel_decode.spans(height, rows, 2), parallel_decode.spans(width, cols, 2)
    tiles = [[decode(z[:, :, :, a:b, c:d]) for c, d in col_spans] for a, b in row_spans]
    vae = AutoencoderKLWan.__new__(AutoencoderKLWan)  # only its blend_v/blend_h, which use no state
    video = parallel_decode.blend(vae, tiles, row_spans, col_spans, 4)
    assert video.shape == decode(z).shape and torch.allclose(video, decode(z), atol=1e-6)


def test_the_tiles_blend_as_diffusers_tiled_decode_blends_the_same_tiles():
    model = sources.resolve("synthetic:tiny", Path(os.environ["WAN_AGENT_CACHE"]))
    vae = AutoencoderKLWan.from_pretrained(str(model.path), subfolder="vae").float()
    z = torch.randn(1, vae.config.z_dim, 3, 12, 40, generator=torch.Generator().manual_seed(0))
    rows, cols = parallel_decode.grid(3, 12, 40)
    row_spans, col_spans = parallel_decode.spans(12, rows), parallel_decode.spans(40, cols)
    assert (rows, cols) == (1, 3) and col_spans == [(0, 22), (14, 36), (28, 40)]

    def pixels(video):
        return ((video.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 3, 0).numpy()

    with torch.inference_mode():
        whole = pixels(vae.decode(z).sample)
        tiles = [[vae.decode(z[:, :, :, a:b, c:d]).sample for c, d in col_spans] for a, b in row_spans]
        ours = pixels(parallel_decode.blend(vae, tiles, row_spans, col_spans, 8))
        # diffusers' tiles: 22 latent pixels (176) every 14 (112) across, the whole height
        vae.enable_tiling(
            tile_sample_min_height=96, tile_sample_min_width=176, tile_sample_stride_height=96, tile_sample_stride_width=112
        )
        theirs = pixels(vae.decode(z).sample)
    assert ours.shape == whole.shape and np.isfinite(ours).all()
    assert fidelity(ours, theirs)["psnr_dB"] > 80  # the same blend (they clamp after it, each tile here before)
    assert 25 < fidelity(ours, whole)["psnr_dB"] < 60  # the seams of a random VAE's tiles: tiled, not whole
