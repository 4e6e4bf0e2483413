"""A trial over several processes (GPUs, or CPU processes on a machine without one): started by torchrun, one rank
per process, each on its own GPU. Two ways to share the work, alone or together: the experts' self-attention split over
the ranks with diffusers' own context parallelism (``ulysses``: each rank holds 1/N of the tokens, all-to-all over the
heads; ``ring``: keys and values passed around the ranks instead), and CFG's two branches on two halves of the ranks
(``cfg_parallel``). The ranks form a mesh (cfg, ring, ulysses): a Ulysses group is consecutive ranks (GPUs next to
each other), the two CFG halves exchange one output per step. Every rank runs the same code (each collective needs
them all); rank 0 writes the trial's files, the others write theirs under ``ranks/N``.
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
    return knobs.ulysses * knobs.ring * (2 if knobs.cfg_parallel else 1)


def launcher(python: str, knobs: Knobs, module: str = "agent.runtime.worker") -> list[str]:
    """How a worker is started: itself, or under torchrun with one process per rank (a free port of its own)."""
    n = world_size(knobs)
    if n == 1:
        return [python, "-m", module]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", module]


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


def supports_context_parallel(backend: str) -> bool:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from agent.runtime import kernels
    from agent.runtime.attention import known_backends

    if backend in kernels.CONTEXT_PARALLEL_BACKENDS:  # registered so by the trial's process once FA3 is bound
        return True
    return backend in known_backends() and _AttentionBackendRegistry._is_context_parallel_available(AttentionBackendName(backend))


def mesh(knobs: Knobs):
    """The ranks as a (cfg, ring, ulysses) device mesh, the shape diffusers' context parallelism accepts with extra
    dimensions; made once per process, after ``join``."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    shape = (2 if knobs.cfg_parallel else 1, knobs.ring, knobs.ulysses)
    return init_device_mesh(device_type, shape, mesh_dim_names=("cfg", "ring", "ulysses"))


def share_problem(pipe, knobs: Knobs, workload) -> str | None:
    """Why diffusers' context parallelism cannot cut this clip's tokens into equal shares (it asserts mid-forward);
    None where it can, where nothing cuts tokens, or on the official runtime (its own split pads them)."""
    from agent.runtime.attention import pipeline_shape

    if knobs.runtime == "official":  # its pipeline has no diffusers config to read, and its own split pads the tokens
        return None
    problem = uneven(knobs, pipeline_shape(pipe, workload)[1])
    return None if problem is None else f"{workload.width}x{workload.height}, {workload.frames} frames: {problem}"


def uneven(knobs: Knobs, count: int) -> str | None:
    """Why ``count`` tokens do not cut into the split's equal shares."""
    shares = knobs.ulysses * knobs.ring
    if knobs.runtime == "official" or shares == 1 or count % shares == 0:  # the official code pads its tokens
        return None
    return (
        f"{count} tokens do not split into {shares} equal shares (ulysses x ring): pick a size whose token count "
        f"(latent frames x latent height x latent width / 4) the split divides"
    )


def split_attention(pipe, knobs: Knobs, ranks) -> dict:
    """Each expert's self-attention split over the ranks of its Ulysses and ring groups (diffusers' context-parallel
    plan for Wan), ``ranks`` the mesh from ``mesh``."""
    from diffusers import ContextParallelConfig

    from agent.runtime.pipeline import experts

    for expert in experts(pipe):
        heads = expert.config.num_attention_heads
        if heads % knobs.ulysses:
            raise ValueError(f"ulysses={knobs.ulysses} must divide the model's {heads} attention heads")
        config = ContextParallelConfig(ulysses_degree=knobs.ulysses, ring_degree=knobs.ring, mesh=ranks)
        expert.enable_parallelism(config=config)
        _read_signatures(expert)
    return {"context_parallel": {"ulysses": knobs.ulysses, "ring": knobs.ring, "ranks": world_size(knobs)}}


