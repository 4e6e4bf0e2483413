"""The official code's own sequence parallelism on a trial's torchrun ranks: what Wan2.2's generate.py runs with
``--ulysses_size N``, and with ``--dit_fsdp`` (knob ``fsdp``) each expert's weights sharded over the ranks.

As ``WanT2V._configure_model`` (wan/text2video.py) does, each reference expert's forward becomes
``wan/distributed/sequence_parallel.py``'s ``sp_dit_forward`` (the tokens padded to a multiple of N and cut into one
share per rank; the output gathered on every rank, so all ranks keep the same latents) and each self-attention's
``sp_attn_forward`` (Ulysses: an all-to-all from tokens to heads, attention, and back). That attention goes through
``wan/distributed/ulysses.py``'s own import of ``flash_attention``, replaced here with the masked stand-in where
``modules.patch_attention`` replaced the DiT's (flash_attn cannot run): the padding is masked by the true length, as
the reference's varlen call does. The reference code splits over the whole process group, so only ``ulysses`` (N =
all ranks) is honoured.
"""

from __future__ import annotations

import types

import torch

from agent.runtime.official import attention_patch, modules

CODE = "wan/distributed/sequence_parallel.py (sp_dit_forward, sp_attn_forward), wan/distributed/ulysses.py"


def split_sequence(experts: list, ranks: int) -> dict:
    """Patch each reference ``WanModel`` in ``experts`` to split its tokens over the ``ranks`` of the process group."""
    sp = modules.module("distributed.sequence_parallel")
    if getattr(modules.module("model"), "flash_attention", None) is attention_patch.flash_attention:  # patched
        modules.module("distributed.ulysses").flash_attention = attention_patch.flash_attention  # type: ignore[attr-defined]
    for model in experts:
        if model.num_heads % ranks:
            raise ValueError(f"ulysses={ranks} must divide the model's {model.num_heads} attention heads")
        for block in model.blocks:
            block.self_attn.forward = types.MethodType(sp.sp_attn_forward, block.self_attn)
            block.self_attn.o.register_forward_pre_hook(_input_as_weight)
        model.forward = types.MethodType(sp.sp_dit_forward, model)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return {"ulysses": ranks, "code": CODE}


def shard(model, dtype: torch.dtype):
    """``model`` (a reference ``WanModel`` in host memory, its forward already split) under FSDP as ``--dit_fsdp`` wraps
    it (``wan/distributed/fsdp.py``'s ``shard_model``: a unit per block, parameters computed in ``dtype``, rank 0's
    weights broadcast): each unit reaches this rank's GPU and keeps 1/N of its weights there, gathered for each forward.
    FSDP flattens a block's parameters into one tensor of one dtype, and computes in ``dtype`` whatever they are stored
    in, so the few kept in float32 (the modulation tables) are stored in ``dtype`` too. As under ``--dit_fsdp``, FSDP
    also casts the expert's inputs (latents, timestep) to ``dtype``: close to the unsharded run, not bit for bit."""
    fsdp = modules.module("distributed.fsdp")
    return fsdp.shard_model(model.to(dtype), device_id=torch.cuda.current_device(), param_dtype=dtype)


def _input_as_weight(linear: torch.nn.Linear, args: tuple):
    """``sp_attn_forward`` hands its attention output to the o-projection in bf16 (as flash_attn returns it), which CUDA
    autocast takes; outside autocast (fp32 on the CPU) the projection gets it back in its weights' dtype."""
    (x,) = args
    if x.dtype == linear.weight.dtype or torch.is_autocast_enabled(x.device.type):
        return None
    return (x.to(linear.weight.dtype),)
