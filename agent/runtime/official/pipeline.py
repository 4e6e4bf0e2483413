"""The official runtime: Wan2.2's reference modules driven by its reference sampling loop, timed like the diffusers one.

The reference T5 encoder, WanModel experts, Wan2.1 VAE and FlowUniPC solver (``wan22``'s ``wan/modules`` and
``wan/utils``) run what ``WanT2V.generate`` (``wan/text2video.py``) runs, with every setting passed explicitly
rather than taken from that file's defaults (``lightning=True`` there forces a ``/mnt/engines`` checkpoint folder and
drops the unconditional pass): the solver with its shift, the expert boundary (0.875 of 1000), each expert's
guidance, CFG skipped only for an expert at guidance <= 1 (what its Lightning path does). The noise is drawn as
diffusers draws it (a CPU generator seeded by the workload), so both runtimes start a clip from the same latents.
``offload: model`` is its ``offload_model``: the expert in use alone on the GPU, the T5 brought in for the prompts,
both experts sent back before the decode (how it runs on one 80 GB card, where its activations do not fit beside
both experts).

The weights are the trial's diffusers-layout ones (downloaded or synthetic), converted by renaming (convert.py);
the Lightning LoRA is fused before that, so the official experts carry it. ``OfficialPipeline`` answers the calls
the worker, generate.py and probe.py make of a diffusers ``WanPipeline``, so both runtimes are measured, checked
and reported by the same code.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from types import SimpleNamespace
from typing import Any

import torch

from agent.runtime import pipeline as diffusers_runtime
from agent.runtime.config import TrialConfig
from agent.runtime.generate import TEXT_LEN  # the reference T5's context length too (wan/configs/shared_config.py)
from agent.runtime.memory import UnsupportedOnHardware
from agent.runtime.official import attention_patch, convert, modules, split, support
from agent.runtime.vae_decode import tune_vae

NUM_TRAIN_TIMESTEPS = 1000
# Its fp32 regions are CUDA autocast; on the CPU (fp32 only) they say so at every call.
warnings.filterwarnings("ignore", message="User provided device_type of 'cuda'.*|CUDA is not available.*Disabling autocast")


def _autocast(device: torch.device, dtype: torch.dtype):
    """What ``WanT2V.generate`` computes under: CUDA autocast in the parameters' dtype (nothing to do in fp32)."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class Expert(torch.nn.Module):
    """A reference ``WanModel`` behind the call made of a diffusers transformer (latents batched, text padded);
    ``onload(model)`` runs before each call (offloading: the expert brought to the GPU, as the reference does)."""

    def __init__(self, model: Any, dtype: torch.dtype, onload=None):
        super().__init__()
        self.model, self.compute_dtype, self.onload = model, dtype, onload
        self.ranks = 1  # the reference's sequence parallelism pads the tokens to a multiple of its ranks
        self.config = SimpleNamespace(patch_size=tuple(model.patch_size), in_channels=model.in_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        _, p_h, p_w = self.config.patch_size
        frames, height, width = hidden_states.shape[2:]
        tokens = frames * (height // p_h) * (width // p_w)
        if self.onload is not None:
            self.onload(self.model)
        with _autocast(hidden_states.device, self.compute_dtype):
            out = self.model(
                list(hidden_states),
                t=timestep,
                context=list(encoder_hidden_states),
                seq_len=-(-tokens // self.ranks) * self.ranks,  # as WanT2V.generate: a whole share per rank
            )
        return (torch.stack(out),)


class Vae:
    """The reference ``WanVAE_`` decoding as ``Wan2_1_VAE.decode`` does (autocast, float, clamp to [-1, 1]); the caller
    has already applied the latents' mean and std, so its scale is the identity."""

    def __init__(self, model: Any, config, dtype: torch.dtype):
        self.model, self.config, self.dtype = model, config, dtype
        self.decoder = model.decoder  # for the decoder rungs (channels-last, compiled)

    def modules(self):
        return self.model.modules()

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        with _autocast(z.device, self.dtype):
            return (self.model.decode(z, [0.0, 1.0]).float().clamp_(-1, 1),)


class OfficialPipeline:
    """The reference components, and its sampling loop as ``__call__`` with the keywords generate.py passes."""

    def __init__(self, diffusers_pipe, device: torch.device, dtype: torch.dtype, shift: float, tokenizer_dir: str,
                 offload: str = "none", text_encoder_on_cpu: bool = False):  # fmt: skip
        self.offload, self.text_encoder_on_cpu = offload, text_encoder_on_cpu
        self.text_encoder = convert.text_encoder(diffusers_pipe.text_encoder)
        self.tokenizer = modules.module("tokenizers").HuggingfaceTokenizer(
            name=tokenizer_dir, seq_len=TEXT_LEN, clean="whitespace"
        )
        experts = [convert.transformer(m) for m in diffusers_runtime.experts(diffusers_pipe)]
        onload = self.resident if offload == "model" else None
        self.transformer = Expert(experts[0], dtype, onload)
        self.transformer_2 = Expert(experts[1], dtype, onload) if len(experts) > 1 else None
        self.vae = Vae(convert.vae(diffusers_pipe.vae), diffusers_pipe.vae.config, dtype)
        self.scheduler = modules.module("utils.fm_solvers_unipc").FlowUniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1, use_dynamic_shifting=False
        )
        self.scheduler.register_to_config(shift=shift)  # as generate's set_timesteps(shift=...), for every caller
        self.config = SimpleNamespace(boundary_ratio=diffusers_pipe.config.boundary_ratio, expand_timesteps=False)
        self.vae_scale_factor_temporal = diffusers_pipe.vae_scale_factor_temporal
        self.vae_scale_factor_spatial = diffusers_pipe.vae_scale_factor_spatial
        self._execution_device = device

    def place(self) -> None:
        """Where the components start: all on the GPU; offloaded, the VAE alone (the others come when called)."""
        self.vae.model.to(self._execution_device)
        self.resident(None if self.offload == "model" else "all")
        if self.text_encoder_on_cpu:
            self.text_encoder.to("cpu")

    def resident(self, wanted) -> None:
        """Only ``wanted`` (a module, None or "all") of the text encoder and experts on the GPU, the rest in host
        memory: what ``WanT2V._prepare_model_for_timestep`` does between experts, and ``generate`` around its T5."""
        swappable = [m for m in (self.text_encoder, self.transformer.model, getattr(self.transformer_2, "model", None))
                     if m is not None and not (m is self.text_encoder and self.text_encoder_on_cpu)]  # fmt: skip
        for module in swappable:  # out first, so that the one coming in finds the room
            if wanted != "all" and module is not wanted and next(module.parameters()).device.type != "cpu":
                module.to("cpu")
        for module in swappable:
            if (wanted == "all" or module is wanted) and next(module.parameters()).device.type == "cpu":
                module.to(self._execution_device)

    def encode_prompt(self, prompt: str, negative_prompt: str, do_classifier_free_guidance: bool, device: torch.device,
                      max_sequence_length: int = TEXT_LEN):  # fmt: skip
        """As ``T5EncoderModel.__call__``: each prompt's own tokens, at most ``max_sequence_length`` (the DiT pads them
        back to its text_len, 512, with zeros)."""

        def encode(text: str) -> torch.Tensor:
            ids, mask = self.tokenizer([text], return_mask=True, add_special_tokens=True, max_length=max_sequence_length)
            ids, mask = ids.to(device), mask.to(device)
            return self.text_encoder(ids, mask)[:, : int(mask.gt(0).sum())]

        if self.offload == "model":
            self.resident(self.text_encoder)
        encoded = encode(prompt), encode(negative_prompt) if do_classifier_free_guidance else None
        if self.offload == "model":
            self.resident(None)
        return encoded

    def __call__(self, *, prompt_embeds, negative_prompt_embeds, height, width, num_frames, num_inference_steps,
                 guidance_scale, generator, output_type, callback_on_step_end, guidance_scale_2=None):  # fmt: skip
        device = self._execution_device
        shape = (1, self.transformer.config.in_channels, (num_frames - 1) // self.vae_scale_factor_temporal + 1,
                 height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)  # fmt: skip
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        boundary = (self.config.boundary_ratio or 0.0) * NUM_TRAIN_TIMESTEPS
        with torch.no_grad():
            for index, t in enumerate(self.scheduler.timesteps):
                high = t.item() >= boundary
                expert = self.transformer if high or self.transformer_2 is None else self.transformer_2
                scale = guidance_scale if high else (guidance_scale_2 if guidance_scale_2 is not None else guidance_scale)
                timestep = torch.stack([t])
                noise_pred = expert(latents, timestep, prompt_embeds)[0]
                if scale > 1.0:
                    uncond = expert(latents, timestep, negative_prompt_embeds)[0]
                    noise_pred = uncond + scale * (noise_pred - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False, generator=generator)[0]
                callback_on_step_end(self, index, t, {})
        if self.offload == "model":  # as the reference, both experts leave before the decode
            self.resident(None)
            torch.cuda.empty_cache()
        return SimpleNamespace(frames=latents)


def _tokenizer_dir(config: TrialConfig, diffusers_pipe, scratch: str) -> str:
    """Where the reference tokenizer loads from: the model's own folder, or (a model built in memory) a copy saved."""
    if not config.model_path.startswith("synthetic:"):
        return f"{config.model_path}/tokenizer"
    diffusers_pipe.tokenizer.save_pretrained(scratch)
    return scratch


def build(config: TrialConfig, device: torch.device) -> tuple[OfficialPipeline, dict[str, float], dict]:
    """As ``agent.runtime.pipeline.build`` for the official runtime: the pipeline, set-up stage seconds, choices."""
    knobs, dtype = config.knobs, diffusers_runtime.DTYPES[config.knobs.precision]
    refused = support.refusal(knobs, on_gpu=device.type == "cuda")
    if refused:
        raise UnsupportedOnHardware(refused)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    if knobs.fsdp:  # the experts start in host memory and reach the GPUs sharded
        loading = config.model_copy(update={"knobs": knobs.model_copy(update={"offload": "model"})})
        pipe, _, _, lora = diffusers_runtime.load(loading, dtype, device)
        offload, offload_reason = "none", f"fsdp: 1/{knobs.ulysses} of each expert's weights on each GPU"
    else:
        pipe, offload, offload_reason, lora = diffusers_runtime.load(config, dtype, device)
    if knobs.ulysses > 1 and offload == "model":  # as its generate.py: sequence parallelism with resident experts
        raise UnsupportedOnHardware(
            f"runtime official with ulysses keeps its experts on every GPU, and they do not fit ({offload_reason})"
        )
    if knobs.lightning:
        assert lora is not None
        diffusers_runtime.fuse_lightning(pipe, lora)  # fused in diffusers' layout, then converted with the rest
    patch = modules.patch_attention(device)
    attention_patch.use_kernel(support.SDPA_BACKENDS[knobs.attention])
    with tempfile.TemporaryDirectory(prefix="wan-agent-tokenizer-") as scratch:
        official = OfficialPipeline(pipe, device, dtype, knobs.flow_shift, _tokenizer_dir(config, pipe, scratch),
                                    offload, knobs.text_encoder_on_cpu)  # fmt: skip
    del pipe
    inner = SimpleNamespace(transformer=official.transformer.model, transformer_2=getattr(official.transformer_2, "model", None))
    sequence_parallel = None
    if knobs.ulysses > 1:  # before FSDP and compile: the patched forwards are what they wrap
        sequence_parallel = split.split_sequence(diffusers_runtime.experts(inner), knobs.ulysses)
        for expert in (official.transformer, official.transformer_2):
            if expert is not None:
                expert.ranks = knobs.ulysses
                expert.model = split.shard(expert.model, dtype) if knobs.fsdp else expert.model
        sequence_parallel["fsdp"] = "wan/distributed/fsdp.py shard_model" if knobs.fsdp else None
    official.place()
    diffusers_runtime.synchronize(device)
    stages["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if knobs.fp8 != "none":
        diffusers_runtime.apply_fp8(inner, knobs, device)
    if knobs.compile != "none":  # each block on its own: the attention stand-in's length check breaks a whole graph
        for expert in diffusers_runtime.experts(inner):
            for block in expert.blocks if knobs.compile == "regional" else [expert]:
                if knobs.compile == "regional" and knobs.ulysses == 1:  # that check made outside the block
                    block.forward = attention_patch.lengths_checked_outside(torch.compile(block.forward))
                else:
                    block.compile()
    if knobs.vae_decode != "eager":
        tune_vae(official.vae, knobs.vae_decode)
    diffusers_runtime.synchronize(device)
    stages["prepare_s"] = time.perf_counter() - t0
    setup = {
        "offload": offload,
        "offload_reason": offload_reason,
        "runtime": {
            "code": f"{modules.code()[1]} (wan/modules, wan/utils/fm_solvers_unipc.py)",
            "sampling": "WanT2V.generate's loop: FlowUniPC solver, expert boundary 0.875, "
            "CFG per expert (skipped at guidance <= 1)",
            "solver_shift": knobs.flow_shift,
            "autocast": str(dtype).removeprefix("torch.") if device.type == "cuda" else "none (fp32 on the CPU)",
            "sdpa_kernel": support.SDPA_BACKENDS[knobs.attention] or "PyTorch's choice",
            "weights": "the trial's diffusers-layout weights, renamed into the reference modules (no copy)",
            # what was applied to the reference experts' modules (the DiT blocks, their linear layers)
            "experts": {"fp8": knobs.fp8, "compile": knobs.compile, "vae_decode": knobs.vae_decode},
            "sequence_parallel": sequence_parallel,
        },
        "attention_patch": patch,
    }
    return official, stages, setup
