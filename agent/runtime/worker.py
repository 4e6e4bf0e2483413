"""The trial worker: ``python -m agent.runtime.worker PATH/trial.json``.

Reads its whole configuration from the file (no user text on a command line), joins its ranks when torchrun started
it (agent/runtime/parallel.py), builds the pipeline,
runs the untimed warm-up and the timed repeats, saves the last clip as ``video.mp4`` and
``frames.npy``, and writes ``result.json`` (temp name, then rename). Exit codes: 0 done, 1 the trial
failed (the reason is in result.json), 2 the trial.json itself is invalid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from agent.files import atomic_path, write_json_atomic
from agent.hardware import versions
from agent.runtime import parallel
from agent.runtime.config import CarriedSteps, TrialConfig

logger = logging.getLogger("agent.worker")

RESULT_FILE = "result.json"
CHECK_FILE = "check_output.npz"  # each expert's output on a fixed input (same-function check)
VAE_CHECK = "vae_frame"  # in CHECK_FILE beside the experts': one fixed latent frame, decoded
HOSTED: dict | None = None  # set by agent.runtime.host for the trial it runs: its pid, how many trials it ran before


def nvml_id(device) -> str | int:
    """The NVML name of a torch device: its UUID, whatever CUDA_VISIBLE_DEVICES renumbered (0 on the CPU)."""
    import torch

    return f"GPU-{torch.cuda.get_device_properties(device).uuid}" if device.type == "cuda" else 0


def _peak_memory(device) -> dict[str, float]:
    import torch

    peak = {"peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    status = Path("/proc/self/status")
    if status.exists():  # the peak resident set since the trial began (a trial host resets it), the peak address space
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        for key, name in (("VmHWM", "peak_rss_GiB"), ("VmPeak", "peak_vm_GiB"))[: 1 if HOSTED else 2]:  # a host's is its own
            if key in fields:
                peak[name] = int(fields[key].split()[0]) / 2**20
    if device.type == "cuda":
        peak["peak_gpu_allocated_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        peak["peak_gpu_reserved_GiB"] = torch.cuda.max_memory_reserved(device) / 2**30
    return peak


def checks(trial: Path):
    """A trial's check outputs (CHECK_FILE), by name."""
    return np.load(trial / CHECK_FILE)


def check_errors(mine, ref) -> dict[str, float]:
    """Each expert's check output against the reference trial's, as relative error (the experts both trials have)."""
    from agent.quality import relative_error

    return {name: relative_error(mine[name], ref[name]) for name in ref.files if name in mine.files and name != VAE_CHECK}


def _fidelity(config: TrialConfig, out: Path) -> dict:
    """This trial's check outputs (and saved frames, in full mode) against the reference trial's, when there is one."""
    from agent.quality import fidelity

    if config.reference_dir is None:
        return {}
    ref_dir = Path(config.reference_dir)
    report: dict = {"reference": ref_dir.name}
    if (ref_dir / CHECK_FILE).exists():
        mine, ref = checks(out), checks(ref_dir)
        report["relative_error"] = check_errors(mine, ref)
        if VAE_CHECK in ref.files and VAE_CHECK in mine.files:  # recorded, not gated: tiling random weights changes pixels
            report[VAE_CHECK] = fidelity(mine[VAE_CHECK] / 255.0, ref[VAE_CHECK] / 255.0)
    if (out / "frames.npy").exists() and (ref_dir / "frames.npy").exists():
        report |= fidelity(np.load(out / "frames.npy") / 255.0, np.load(ref_dir / "frames.npy") / 255.0)
    return report


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """The clip as H.264 in an MP4, written whole or not at all (trials and `wan-agent serve` alike)."""
    import imageio.v2 as imageio

    with atomic_path(path) as video:
        imageio.mimwrite(video, list(frames), fps=fps, quality=5, macro_block_size=16)  # type: ignore[arg-type]


def _save_clip(frames: np.ndarray, out: Path, fps: int) -> None:
    write_mp4(frames, out / "video.mp4", fps)
    with atomic_path(out / "frames.npy") as array:
        np.save(array, frames)


