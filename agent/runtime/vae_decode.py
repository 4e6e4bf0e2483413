"""The VAE decode rungs (knob ``vae_decode``): the same decoder, laid out and run for the GPU.

``channels_last``: the Conv3d weights in channels-last-3d, so cuDNN runs its implicit-GEMM kernels on NDHWC without
converting each input, and cuDNN picks the fastest algorithm for each shape. Two of the decoder's habits are copies of
whole activations at every causal convolution and norm (48 % of a channels-last decode's kernel time on an H200,
benchmarks/results/h200x2-2026-11-27/decode.md), so they are done without the copies, computing the same function
(up to rounding: the norm rounds once where the original rounded after each step):
- a causal convolution zero-pads its input in space with ``F.pad`` before convolving (a copy of the input, in the
  contiguous layout): the spatial zeros become the convolution's own padding, only the time padding stays;
- the decoder's RMS norm normalizes over the channels in float32 through five elementwise passes: one fused
  ``rms_norm`` over the channels-last view does it, in float32 inside the kernel.
A third habit costs the compiled decoder, not the eager one: its time upsampling marks a first chunk's cache with the
string "Rep" and compares each cached tensor with it (``tensor == "Rep"``), which Dynamo cannot trace. The break, in a
loop, made Dynamo skip the decoder's forward and compile its blocks one by one instead, past its limit of 8 graphs a
function (27 graphs, 50 s and 22 s of compile in the first two decodes on an H100,
benchmarks/results/h100-2026-11-27d/decoder-compile.json). The same update is made with ``isinstance`` here.
``compiled``: that, and the decoder compiled by Inductor (VAE_INDUCTOR_OPTIONS). Applied before any offloading, whose
hooks wrap the forwards replaced here.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F  # noqa: N812 (torch's convention)

VAE_INDUCTOR_OPTIONS = {"coordinate_descent_tuning": False, "coordinate_descent_check_all_directions": False}


def tune_vae(vae, mode: str) -> None:
    torch.backends.cudnn.benchmark = True  # cuDNN times its conv3d algorithms once per shape, keeps the fastest
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.to(memory_format=torch.channels_last_3d)
            causal = len(getattr(module, "_padding", ())) == 6  # diffusers' WanCausalConv3d, the reference's CausalConv3d
            if causal and module.padding_mode == "zeros":
                _pad_in_the_convolution(module)
        elif getattr(module, "mode", None) == "upsample3d" and hasattr(module, "time_conv"):  # WanResample, Resample
            module.forward = types.MethodType(_resample_traceably, module)
        elif type(module).__name__ == "WanRMS_norm" and module.channel_first and not torch.is_tensor(module.bias):
            module.forward = types.MethodType(_fused_rms_norm, module)
    if mode == "compiled":
        # Traced whole (the time upsampling above), the decoder compiles to 3 graphs: the first chunk, the second,
        # and the rest. On an H100 at 480p, 81 frames: 0.771 s a decode against 1.177 channels-last, 61 s to compile
        # (benchmarks/results/h100-2026-11-27f/decoder-traceable.json). torchao's FP8 quantize_ turns on Inductor's
        # coordinate-descent tuning for the whole process where `inductor_tuning` lets it
        # (recommended_inductor_config_setter); with it, the decoder's first decode ran past 5 min on an H100. The
        # decoder is compiled without it, always.
        vae.decoder.compile(dynamic=False, options=VAE_INDUCTOR_OPTIONS)


def _pad_in_the_convolution(conv: torch.nn.Conv3d) -> None:
    """The causal convolution's spatial zero padding moved into the convolution; its time padding (zeros or the cached
    frames in front) stays with it."""
    # F.pad's order, the last dimension first: width, height, then time (front, back)
    width, _, height, _, front, _ = tuple(conv._padding)  # type: ignore[arg-type]
    conv.padding = (0, height, width)
    conv._time_padding = front  # type: ignore[assignment]
    conv.forward = types.MethodType(_causal_convolution, conv)  # type: ignore[method-assign]


def _causal_convolution(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    front = self._time_padding
    if cache_x is not None and front > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        front -= cache_x.shape[2]
    if front > 0:
        x = F.pad(x, (0, 0, 0, 0, front, 0))
    return self._conv_forward(x, self.weight, self.bias)


def _resample_traceably(self, x: torch.Tensor, feat_cache=None, feat_idx=None) -> torch.Tensor:
    """``WanResample.forward`` (diffusers) and ``Resample.forward`` (the reference) in ``upsample3d`` mode: the time
    upsampling with the cache as they update it, then their own spatial upsampling (their forward without a cache)."""
    if feat_cache is not None:
        x = _upsample_in_time(self, x, feat_cache, [0] if feat_idx is None else feat_idx)
    return type(self).forward(self, x)


def _upsample_in_time(self, x: torch.Tensor, feat_cache: list, feat_idx: list) -> torch.Tensor:
    idx = feat_idx[0]
    cached = feat_cache[idx]
    feat_idx[0] += 1
    if cached is None:  # the first chunk keeps its one frame; the next one sees zeros before it ("Rep")
        feat_cache[idx] = "Rep"
        return x
    after_first = isinstance(cached, str)
    b, c, t, h, w = x.shape
    cache_x = x[:, :, -2:].clone()  # the decoder's CACHE_T frames
    if cache_x.shape[2] < 2:
        before = torch.zeros_like(cache_x) if after_first else cached[:, :, -1:].to(cache_x.device)
        cache_x = torch.cat([before, cache_x], dim=2)
    x = self.time_conv(x) if after_first else self.time_conv(x, cached)
    feat_cache[idx] = cache_x
    x = x.reshape(b, 2, c, t, h, w)
    x = torch.stack((x[:, 0], x[:, 1]), 3)
    return x.reshape(b, c, t * 2, h, w)


def _fused_rms_norm(self, x: torch.Tensor) -> torch.Tensor:
    """``WanRMS_norm.forward`` (``F.normalize`` over the channels in float32, times its scale sqrt(C) and gamma) as one
    ``rms_norm`` over the channels-last view: x / sqrt(mean(x^2) + eps) = x * sqrt(C) / |x| already, eps far below
    any norm that is not zero (where both give zeros)."""
    channels = x.shape[1]
    weight = self.gamma.reshape(channels).to(x.dtype)
    return F.rms_norm(x.movedim(1, -1), (channels,), weight, eps=1e-24).movedim(-1, 1)
