"""The configuration a trial runs with: the workload, the optimisation knobs, and where the model is.

These models validate themselves; a bad value fails with a message naming the field and what is
allowed. Playbooks reuse ``Workload`` and ``Knobs``; the worker reads a whole ``TrialConfig`` from
``trial.json``, so no user text ever travels through a shell.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Precision = Literal["fp32", "bf16", "fp16"]
# none: weights stay in `precision`. layerwise: float8_e4m3fn storage, upcast per layer (memory only).
# torchao_row / torchao_tensor: FP8 compute (dynamic activation + weight), CUDA with compute capability >= 8.9.
# torchao_static: FP8 compute, per-tensor scales, the activations' fixed by a calibration denoising (fp8_static.py).
Fp8Mode = Literal["none", "layerwise", "torchao_row", "torchao_tensor", "torchao_static"]
# nvfp4: FP4 compute (torchao NVFP4, dynamic activations, 16-element blocks), Blackwell (compute capability >= 10.0).
Fp4Mode = Literal["none", "nvfp4"]
# regional: compile_repeated_blocks (one transformer block, compiled once, reused 40 times); full: the whole model.
CompileMode = Literal["none", "regional", "full"]
# Where weights live between uses. auto: none if everything fits in free accelerator memory, else the
# cheapest mode that fits (model, then group, then sequential).
OffloadMode = Literal["none", "model", "group", "sequential", "auto"]
# How the VAE decodes. channels_last: conv weights in NDHWC (cuDNN's tensor-core layout) and cuDNN choosing
# its kernels by timing them. compiled: that, and the decoder compiled by Inductor (norms, SiLU, padding fused).
VaeDecode = Literal["eager", "channels_last", "compiled"]
# Which code generates: diffusers' WanPipeline, or the official Wan2.2 modules and sampling loop (agent/runtime/official).
Runtime = Literal["diffusers", "official"]


class Strict(BaseModel):
    """A model that refuses unknown keys, so a typo in a playbook is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class Workload(Strict):
    """What to generate. Changing any of it changes the work, so it is fixed across a run's trials."""

    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    height: int = Field(gt=0, le=2048)
    width: int = Field(gt=0, le=2048)
    frames: int = Field(gt=0, le=241)
    seed: int = Field(ge=0)
    fps: int = Field(default=16, gt=0, le=120)

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            lower, upper = value - value % 16, value - value % 16 + 16
            raise ValueError(f"must be a multiple of 16 (got {value}; try {lower or 16} or {upper})")
        return value

    @field_validator("frames")
    @classmethod
    def _four_n_plus_one(cls, value: int) -> int:
        if value % 4 != 1:
            lower = value - (value - 1) % 4
            raise ValueError(f"must be 4n+1 (got {value}; try {lower if lower > 0 else 1} or {lower + 4})")
        return value