def _full(pipe, config: TrialConfig, device, out: Path, stages: dict) -> dict:
    """Whole clips: warm-up, then timed repeats; the last clip is saved."""
    from agent.quality import check_frames
    from agent.runtime.generate import Generation, generate, summarize
    from agent.telemetry import Nvml

    def on_step(index: int, total: int, expert: str, seconds: float) -> None:
        logger.info("  step %d/%d %s %.3f s", index + 1, total, expert, seconds)

    made: list[Generation] = []

    def clips(label: str, count: int) -> list[Generation]:
        for i in range(count):
            for clip in made:  # only the last clip's frames are kept: its page-locked block serves the next clip
                clip.frames = np.empty(0, dtype=np.uint8)
            logger.info("%s %d/%d", label, i + 1, count)
            made.append(generate(pipe, config, device, on_step))
            logger.info("%s %d/%d took %.3f s", label, i + 1, count, made[-1].total_s)
        return made[-count:] if count else []

    nvml = Nvml(nvml_id(device))
    warmups = clips("warm-up", config.measurement.warmup)
    energy_start = nvml.sample().get("energy_J")
    timed = clips("repeat", config.measurement.repeats)
    energy_end = nvml.sample().get("energy_J")
    last = timed[-1]
    t0 = time.perf_counter()
    _save_clip(last.frames, out, config.workload.fps)
    stages["save_s"] = time.perf_counter() - t0
    summary = summarize(timed)
    if energy_start is not None and energy_end is not None:  # NVML's counter over the timed clips only
        summary["energy_per_clip_J"] = (energy_end - energy_start) / len(timed)
    if warmups:
        summary["first_call_overhead_s"] = warmups[0].total_s - summary["generate_s"]  # compile, autotune, caches
    return {
        "first_call": warmups[0].timings() if warmups else None,
        "repeats": [g.timings() for g in timed],
        "summary": summary,
        "quality": check_frames(last.frames, last.nonfinite),
        "outputs": {"video": "video.mp4", "frames": "frames.npy", "check": CHECK_FILE},
    }


def _carried_steps(config: TrialConfig, offload: str, device) -> CarriedSteps | None:
    """The best's timed expert steps where this trial runs its experts as the best did, offload resolved included,
    and the best's check outputs of them are there to stand for this trial's. Under torchrun every rank decides alike
    (a rank that ran the experts alone would wait in their collectives for the others)."""
    carried = config.steps_carried
    if carried is not None and carried.offload != offload:
        logger.info("experts timed here: offload %s, where %s's ran with %s", offload, carried.trial, carried.offload)
        carried = None
    if carried is not None and not (Path(carried.dir) / CHECK_FILE).exists():
        logger.info("experts timed here: %s has no check outputs of them", carried.trial)
        carried = None
    if config.steps_carried is not None and not _on_every_rank(carried is not None, device) and carried is not None:
        logger.info("experts timed here: another rank times its own")
        carried = None
    return carried


def _on_every_rank(flag: bool, device) -> bool:
    """``flag`` where every rank of a torchrun trial holds it (ranks that chose another path would wait for each other
    in different collectives); called by every rank alike."""
    disagree = parallel.ranks_disagree(flag, device)
    return flag and not disagree


def _carried_checks(carried: CarriedSteps) -> dict[str, np.ndarray]:
    """The experts' check outputs as the trial they are carried from computed them (the decoded frame is this trial's)."""
    with checks(Path(carried.dir)) as theirs:
        return {name: theirs[name] for name in theirs.files if name != VAE_CHECK}


def _carried_frame(config: TrialConfig) -> np.ndarray | None:
    """The decoded check frame of the trial whose decodes this probe-mode trial carries (the same decoder, run
    nowhere here), or None where it decodes itself: a reference trial measures its noise on its own decoder."""
    carried = config.decode_carried
    if config.measurement.mode != "probe" or carried is None or carried.dir is None or config.reference_dir is None:
        return None
    try:
        with checks(Path(carried.dir)) as theirs:
            return theirs[VAE_CHECK] if VAE_CHECK in theirs.files else None
    except OSError:  # nothing readable there: this trial decodes its frame itself
        return None


