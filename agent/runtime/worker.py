"""The trial worker: ``python -m agent.runtime.worker PATH/trial.json``.

Reads its whole configuration from the file (no user text on a command line), builds the pipeline,
runs the untimed warm-up and the timed repeats, saves the last clip as ``video.mp4`` and
``frames.npy``, and writes ``result.json`` (temp name, then rename). Exit codes: 0 done, 1 the trial
failed (the reason is in result.json), 2 the trial.json itself is invalid.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.files import write_json_atomic
from agent.hardware import versions
from agent.runtime.config import TrialConfig

if TYPE_CHECKING:
    from agent.runtime import pipeline

logger = logging.getLogger("agent.worker")

RESULT_FILE = "result.json"


def _peak_memory(device) -> dict[str, float]:
    import torch

    peak = {"peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        peak["peak_gpu_allocated_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        peak["peak_gpu_reserved_GiB"] = torch.cuda.max_memory_reserved(device) / 2**30
    return peak


def run(config: TrialConfig) -> dict:
    """Run the trial and return what goes into result.json."""
    import torch
    from diffusers.utils import export_to_video

    from agent.quality import check_frames
    from agent.runtime import pipeline

    out = Path(config.output_dir)
    device = pipeline.pick_device(config.device)
    logger.info("device %s; %s", device, config.knobs.describe())
    pipe, stages = pipeline.build(config, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def on_step(index: int, total: int, expert: str, seconds: float) -> None:
        logger.info("  step %d/%d %s %.3f s", index + 1, total, expert, seconds)

    warmups: list[pipeline.Generation] = []
    timed: list[pipeline.Generation] = []
    for label, count, into in (("warm-up", config.measurement.warmup, warmups), ("repeat", config.measurement.repeats, timed)):
        for i in range(count):
            logger.info("%s %d/%d", label, i + 1, count)
            into.append(pipeline.generate(pipe, config, device, on_step))
            logger.info("%s %d/%d took %.3f s", label, i + 1, count, into[-1].total_s)
    last = timed[-1]
    quality = check_frames(last.frames)
    t0 = time.perf_counter()
    export_to_video(list(np.clip(np.nan_to_num(last.frames), 0, 1)), str(out / "video.mp4"), fps=config.workload.fps)
    np.save(out / "frames.npy", (np.clip(np.nan_to_num(last.frames), 0, 1) * 255).round().astype(np.uint8))
    stages["save_s"] = time.perf_counter() - t0
    return {
        "status": "ok",
        "trial": config.name,
        "prompt": config.workload.prompt,  # as the model received it, for the verbatim check
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "versions": versions(),
        "stages": stages,
        "first_call": warmups[0].timings() if warmups else None,
        "repeats": [g.timings() for g in timed],
        "summary": pipeline.summarize(timed),
        "memory": _peak_memory(device),
        "quality": quality,
        "outputs": {"video": "video.mp4", "frames": "frames.npy"},
        "config": config.model_dump(),
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    if len(argv) != 2:
        print("usage: python -m agent.runtime.worker PATH/trial.json", file=sys.stderr)
        return 2
    trial_file = Path(argv[1])
    try:
        config = TrialConfig.model_validate_json(trial_file.read_text())
    except (OSError, ValueError) as err:
        print(f"invalid trial file {trial_file}: {err}", file=sys.stderr)
        return 2
    result_path = Path(config.output_dir) / RESULT_FILE
    try:
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
    write_json_atomic(result_path, result)
    logger.info(
        "done: %.3f s per clip (median of %d), result in %s",
        result["summary"]["generate_s"],
        result["summary"]["repeats"],
        result_path,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