def _read_signatures(expert) -> None:
    """diffusers' split hooks read their module's forward signature (inspect) at the first call, which Dynamo cannot
    trace inside a compiled block (`compile: regional`): read them now."""
    import inspect

    for module in expert.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in registry.hooks.values() if registry is not None else ():
            found = getattr(hook, "module_forward_metadata", None)
            if found is not None and found.cached_parameter_indices is None:
                names = list(inspect.signature(found._cls.forward).parameters)[1:]  # without self
                found.cached_parameter_indices = {name: i for i, name in enumerate(names)}


class CfgSplit:
    """A diffusers model hook on an expert: at a conditional forward, the first CFG half of the ranks computes it
    and the second the unconditional one with the same latents and timestep, and both gather both; the
    unconditional call that follows (the same inputs, the negative prompt) returns the gathered result without
    computing. Any other call is computed on every rank alone, so the ranks stay in step whatever calls come (a call
    with no CFG after it only wastes the second half's)."""

    def __init__(self, half: int, group):
        from diffusers.hooks import ModelHook

        class Hook(ModelHook):
            def new_forward(hook, module, *args, **kwargs):  # noqa: N805 (the hook is diffusers')
                return self.forward(hook.fn_ref.original_forward, *args, **kwargs)

        self.hook, self.half, self.group = Hook(), half, group
        self.negative = None  # the negative prompt's embeddings, set by remember_negative
        self.pending: tuple | None = None  # (latents, timestep, unconditional output)

    def forward(self, original, *args, **kwargs):
        import torch

        latents, timestep, text = (kwargs.get(k) for k in ("hidden_states", "timestep", "encoder_hidden_states"))
        if args or kwargs.get("return_dict", True) or latents is None or text is None or self.negative is None:
            return original(*args, **kwargs)  # not a denoising call of the pipeline or the probe: each rank alone
        if _same(text, self.negative):
            pending, self.pending = self.pending, None
            if pending is not None and pending[0] is latents and pending[1] is timestep:
                return (pending[2],)
            return original(*args, **kwargs)
        mine = kwargs if self.half == 0 else kwargs | {"encoder_hidden_states": self.negative.to(text.dtype)}
        output = original(*args, **mine)[0].contiguous()
        both = [torch.empty_like(output) for _ in range(2)]
        torch.distributed.all_gather(both, output, group=self.group)
        self.pending = (latents, timestep, both[1])
        return (both[0],)


def _same(a, b) -> bool:
    import torch

    return a is b or (a.shape == b.shape and bool(torch.equal(a, b.to(a.dtype))))


def split_cfg(pipe, ranks) -> dict:
    """CFG's branches on the two halves of the mesh ``ranks``, in each expert (agent.runtime.generate tells the hooks
    the negative prompt)."""
    from diffusers.hooks import HookRegistry

    from agent.runtime.pipeline import experts

    cfg = ranks["cfg"]
    pipe._cfg_splits = []
    for expert in experts(pipe):
        split = CfgSplit(cfg.get_local_rank(), cfg.get_group())
        HookRegistry.check_if_exists_or_initialize(expert).register_hook(split.hook, "wan_agent_cfg_parallel")
        pipe._cfg_splits.append(split)
    return {"cfg_parallel": {"ranks": ranks.size()}}


def remember_negative(pipe, negative) -> None:
    """The negative prompt's embeddings the unconditional branch uses (None: no CFG, nothing to split)."""
    for split in getattr(pipe, "_cfg_splits", []):
        split.negative, split.pending = negative, None


def ranks_disagree(flag: bool, device) -> bool:
    """Whether some rank of this torchrun trial holds another ``flag`` than this one (False outside torchrun)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    votes = torch.tensor([int(flag), -int(flag)], device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MIN)  # [every rank's flag, -(any rank's flag)]
    return bool(votes[0].item()) != bool(-votes[1].item())


def leave(rank: Rank | None) -> None:
    import torch

    if rank is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