def _probe(pipe, config: TrialConfig, device, positive, negative, offload: str, steps: dict) -> dict:
    """Per-expert forwards only; the clip's time is predicted from them, with the error the prediction may have.
    ``steps``: the experts' steps already timed with the check outputs, or carried from another trial, if either."""
    from agent.runtime import probe

    timed, carried = steps.get("timed"), steps.get("carried")
    report = probe.probe(pipe, config, device, positive, negative, logger.info, offload, timed=timed, carried=carried)
    clips = report["clip_samples_s"]
    summary = {
        "generate_s": statistics.median(clips),
        "samples_s": clips,
        "spread_s": max(clips) - min(clips),
        "text_encode_s": statistics.median(report["text_encode_samples_s"]),
        "denoise_s": report["predicted_denoise_s"],
        "vae_decode_s": report["vae_decode_s"],
        "step_s": statistics.fmean(report["step_s"].values()),
        "repeats": len(clips),
        "predicted": True,
        "prediction_error": probe.prediction_error(clips, config.measurement.probe_tolerance),
    }
    # Only where the probe warmed the experts up itself: carried, their first calls were another trial's; timed with the
    # checks, their first steps are the trial's first forwards (stages), not counted twice.
    if "first_step_s" in report and not steps:
        summary["first_call_overhead_s"] = sum(first - report["step_s"][n] for n, first in report["first_step_s"].items())
    for key in ("vae_decode_from", "steps_from"):
        if key in report:
            summary[key] = report[key]
    return {"probe": report, "summary": summary, "outputs": {"check": CHECK_FILE}}


def run(config: TrialConfig) -> dict:
    """Run the trial and return what goes into result.json."""
    import torch

    from agent.runtime import pipeline, probe
    from agent.runtime.generate import encode
    from agent.telemetry import SharingWatch

    out = Path(config.output_dir)
    device = pipeline.pick_device(config.device)
    if device.type == "cpu" and config.measurement.cpu_threads:
        torch.set_num_threads(config.measurement.cpu_threads)
    sharing = SharingWatch(nvml_id(device)).start() if device.type == "cuda" else None
    logger.info("device %s; %s; %s mode", device, config.knobs.describe(), config.measurement.mode)
    pipe, stages, setup = pipeline.build(config, device)
    logger.info("ready in %.1f s (offload: %s, %s)", sum(stages.values()), setup["offload"], setup["offload_reason"])
    build_memory = _peak_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    positive, negative, _ = encode(pipe, config, device)
    carried = _carried_steps(config, setup["offload"], device) if config.measurement.mode == "probe" else None
    steps: dict = {}
    if carried is not None:  # the best's experts, unchanged: their outputs and steps as computed there
        check, steps["carried"] = _carried_checks(carried), carried
    elif config.measurement.mode == "probe" and _on_every_rank(setup["offload"] == "none", device):
        # the timed steps compute the checks; their untimed first steps are the first forwards
        check, steps["timed"] = probe.checked_steps(pipe, config, device, positive, negative, logger.info)
        stages["first_forwards_s"] = sum(steps["timed"]["first_step_s"].values())
    else:
        check, stages["first_forwards_s"] = probe.check_outputs(pipe, config, device, positive)
    frame = _carried_frame(config)
    if not _on_every_rank(frame is not None, device):  # a split decode's ranks decode together or not at all
        frame = None
    if frame is None and config.knobs.vae_decode == "compiled":  # compiling stays out of the timed clips and decodes
        logger.info("compiling the VAE decoder (two decodes; a minute at full size)")
        stages["vae_compile_s"] = sum(probe.warm_decoder(pipe, config, device))
    check[VAE_CHECK] = probe.check_decode(pipe, config, device) if frame is None else frame
    # A reference trial (the baseline, a distilled rung) measures the numerical noise its followers are judged by.
    noise = probe.numerical_noise(pipe, config, device, positive, check) if config.reference_dir is None else None
    with atomic_path(out / CHECK_FILE) as check_file:
        np.savez(check_file, **check)  # type: ignore[arg-type]
    check_finite = all(bool(np.isfinite(v).all()) for v in check.values())
    if config.measurement.mode == "probe":
        measured = _probe(pipe, config, device, positive, negative, setup["offload"], steps)
        reasons = [] if check_finite else ["non-finite transformer output"]
        measured["quality"] = {"passed": check_finite, "reasons": reasons, "finite": check_finite, "note": "probe mode: no clip"}
    else:
        measured = _full(pipe, config, device, out, stages)
    return {
        "status": "ok",
        "trial": config.name,
        "prompt": config.workload.prompt,  # as the model received it, for the verbatim check
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "versions": versions(),
        "python": sys.executable,  # the agent's environment's, or the runtime's own (agent/provision/runtimes.py)
        "environment": sorted(os.environ),  # names only: what reached the trial (never a secret's value)
        "stages": stages,
        "setup": setup | {"cpu_threads": torch.get_num_threads()} | ({"host": HOSTED} if HOSTED else {}),
        **measured,
        "fidelity": _fidelity(config, out) | ({"noise": noise} if noise else {}),
        "memory": _peak_memory(device) | {"build_" + k: v for k, v in build_memory.items()},
        "gpu_sharing": sharing.stop() if sharing else {"checked": False, "why": "not on a GPU"},
        "config": config.model_dump(),
    }