class Knobs(Strict):
    """The settings the optimisation ladder changes, one rung at a time."""

    runtime: Runtime = "diffusers"
    precision: Precision = "bf16"
    fp8: Fp8Mode = "none"
    fp4: Fp4Mode = "none"
    lightning: bool = False  # load the Lightning 4-step LoRA into both experts and fuse it
    steps: int = Field(default=40, ge=1, le=1000)
    guidance_scale: float = Field(default=4.0, ge=0.0, le=50.0)  # high-noise expert; > 1 runs CFG
    guidance_scale_2: float = Field(default=3.0, ge=0.0, le=50.0)  # low-noise expert
    flow_shift: float = Field(default=3.0, gt=0.0, le=100.0)
    attention: str = Field(default="native", pattern=r"^[a-z0-9_]+$")  # a diffusers attention backend name
    # Self-attention's q/k/v in float8 e4m3 (one scale per head), on FA3 (attention: _flash_3; agent/runtime/kernels.py).
    attention_fp8: bool = False
    compile: CompileMode = "none"
    # torchao's recommended Inductor settings with FP8 linears: coordinate-descent tuning of every generated kernel,
    # process-wide. Off: on an H100 the converged Lightning configuration's first forwards took 21 s on a cold cache
    # with it off against 486 s with it on, and its step 1.860 s against 1.879 (two machines of the same kind;
    # benchmarks/results/h100-2026-11-26/agent-run-no-tuning and agent-run-attention). Only with torchao FP8 (fp8).
    inductor_tuning: bool = False
    offload: OffloadMode = "none"
    vae_tiling: bool = False
    vae_decode: VaeDecode = "eager"
    text_encoder_on_cpu: bool = False
    # Context parallelism: the experts' tokens split over this many GPUs (CPU processes without one), diffusers'
    # Ulysses attention (all-to-all over the heads, which it must divide); started by torchrun (agent/runtime/parallel.py).
    ulysses: int = Field(default=1, ge=1, le=64)
    # Ring attention: the tokens split over this many more GPUs, keys and values passed around the ring (any head
    # count; with ulysses, ulysses x ring GPUs). Needs a backend that returns the log-sum-exp (not native, not FP8).
    ring: int = Field(default=1, ge=1, le=64)
    # CFG parallelism: the conditional and unconditional branches of each CFG step on two GPUs (CPU processes); with
    # ulysses, on two Ulysses groups (ulysses x 2 GPUs).
    cfg_parallel: bool = False
    # The VAE decode split over the ranks of such a trial, one overlapping tile each (agent/runtime/parallel_decode.py).
    vae_parallel: bool = False
    # Runtime official with ulysses: each expert's weights sharded over the ranks by FSDP and gathered block by block
    # at each forward (its generate.py's --dit_fsdp), 1/N of them per GPU, so that the experts fit without offloading;
    # as there, the modulation tables and the expert's inputs (the timestep too) are in bf16: close, not bit for bit.
    fsdp: bool = False

    @model_validator(mode="after")
    def _one_low_precision_path(self) -> Knobs:
        if self.fp4 != "none" and self.fp8 != "none":
            raise ValueError(f"fp4={self.fp4} and fp8={self.fp8} both set; a layer is quantized one way: keep one")
        return self

    def describe(self) -> str:
        """A short human label: 'bf16, fp8=layerwise (storage), lightning, 4 steps, cfg 1/1, shift 5, compile=regional'."""
        parts: list[str] = [self.precision]
        if self.fp8 != "none":
            parts.append(f"fp8={self.fp8} ({'storage' if self.fp8 == 'layerwise' else 'compute'})")
        if self.fp4 != "none":
            parts.append(f"fp4={self.fp4}")
        if self.lightning:
            parts.append("lightning")
        parts += [f"{self.steps} steps", f"cfg {self.guidance_scale:g}/{self.guidance_scale_2:g}", f"shift {self.flow_shift:g}"]
        defaults = Knobs.model_fields
        for name in ("runtime", "attention", "compile", "inductor_tuning", "offload", "vae_decode", "ulysses", "ring"):
            if getattr(self, name) != defaults[name].default:
                parts.append(f"{name}={getattr(self, name)}")
        flags = ("attention_fp8", "vae_tiling", "text_encoder_on_cpu", "cfg_parallel", "vae_parallel", "fsdp")
        parts += [flag for flag in flags if getattr(self, flag)]
        return ", ".join(parts)


