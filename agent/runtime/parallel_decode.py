"""The VAE decode split over the ranks of a parallel trial (knob ``vae_parallel``).

Every rank ends the denoising loop holding the whole latent clip, and without this each decodes all of it. Here the
latent is cut into one tile per rank, a grid of rows x columns chosen for the smallest tile, with ``OVERLAP`` latent
pixels shared by neighbours; each rank decodes its tile (all its frames, as the VAE's causal cache needs), the tiles
are gathered on every rank and blended across their overlaps the way diffusers' tiled decode blends its tiles
(``vae.blend_v``/``blend_h``, the upper and left tile faded into the next). A tile sees less context than the whole
frame near its cut, so the clip differs slightly from an untiled decode: a trade the VAE gate judges on the pixels.
"""

from __future__ import annotations

import math

import torch

# Latent pixels two neighbouring tiles share: diffusers' tiled decode default for the A14B's 8x VAE (256-pixel tiles
# every 192); for the 5B's 16x VAE it is 128 pixels, twice diffusers' overlap there.
OVERLAP = 8


def spans(length: int, parts: int, overlap: int = OVERLAP) -> list[tuple[int, int]]:
    """``parts`` ranges covering ``range(length)``: each starts where the last one's own share ended and runs
    ``overlap`` further (the last one to the end)."""
    stride = math.ceil(length / parts)
    if stride * (parts - 1) >= length:
        raise ValueError(f"a latent {length} pixels long cannot be cut into {parts} tiles")
    overlap = min(overlap, stride)  # a tile's ramp must end inside its own share, or it fades into a second neighbour
    return [(i * stride, length if i == parts - 1 else min(length, (i + 1) * stride + overlap)) for i in range(parts)]


def grid(ranks: int, height: int, width: int, overlap: int = OVERLAP) -> tuple[int, int]:
    """(rows, columns) of ``ranks`` tiles over a ``height`` x ``width`` latent whose largest tile is smallest."""
    best: tuple[int, tuple[int, int]] | None = None
    for rows in (r for r in range(1, ranks + 1) if ranks % r == 0):
        cols = ranks // rows
        if math.ceil(height / rows) * (rows - 1) >= height or math.ceil(width / cols) * (cols - 1) >= width:
            continue
        area = max(b - a for a, b in spans(height, rows, overlap)) * max(b - a for a, b in spans(width, cols, overlap))
        if best is None or area < best[0]:
            best = (area, (rows, cols))
    if best is None:
        raise ValueError(f"a {height}x{width} latent cannot be cut into {ranks} tiles")
    return best[1]


class ParallelDecode:
    """Stands in for ``vae.decode`` on every rank of ``group`` (all must call it together, with the same latents)."""

    def __init__(self, vae, group):
        self.vae, self.group, self.decode_whole = vae, group, vae.decode

    def __call__(self, z: torch.Tensor, return_dict: bool = True):
        import torch.distributed as dist
        from diffusers.models.autoencoders.vae import DecoderOutput

        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        rows, cols = grid(world, z.shape[3], z.shape[4])
        row_spans, col_spans = spans(z.shape[3], rows), spans(z.shape[4], cols)
        (top, bottom), (left, right) = row_spans[rank // cols], col_spans[rank % cols]
        mine = self.decode_whole(z[:, :, :, top:bottom, left:right].contiguous(), return_dict=False)[0]
        scale = mine.shape[3] // (bottom - top)  # latent to sample pixels (8 for the A14B's VAE, 16 for the 5B's)
        tallest = max(b - a for a, b in row_spans) * scale
        widest = max(b - a for a, b in col_spans) * scale
        padded = torch.nn.functional.pad(mine, (0, widest - mine.shape[4], 0, tallest - mine.shape[3]))
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded.contiguous(), group=self.group)
        tiles = [
            [gathered[i * cols + j][:, :, :, : (b - a) * scale, : (d - c) * scale] for j, (c, d) in enumerate(col_spans)]
            for i, (a, b) in enumerate(row_spans)
        ]
        video = blend(self.vae, tiles, row_spans, col_spans, scale)
        return (video,) if not return_dict else DecoderOutput(sample=video)


def blend(vae, tiles: list[list[torch.Tensor]], row_spans, col_spans, scale: int) -> torch.Tensor:
    """The decoded tiles as one video: each faded into its lower and right neighbour across their overlap, then
    each tile's own share kept (diffusers' ``tiled_decode`` does the same with its fixed-size tiles)."""
    rows = []
    for i, row in enumerate(tiles):
        kept = []
        for j, tile in enumerate(row):
            tile = tile.clone()
            if i > 0:
                tile = vae.blend_v(tiles[i - 1][j], tile, (row_spans[i - 1][1] - row_spans[i][0]) * scale)
            if j > 0:
                tile = vae.blend_h(row[j - 1], tile, (col_spans[j - 1][1] - col_spans[j][0]) * scale)
            tiles[i][j] = tile
            height = (row_spans[i + 1][0] - row_spans[i][0]) * scale if i + 1 < len(row_spans) else tile.shape[3]
            width = (col_spans[j + 1][0] - col_spans[j][0]) * scale if j + 1 < len(col_spans) else tile.shape[4]
            kept.append(tile[:, :, :, :height, :width])
        rows.append(torch.cat(kept, dim=4))
    return torch.cat(rows, dim=3)


def split_decode(pipe) -> dict:
    """Make ``pipe.vae.decode`` the parallel decode over all the trial's ranks."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise ValueError("vae_parallel splits the decode over a parallel trial's ranks: set ulysses, ring or cfg_parallel")
    if pipe.vae.use_tiling:
        raise ValueError("vae_parallel cuts the decode into one tile per rank itself: set vae_tiling false")
    vae = pipe.vae
    vae.decode = ParallelDecode(vae, None)
    return {"vae_parallel": {"ranks": dist.get_world_size(), "overlap_latent_px": OVERLAP}}