def flush_output() -> None:
    """Python's and the C libraries' buffered stdout and stderr written out."""
    import ctypes

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more can reach it anyway
            stream.flush()
    ctypes.CDLL(None).fflush(None)


def end_now(code: int) -> None:
    """Exit with ``code`` once the logs and stdio buffers (Python's and C's) are flushed, without the teardown."""
    logging.shutdown()
    flush_output()
    os._exit(code)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    if len(argv) != 2:
        print("usage: python -m agent.runtime.worker PATH/trial.json", file=sys.stderr)
        return 2
    config = load(Path(argv[1]))
    if config is None:
        return 2
    if config.host_memory_GiB is not None:
        cap = int(config.host_memory_GiB * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return run_trial(config)


def load(trial_file: Path) -> TrialConfig | None:
    """The trial's configuration, or None (said on stderr) where the file is unreadable or invalid."""
    try:
        return TrialConfig.model_validate_json(trial_file.read_text())
    except (OSError, ValueError) as err:
        print(f"invalid trial file {trial_file}: {err}", file=sys.stderr)
        return None


def run_trial(config: TrialConfig) -> int:
    """Run the trial and write its result.json: 0 done, 1 failed (why is in result.json)."""
    rank, result_path = None, Path(config.output_dir) / RESULT_FILE
    try:
        rank, config = parallel.join(config)  # under torchrun: a rank other than 0 writes under ranks/N
        result_path = Path(config.output_dir) / RESULT_FILE
        result = run(config)
    except Exception as err:  # the trial failed: record why for the agent's remediation, then exit 1
        logger.exception("trial failed")
        write_json_atomic(
            result_path,
            {
                "status": "failed",
                "trial": config.name,
                "error": {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()[-4000:]},
                "config": config.model_dump(),
            },
        )
        return 1
    finally:
        parallel.leave(rank)
    write_json_atomic(result_path, result)
    logger.info(
        "done: %.3f s per clip (median of %d), result in %s",
        result["summary"]["generate_s"],
        result["summary"]["repeats"],
        result_path,
    )
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun a rank that ends takes the others down: one that failed fast killed rank 0 before it wrote
        # its result.json (tests/integration/test_parallel.py, on a loaded CI machine). Ranks end as they always did.
        sys.exit(code)
    # What the trial had to write is written (result.json, or the reason on stderr): the logs and the C libraries'
    # buffers flushed, nothing is left but the interpreter's teardown (tens of GB of tensors freed one by one,
    # Inductor's compile workers stopped), seconds between trials on a GPU.
    end_now(code)
