"""Which NVML device a trial's GPU is. CUDA numbers the GPUs a process sees through ``CUDA_VISIBLE_DEVICES``
(indices or UUIDs); NVML numbers every GPU of the machine by PCI bus. Trials run with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so an index there is an NVML index; a UUID (or a unique prefix of one) is
looked up. As CUDA does, the list ends at the first entry that names no GPU. A MIG instance is a slice NVML cannot
watch as a whole GPU: the mapping is then unknown (None), and the machine's GPUs stand for it.
"""

from __future__ import annotations

import os

DEVICE_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # CUDA's indices in NVML's order


def nvml_indices(gpus: list[dict], visible: str | None) -> list[int] | None:
    """NVML indices of the GPUs a process sees, in its CUDA order (None: MIG instances, not mappable); ``gpus`` as
    hardware.probe lists them."""
    if visible is None:
        return [g["index"] for g in gpus]
    found: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.startswith("MIG-"):
            return None if not found else found
        if entry.isdigit():
            match = [g for g in gpus if g["index"] == int(entry)]
        elif entry.startswith("GPU-"):
            match = [g for g in gpus if str(g.get("uuid", "")).startswith(entry)]
        else:
            match = []
        if len(match) != 1 or match[0]["index"] in found:
            break
        found.append(match[0]["index"])
    return found


def visible(hardware: dict) -> list[int] | None:
    """NVML indices of the GPUs a process started from this environment sees, in its CUDA order (None: MIG)."""
    return nvml_indices(hardware.get("gpus", []), os.environ.get("CUDA_VISIBLE_DEVICES"))


def trial_gpu(hardware: dict) -> int | None:
    """The NVML index of the GPU a trial started from this environment computes on (its cuda:0); None when it sees
    no GPU or a MIG instance (nothing NVML can watch whole)."""
    indices = visible(hardware)
    return indices[0] if indices else None


def rank_gpus(hardware: dict, ranks: int) -> list[int] | None:
    """NVML indices of the GPUs a trial of ``ranks`` ranks computes on (rank r on its cuda:r), or None when this
    environment does not show that many whole GPUs."""
    indices = visible(hardware) or []
    return indices[:ranks] if len(indices) >= ranks else None


def for_ranks(hardware: dict, ranks: int) -> int | list[int] | None:
    """What a trial of ``ranks`` processes computes on: its one GPU (trial_gpu), or each rank's (rank_gpus)."""
    return trial_gpu(hardware) if ranks == 1 else rank_gpus(hardware, ranks)


def trial_gpus(hardware: dict) -> list[dict]:
    """The GPU records that describe what a trial computes on: its cuda:0's, or every GPU of the machine when that
    is a MIG instance of one of them; empty when it sees none."""
    gpus = hardware.get("gpus", [])
    indices = visible(hardware)
    if indices is None:
        return gpus
    return [g for g in gpus if indices and g["index"] == indices[0]]
