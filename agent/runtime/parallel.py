"""A trial over several processes (GPUs, or CPU processes on a machine without one): started by torchrun, one rank
per process, each on its own GPU; the experts' self-attention split over the ranks with diffusers' own context
parallelism (Ulysses: each rank holds 1/N of the tokens, all-to-all over the heads). Every rank runs the same code
(each collective needs them all); rank 0 writes the trial's files, the others write theirs under ``ranks/N``.
torch is imported where it is used: the agent's process only asks how to launch a trial.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from agent.runtime.config import Knobs, TrialConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    local: int


def world_size(knobs: Knobs) -> int:
    """How many processes a trial with ``knobs`` runs in."""
    return knobs.ulysses


def launcher(python: str, knobs: Knobs) -> list[str]:
    """How the worker is started: itself, or under torchrun with one process per rank (a free port of its own)."""
    n = world_size(knobs)
    if n == 1:
        return [python, "-m", "agent.runtime.worker"]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "agent.runtime.worker"]


def join(config: TrialConfig) -> tuple[Rank | None, TrialConfig]:
    """In a worker torchrun started: join the process group (NCCL on GPUs, gloo on the CPU), take this rank's GPU,
    and point a rank other than 0 at its own folder. Outside torchrun: (None, config)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return None, config
    if world != world_size(config.knobs):
        raise RuntimeError(f"torchrun started {world} processes for a trial of {world_size(config.knobs)}")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    on_gpu = config.device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local)
    else:
        # diffusers places a rank on device `rank % torch.accelerator.device_count()`, 0 on a CPU-only torch
        torch.accelerator.device_count = lambda: 1  # type: ignore[method-assign]
    torch.distributed.init_process_group("nccl" if on_gpu else "gloo")
    if rank != 0:
        config = config.model_copy(update={"output_dir": str(Path(config.output_dir) / "ranks" / str(rank))})
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    logger.info("rank %d of %d (%s)", rank, world, f"cuda:{local}" if on_gpu else "cpu, gloo")
    return Rank(rank, world, local), config


def split_attention(pipe, knobs: Knobs) -> dict:
    """Each expert's self-attention split over the ranks (diffusers' context-parallel plan for Wan)."""
    from diffusers import ContextParallelConfig

    from agent.runtime.pipeline import experts

    for expert in experts(pipe):
        heads = expert.config.num_attention_heads
        if heads % knobs.ulysses:
            raise ValueError(f"ulysses={knobs.ulysses} must divide the model's {heads} attention heads")
        expert.enable_parallelism(config=ContextParallelConfig(ulysses_degree=knobs.ulysses))
    return {"context_parallel": {"ulysses": knobs.ulysses, "ranks": world_size(knobs)}}


def leave(rank: Rank | None) -> None:
    import torch

    if rank is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
