"""The GPU worker of `wan-agent serve`: one process that loads a converged run's configuration once (built, compiled
and warmed by one clip before it says ready), then generates the jobs it reads from stdin, one JSON object per line.

It reports on its own stdout, one JSON object per line: ``ready``, ``progress``, ``completed``, ``failed``, or
``load_failed`` (then exits 1). Everything else the libraries print goes to stderr, so a stray print cannot break a
report. A job's clip is written whole or not at all (agent/files.py); a job that fails leaves the worker serving.

A configuration converged over several GPUs (``ulysses``, ``ring``, ``cfg_parallel``) is served by a torchrun group kept warm:
the process the server starts becomes torchrun (exec, so it keeps the server as the parent whose death kills it), and
each rank dies with torchrun. Rank 0 reads the jobs, reports and writes the clips; it hands each job to the other
ranks (a broadcast), and all of them compute it together; the end of stdin ends every rank.

    python -m agent.serve.worker PATH/serve-config.json      # TrialConfig of the run's best (agent/runs.py)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.runtime.config import TrialConfig, Workload

logger = logging.getLogger("agent.serve.worker")
PARENT_ENV = "WAN_AGENT_SERVE_PARENT"  # the server's pid (agent/serve/engine.py)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Reporter:
    """One JSON line per event on the stdout the worker was started with; fd 1 itself is pointed at stderr. Ranks
    other than 0 of a group share that stdout and say nothing there (``quiet``)."""

    def __init__(self, quiet: bool = False) -> None:
        self._out = None if quiet else os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def __call__(self, event: str, **fields) -> None:
        if self._out is not None:
            self._out.write(json.dumps({"event": event, **fields}) + "\n")


def jobs(rank) -> Iterator[dict]:
    """The jobs to generate: stdin's lines on rank 0 (or alone), each handed to the other ranks of a group. They are
    handed over a gloo group with no practical timeout: a server may sit idle for days, and an NCCL broadcast would
    wait on the GPU (and time out after 10 min)."""
    import datetime

    import torch

    group = None if rank is None else torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(days=3650))
    lines = sys.stdin if rank is None or rank.rank == 0 else iter(())
    for line in lines:
        job = json.loads(line)
        if rank is not None:
            torch.distributed.broadcast_object_list([job], src=0, group=group)
        yield job
    if rank is not None:
        while True:  # rank 0 sends None when its stdin ends; the others take jobs until then
            box: list = [None]
            torch.distributed.broadcast_object_list(box, src=0, group=group)
            if box[0] is None:
                return
            yield box[0]


def spatial_multiple(pipe) -> int:
    """What a frame's sides must be a multiple of: the VAE's spatial factor times the DiT's patch (16; 32 for the 5B)."""
    patch = pipe.transformer.config.patch_size[1] if getattr(pipe, "transformer", None) is not None else 2
    return int(getattr(pipe, "vae_scale_factor_spatial", 8) * patch)


def job_config(base: TrialConfig, job: dict) -> TrialConfig:
    """The run's best configuration with the job's workload and the settings a request may change."""
    work = base.workload.model_dump() | {k: job[k] for k in ("prompt", "width", "height", "frames", "fps", "seed")}
    if job.get("negative_prompt") is not None:
        work["negative_prompt"] = job["negative_prompt"]
    changes = {k: job[k] for k in ("steps", "guidance_scale", "guidance_scale_2", "flow_shift") if job.get(k) is not None}
    knobs = base.knobs.model_validate(base.knobs.model_dump() | changes)
    return base.model_copy(update={"workload": Workload.model_validate(work), "knobs": knobs})


def _set_shift(pipe, shift: float) -> None:
    from diffusers import UniPCMultistepScheduler

    from agent.runtime.official.pipeline import OfficialPipeline

    if isinstance(pipe, OfficialPipeline):
        pipe.scheduler.register_to_config(shift=shift)
    elif pipe.scheduler.config.get("flow_shift") != shift:
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=shift)