class Measurement(Strict):
    """How a trial is timed: untimed warm-up generations, then timed repeats whose spread is the noise."""

    warmup: int = Field(default=1, ge=0, le=10)
    repeats: int = Field(default=3, ge=1, le=50)
    # full: whole clips. probe: per-expert forwards only (warm-up, then probe_steps timed forwards per
    # expert, CFG included), from which the clip's denoising time is predicted.
    mode: Literal["full", "probe"] = "full"
    probe_steps: int = Field(default=3, ge=1, le=50)
    # How far a whole clip may land from the probe's prediction beyond the probe's own noise: what the prediction
    # leaves out (the pipeline's set-up of a clip, its loop; < 0.5 % on the A14B). A confirmation outside the
    # stated error is not confirmed.
    probe_tolerance: float = Field(default=0.05, ge=0, lt=1)
    # After the baseline, the repeats (probe_steps in probe mode) of each trial come from the baseline's
    # measured spread, between these bounds; `repeats`/`probe_steps` above are the baseline's.
    fewest: int = Field(default=3, ge=1, le=50)
    most: int = Field(default=10, ge=1, le=50)
    # Threads a trial on the CPU computes with (None: torch's default, one per core). With as many threads as
    # cores, other load on the machine deschedules one of them at every barrier: up to 8x slower clips on 2 shared
    # cores, where 1 thread ran up to 2.2x (benchmarks/tiny_noise.py). Every trial of a run uses the same number.
    cpu_threads: int | None = Field(default=None, ge=1, le=1024)
    # Trials that can share a process run one after another in the run's trial host (agent/trial_host.py), which
    # imports, starts CUDA and Inductor's compile workers once for all of them; the others in processes of their own.
    # False: every trial in a process of its own.
    share_process: bool = True

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Measurement:
        if self.fewest > self.most:
            raise ValueError(f"fewest ({self.fewest}) must not exceed most ({self.most})")
        return self


class LoraFiles(Strict):
    high_noise: str  # loaded into `transformer`
    low_noise: str  # loaded into `transformer_2`


class CarriedDecode(Strict):
    """Probe mode: the timed VAE decodes of the trial whose decoder this one runs unchanged, used instead of timing it
    again (agent/nodes/plan.py decides when)."""

    trial: str = Field(min_length=1)
    samples_s: list[float] = Field(min_length=1)
    # The best trial's directory: its check file holds the decoded check frame of this same decoder.
    dir: str | None = None


# Where a static-FP8 trial keeps the activation ranges its calibration observed (agent/runtime/fp8_static.py).
FP8_SCALES_FILE = "fp8_scales.safetensors"


class CarriedCalibration(Strict):
    """The static FP8 activation ranges of the trial whose experts this one computes unchanged (its confirmation, or a
    rung that changes only the decode): loaded instead of calibrated again (agent/carry.py decides when)."""

    trial: str = Field(min_length=1)
    path: str = Field(min_length=1)  # that trial's FP8_SCALES_FILE


class CarriedSteps(Strict):
    """Probe mode: the timed expert steps of the trial whose experts this one runs unchanged (only its decode differs),
    used instead of timing them again where the experts are placed as they were there (``offload``, resolved)."""

    trial: str = Field(min_length=1)
    dir: str = Field(min_length=1)  # its trial directory: the experts' check outputs as it computed (or carried) them
    offload: str = Field(min_length=1)
    step_samples_s: dict[str, list[float]]
    swap_s: dict[str, float] | None = None

    @model_validator(mode="after")
    def _each_expert_timed(self) -> CarriedSteps:
        if not self.step_samples_s or any(not samples for samples in self.step_samples_s.values()):
            raise ValueError("carried steps need at least one timed step of each expert")
        return self


class TrialConfig(Strict):
    """Everything the worker needs, written to ``trial.json`` by the agent."""

    name: str = Field(min_length=1)
    model_path: str  # a diffusers-layout folder, or synthetic:NAME for a model built on the device
    model_seed: int = Field(default=0, ge=0)
    lora: LoraFiles | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workload: Workload
    knobs: Knobs
    measurement: Measurement = Measurement()
    output_dir: str
    # The baseline trial's directory: fidelity (PSNR/SSIM, transformer relative error) is measured against it.
    reference_dir: str | None = None
    # Cap on this process's share of accelerator memory (tests the automatic offload choice).
    gpu_memory_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    # Cap on the worker's address space (RLIMIT_AS): past it an allocation fails as out-of-memory.
    host_memory_GiB: float | None = Field(default=None, gt=0.0)
    decode_carried: CarriedDecode | None = None
    steps_carried: CarriedSteps | None = None
    calibration_carried: CarriedCalibration | None = None

    @model_validator(mode="after")
    def _lightning_needs_lora(self) -> TrialConfig:
        if self.knobs.lightning and self.lora is None and not self.model_path.startswith("synthetic:"):
            raise ValueError("knobs.lightning is true but no lora files were given; the model source has no lightning/ LoRA pair")
        return self
