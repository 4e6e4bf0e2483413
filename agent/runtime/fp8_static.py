"""FP8 linears with static activation scales (knob ``fp8: torchao_static``), calibrated on the trial's own denoising.

Dynamic scales (``torchao_row``/``torchao_tensor``) find each activation's amax at every call: a reduction over the
whole activation before it can be cast: ~90-106 ms of an 1814 ms A14B forward on an H200 even fused by Inductor
(benchmarks/results/h200x2-2026-11-27/forward-tensorwise.md: the ``amax`` kernels and the casts after them). With
one scale per linear fixed beforehand the cast is elementwise, and Inductor writes FP8 straight from the norm,
modulation or GELU before it. The scales come from torchao's observers (``Float8StaticActivationFloat8WeightConfig``,
prepare -> calibrate -> convert; per-tensor, as static activation scales must be), run over one short denoising of
the trial's prompt in the experts' own precision, from another seed than the measured clips', so that the scales
are not fitted to the very noise they are then judged on. Activations beyond the calibrated range saturate: a
precision trade, which the fidelity gate measures on the experts' outputs and the clip like any other. It runs before
a trial's work is split over GPUs, so that every rank calibrates on the whole problem, with CFG per expert as the
measured clips run it. The experts must be on the GPU in their own precision meanwhile (offload none; agent/runtime/
memory.py sizes them so).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from agent.files import atomic_path
from agent.runtime import generate
from agent.runtime.config import FP8_SCALES_FILE, CarriedCalibration, TrialConfig
from agent.runtime.memory import UnsupportedOnHardware
from agent.runtime.pipeline import EXPERTS, BackendUnavailable, experts, fp8_compute_filter, require_fp8_cores, synchronize

# Steps of the calibration denoising: the trial's own schedule, shortened past this (its timesteps span the same range,
# and both experts take steps of it); 8 bf16 CFG steps of A14B are 16 forwards of ~3.4 s each on an H100 (PERF.md).
CALIBRATION_STEPS = 8
CALIBRATION_SEED_OFFSET = 1

logger = logging.getLogger(__name__)


def quantize(pipe, config: TrialConfig, device: torch.device) -> dict:
    """Observe the experts' linear inputs over one calibration denoising (or load the ranges another trial observed on
    the same experts: ``config.calibration_carried``), then quantize them with those scales; what was done (layers,
    steps, seed, seconds, where from) for the trial's set-up record. memory.choose has refused any offloading."""
    require_fp8_cores(config.knobs, device)
    try:
        from torchao.prototype.quantization.quant_api import Float8ObservedLinear, Float8StaticActivationFloat8WeightConfig
        from torchao.quantization import quantize_
    except ImportError as err:
        fix = "pip install -e '.[fp8]'"
        raise BackendUnavailable(f"fp8=torchao_static needs torchao with its static FP8 config ({err}): {fix}") from err

    t0 = time.perf_counter()
    prepare = Float8StaticActivationFloat8WeightConfig(step="prepare", set_inductor_config=False)
    for expert in experts(pipe):
        quantize_(expert, prepare, filter_fn=fp8_compute_filter)
    named = {name: getattr(pipe, name) for name in EXPERTS if getattr(pipe, name, None) is not None}
    observed = {f"{n}.{fqn}": m for n, e in named.items() for fqn, m in e.named_modules() if isinstance(m, Float8ObservedLinear)}
    if not observed:
        raise UnsupportedOnHardware(
            "fp8=torchao_static found no linear layer to quantize: FP8 compute takes the transformer blocks' bf16 or "
            f"fp16 ones, and precision is {config.knobs.precision}"
        )
    record = _load_ranges(observed, config.calibration_carried, device) if config.calibration_carried else None
    if record is None:
        steps = min(config.knobs.steps, CALIBRATION_STEPS)
        seed = config.workload.seed + CALIBRATION_SEED_OFFSET
        positive, negative, _ = generate.encode(pipe, config, device)
        generate.denoise(pipe, config, positive, negative, steps, seed, generate.guidance_switch(config.knobs))
        synchronize(device)
        _unobserved(observed, steps)
        record = {"calibration_steps": steps, "calibration_seed": seed}
    # kept beside every such trial, loaded or not: a trial after it may carry them on (saying who calibrated them)
    _save_ranges(observed, Path(config.output_dir) / FP8_SCALES_FILE, record | {"from": record.get("from", config.name)})
    layers = len(observed)
    observed.clear()  # each bf16 weight must go as soon as its FP8 one is made: no reference held past here
    if device.type == "cuda":  # the calibration's activations, before the FP8 weights are made beside the bf16 ones
        torch.cuda.empty_cache()
    convert = Float8StaticActivationFloat8WeightConfig(step="convert", set_inductor_config=config.knobs.inductor_tuning)
    for expert in experts(pipe):
        quantize_(expert, convert, filter_fn=lambda module, _: isinstance(module, Float8ObservedLinear))
    synchronize(device)
    return record | {
        "layers": layers,
        "granularity": "per tensor (activations and weights)",
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _save_ranges(observed: dict, path: Path, record: dict) -> None:
    """Every observed layer's input range (the observers' min and max), for a trial that computes the same experts.
    Written once, by the first rank of a torchrun trial (every rank observed the whole problem)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    ranges = ((f"{fqn}:{end}", getattr(m.input_act_obs, f"{end}_val")) for fqn, m in observed.items() for end in ("min", "max"))
    tensors = {key: value.detach().cpu() for key, value in ranges}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in record.items()})


def _load_ranges(observed: dict, carried: CarriedCalibration, device: torch.device) -> dict | None:
    """Put another trial's observed ranges into this trial's observers; how and by which trial they were calibrated
    (``from``). None where the file cannot be read (this trial calibrates then). Its layers must be exactly these:
    anything else is another model or another filter, never quietly half-applied."""
    path = carried.path
    try:
        scales = safe_open(path, framework="pt", device=str(device))
    except OSError as err:
        logger.warning("the static FP8 scales in %s cannot be read (%s): calibrating here", path, err)
        return None
    with scales as f:
        names, metadata = set(f.keys()), f.metadata() or {}
        wanted = {f"{fqn}:{end}" for fqn in observed for end in ("min", "max")}
        if names != wanted:
            odd = sorted(names ^ wanted)
            raise ValueError(f"the static FP8 scales in {path} are not of this trial's layers ({len(odd)} differ, e.g. {odd[0]})")
        for fqn, module in observed.items():
            module.input_act_obs.min_val = f.get_tensor(f"{fqn}:min")
            module.input_act_obs.max_val = f.get_tensor(f"{fqn}:max")
    steps, seed = int(metadata["calibration_steps"]), int(metadata["calibration_seed"])
    return {"calibration_steps": steps, "calibration_seed": seed, "from": metadata.get("from", carried.trial)}


def _unobserved(observed: dict, steps: int) -> None:
    """An error where the calibration never ran one of the ``observed`` linear layers (keyed ``expert.fqn``)."""
    unseen = [fqn for fqn, linear in observed.items() if not hasattr(linear.input_act_obs, "max_val")]
    if unseen:
        raise RuntimeError(
            f"fp8=torchao_static: the calibration's {steps} steps never ran {unseen[0]} (and {len(unseen) - 1} more "
            "linear layers): its expert took no step; calibrate with more steps"
        )