def generate(pipe, config: TrialConfig, device, output: Path | None, progress: Callable[..., None]) -> float:
    """One job's clip, ``progress(progress=percent)`` after each denoising step (the decode is the last step); its seconds.
    ``output`` None: computed with the group, not written (a rank other than 0)."""
    from agent.runtime import parallel
    from agent.runtime.generate import generate as run_clip
    from agent.runtime.worker import write_mp4

    def on_step(index: int, total: int, expert: str, seconds: float) -> None:
        progress(progress=min(99, int(100 * (index + 1) / (total + 1))))

    step, work = spatial_multiple(pipe), config.workload
    if work.width % step or work.height % step:  # never rounded behind the client's back, as the pipeline would
        raise ValueError(f"this model makes frames whose sides are multiples of {step}: {work.width}x{work.height} is not")
    if (problem := parallel.share_problem(pipe, config.knobs, work)) is not None:
        raise ValueError(problem)
    t0 = time.perf_counter()
    _set_shift(pipe, config.knobs.flow_shift)
    clip = run_clip(pipe, config, device, on_step)
    if clip.nonfinite:
        raise RuntimeError(f"the clip came out with {clip.nonfinite} non-finite values")
    if output is not None:
        write_mp4(clip.frames, output, config.workload.fps)
    return time.perf_counter() - t0


def serve(base: TrialConfig, report: Reporter, rank=None) -> int:
    import torch

    from agent.runtime import pipeline

    writes = rank is None or rank.rank == 0
    device = pipeline.pick_device(base.device)
    if device.type == "cpu" and base.measurement.cpu_threads:
        torch.set_num_threads(base.measurement.cpu_threads)
    try:
        t0 = time.perf_counter()
        pipe, stages, setup = pipeline.build(base, device)
        load_s = time.perf_counter() - t0
        warm = Path(base.output_dir) / "warm-up.mp4"  # the run's own workload: compiles and tunes what jobs will use
        warmup_s = generate(pipe, base, device, warm if writes else None, lambda **_: None)
    except Exception as err:  # noqa: BLE001 (whatever stops the load is what /health must say)
        logger.exception("loading failed")
        report("load_failed", message=f"{type(err).__name__}: {err}")
        return 1
    report("ready", load_s=round(load_s, 3), warmup_s=round(warmup_s, 3), device=str(device), offload=setup.get("offload"),
           label=base.knobs.describe(), multiple=spatial_multiple(pipe), ranks=rank.world if rank else 1)  # fmt: skip
    for job in jobs(rank):
        try:
            progress = functools.partial(report, "progress", job=job["id"])
            seconds = generate(pipe, job_config(base, job), device, Path(job["output"]) if writes else None, progress)
        except Exception as err:  # noqa: BLE001 (the job fails, the worker goes on serving)
            logger.error("job %s failed: %s", job["id"], traceback.format_exc()[-2000:])
            report("failed", job=job["id"], code="generation_failed", message=f"{type(err).__name__}: {err}"[:500])
            if not healthy(device):  # the server starts another worker
                logger.error("the GPU context is broken after job %s: exiting", job["id"])
                return 1
            continue
        report("completed", job=job["id"], generate_s=round(seconds, 3))
    return 0


def die_with_parent() -> None:
    """The kernel kills this worker when the server's thread that started it is gone (a server killed with -9 leaves
    no worker holding the GPU); a server already gone before this ran is seen through the parent's pid."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    expected = os.environ.get(PARENT_ENV)
    if expected and os.getppid() != int(expected):
        sys.exit(1)


def healthy(device) -> bool:
    """Whether the GPU still runs work after a failed job (an illegal address or a device assert stays sticky)."""
    import torch

    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except Exception:  # noqa: BLE001 (any error here means the context is gone)
        return False


def main(argv: list[str]) -> int:
    from agent.runtime import parallel

    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if len(argv) != 2:
        print("usage: python -m agent.serve.worker PATH/serve-config.json", file=sys.stderr)
        return 2
    base = TrialConfig.model_validate_json(Path(argv[1]).read_text())
    if parallel.world_size(base.knobs) > 1 and "WORLD_SIZE" not in os.environ:  # become the group's torchrun
        os.environ[PARENT_ENV] = str(os.getpid())  # the ranks' parent: torchrun, this very process after exec
        argv_group = [*parallel.launcher(sys.executable, base.knobs, "agent.serve.worker"), argv[1]]
        os.execv(sys.executable, argv_group)
    rank, base = parallel.join(base)
    try:
        return serve(base, Reporter(quiet=rank is not None and rank.rank != 0), rank)
    finally:
        parallel.leave(rank)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
